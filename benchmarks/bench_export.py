"""Benchmark: read a whole disk through hyperv_backup_export's NBD export, against a full restore of the same backup.

Usage:
    source scripts/env.sh
    python benchmarks/bench_export.py [--size-mib 1024] [--percent 50] [--runs 3] [--work DIR] [--json OUT.json]

A lab VM gets one disk of ``--size-mib`` MiB, ``--percent`` of it random data in 1 MiB pieces (the rest zeros). One full
backup into a plain local repository (1 MiB chunks). Then, ``--runs`` times each, in this process: start the export
(nbd_export.present with a real nbdkit: copy of module_utils, repository opened in nbdkit), read the whole disk with
``nbdcopy nbd://... null:`` (libnbd; it asks block status and skips the zero chunks, as qemu-img convert does), stop it;
and restore the whole disk as a verified sparse raw image (run_restore). Reported: medians of wall seconds.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from ansible_collections.hyperv.backup.plugins.module_utils.backup.backup_engine import run_backup
from ansible_collections.hyperv.backup.plugins.module_utils.backup.restore_engine import run_restore
from ansible_collections.hyperv.backup.plugins.module_utils.export import nbd_export
from ansible_collections.hyperv.backup.plugins.module_utils.host.connection import HostSession
from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_admin
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import LabLayout
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository

MiB = 1 << 20


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--percent", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--port", type=int, default=10899)
    parser.add_argument("--work")
    parser.add_argument("--json")
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="bench-export-")
    shutil.rmtree(work, ignore_errors=True)
    layout = LabLayout(os.path.join(work, "lab"), "hb")
    lab_admin.ensure_host(layout, era="2022")
    lab_admin.ensure_vm(layout, {"name": "vm", "disks": [{"size": args.size_mib * MiB, "fill": {"seed": 1, "percent": args.percent}}]})
    repo = Repository.init(os.path.join(work, "repo"), chunk_size=MiB)
    params = dict(transport="lab", host="hb", lab_directory=os.path.join(work, "lab"), vm="vm")
    with HostSession.from_module_params(params) as session:
        backup_id = run_backup(session, repo, params)["backup_id"]
    export = {"repository": repo.location, "backup_id": backup_id, "port": args.port, "state_dir": os.path.join(work, "exports")}
    start, read, restore = [], [], []
    for run in range(args.runs):
        began = time.monotonic()
        started = nbd_export.present(repo, export, "nbdkit")
        start.append(time.monotonic() - began)
        try:
            began = time.monotonic()
            subprocess.run(["nbdcopy", started["url"], "null:"], check=True)
            read.append(time.monotonic() - began)
        finally:
            nbd_export.absent(export)
        target = os.path.join(work, "restore%d" % run)
        began = time.monotonic()
        run_restore(repo, {"backup_id": backup_id, "destination": target, "format": "raw"})
        restore.append(time.monotonic() - began)
        shutil.rmtree(target)
    result = {"size_mib": args.size_mib, "percent": args.percent, "runs": args.runs, "cpus": os.cpu_count(),
              "export_start_seconds": round(statistics.median(start), 3),
              "export_full_read_seconds": round(statistics.median(read), 3),
              "restore_seconds": round(statistics.median(restore), 3),
              "export_read_mib_per_second": round(args.size_mib * args.percent / 100.0 / statistics.median(read), 1),
              "restore_mib_per_second": round(args.size_mib * args.percent / 100.0 / statistics.median(restore), 1)}
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=1)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
