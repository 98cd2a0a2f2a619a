"""Benchmark: extract one 100 MiB file from a backup of a 64 GiB disk, against a full restore of the same backup (issue 15).

Usage:
    source scripts/env.sh
    python benchmarks/bench_file_restore.py [--size-gib 64] [--file-mib 100] [--other-mib 1024] [--runs 3] [--work DIR] [--json OUT.json]

A lab VM gets one dynamic VHDX of ``--size-gib`` GiB with a GPT and one ext4 partition over the whole disk (made by
hyperv_lab's guest_filesystem, sparse: only what mkfs.ext4 and the files occupy is written), holding a random
``--file-mib`` MiB file, ``--other-mib`` MiB of other random files and a few small ones. One full backup into a plain local repository (1 MiB chunks). Then,
``--runs`` times each, in this process: hyperv_file_restore's engine extracts /big.bin (run_file_restore, state
extracted) and hyperv_restore's engine restores the whole disk as a sparse raw image, verified (run_restore). Reported:
medians of wall seconds, and the bytes of stored chunks each read from the repository.
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

from ansible_collections.hyperv.backup.plugins.module_utils.backup.backup_engine import run_backup
from ansible_collections.hyperv.backup.plugins.module_utils.backup.restore_engine import run_restore
from ansible_collections.hyperv.backup.plugins.module_utils.guestfs.file_restore import run_file_restore
from ansible_collections.hyperv.backup.plugins.module_utils.host.connection import HostSession
from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_admin
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import LabLayout
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository

MiB = 1 << 20
GiB = 1 << 30


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size-gib", type=int, default=64)
    parser.add_argument("--file-mib", type=int, default=100)
    parser.add_argument("--other-mib", type=int, default=1024, help="other files on the disk (what a full restore also reads)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work")
    parser.add_argument("--json")
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="bench-file-restore-")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.join(work, "source", "etc"))
    with open(os.path.join(work, "source", "big.bin"), "wb") as handle:
        for _index in range(args.file_mib):
            handle.write(os.urandom(MiB))
    os.makedirs(os.path.join(work, "source", "data"))
    for index in range(0, args.other_mib, 64):
        with open(os.path.join(work, "source", "data", "part%04d.bin" % index), "wb") as handle:
            for _index in range(min(64, args.other_mib - index)):
                handle.write(os.urandom(MiB))
    for name in ("hosts", "fstab", "app.conf"):
        with open(os.path.join(work, "source", "etc", name), "w") as handle:
            handle.write("%s\n" % name)
    started = time.monotonic()
    layout = LabLayout(os.path.join(work, "lab"), "hb")
    lab_admin.ensure_host(layout, era="2022")
    lab_admin.ensure_vm(layout, {"name": "bench", "disks": [{"size": args.size_gib * GiB, "guest_filesystem": {
        "scheme": "gpt", "partitions": [{"type": "ext4", "source": os.path.join(work, "source")}]}}]})
    build_seconds = time.monotonic() - started
    repo = Repository.init(os.path.join(work, "repo"))
    params = dict(transport="lab", host="hb", lab_directory=os.path.join(work, "lab"), vm="bench")
    started = time.monotonic()
    with HostSession.from_module_params(params) as session:
        backup = run_backup(session, repo, params)
    backup_seconds = time.monotonic() - started
    record = repo.get_backup(backup["backup_id"])
    stored = sum(disk["chunk_count"] for disk in record.disks)
    extract_times, extract_bytes, restore_times = [], [], []
    for run in range(args.runs):
        dest = os.path.join(work, "files%d" % run)
        started = time.monotonic()
        result = run_file_restore(repo, {"backup_id": backup["backup_id"], "state": "extracted", "paths": ["/big.bin"], "dest": dest})
        extract_times.append(time.monotonic() - started)
        extract_bytes.append(result["bytes_read"])
        assert result["files"][0]["size"] == args.file_mib * MiB
        shutil.rmtree(dest)
        dest = os.path.join(work, "disk%d" % run)
        started = time.monotonic()
        restored = run_restore(repo, {"backup_id": backup["backup_id"], "destination": dest, "format": "raw"})
        restore_times.append(time.monotonic() - started)
        assert restored["verified"]
        shutil.rmtree(dest)
    out = {"virtual_size_gib": args.size_gib, "file_mib": args.file_mib, "other_mib": args.other_mib, "runs": args.runs,
           "lab_build_seconds": round(build_seconds, 2),
           "backup_seconds": round(backup_seconds, 2), "stored_chunks": stored, "stored_bytes": stored * repo.chunk_size,
           "extract_seconds_median": round(statistics.median(extract_times), 2), "extract_seconds": [round(t, 2) for t in extract_times],
           "extract_bytes_read": int(statistics.median(extract_bytes)),
           "full_restore_seconds_median": round(statistics.median(restore_times), 2), "full_restore_seconds": [round(t, 2) for t in restore_times],
           "full_restore_bytes_read": stored * repo.chunk_size}
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(out, handle, indent=2)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
