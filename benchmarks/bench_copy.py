"""Benchmark: hyperv_backup_copy (repository_copy.copy_backups) local to local, shared keys against different keys.

Usage:
    source scripts/env.sh
    python benchmarks/bench_copy.py [--size-mib 512] [--seed 20240901] [--trials 3] [--work DIR]

Data: the mixed image of ``/work/shared/bench/gen_image.py OUT.raw SIZE SEED`` (40 % zeros, 30 % compressible, 30 %
random) backed up once (full, 1 MiB chunks) into an encrypted source repository; then 40 scattered 1 MiB chunks are
changed and backed up again as an incremental (RCT style, from the parent's tree). Per trial, two fresh targets: one
made with the source's keys (copy_keys_from) and one with keys of its own; each gets the full copied, then the
incremental. Reported per case: wall and CPU seconds (this process, all threads) of the copy without verify, chunks
read / re-hashed / uploaded, MiB uploaded; medians of ``--trials``. The 1-minute load average is printed with each
trial (the machine may be shared: CPU seconds move less with the load than wall seconds).
"""
import argparse
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from ansible_collections.hyperv.backup.plugins.module_utils.repository import repository_copy
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository

MiB = 1024 * 1024
GEN_IMAGE = "/work/shared/bench/gen_image.py"
KDF = {"n": 2 ** 14, "r": 8, "p": 1}


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def back_up(repo, path, size, parent=None, changed=None):
    with repo.begin_backup(vm_id="vm-bench", vm_name="bench", host="hv1", method="rct",
                           backup_type="incremental" if parent else "full",
                           parent_backup_id=parent.backup_id if parent else None, consistency="application") as session:
        base = repo.load_disk_manifest(parent.backup_id, "disk0") if parent else None
        disk = session.add_disk(disk_key="disk0", virtual_size=size, base=base)
        with open(path, "rb") as image:
            for index in (sorted(changed) if parent else range(disk.chunk_count)):
                image.seek(index * MiB)
                disk.put_chunk_async(index, image.read(MiB))
        return session.commit()


def timed_copy(source, target, backup_id):
    wall, cpu = time.perf_counter(), cpu_seconds()
    report = repository_copy.copy_backups(source, target, backup_ids=[backup_id], verify=False)
    return {"wall": time.perf_counter() - wall, "cpu": cpu_seconds() - cpu, "read": report["chunks_read"],
            "rehashed": report["chunks_rehashed"], "uploaded": report["chunks_uploaded"] + report["pages_uploaded"],
            "mib_uploaded": report["bytes_uploaded"] / MiB}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--seed", type=int, default=20240901)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--work")
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="bench-copy-")
    os.makedirs(work, exist_ok=True)
    size = args.size_mib * MiB
    image = os.path.join(work, "image.raw")
    if not os.path.exists(image):
        subprocess.run([sys.executable, GEN_IMAGE, image, str(args.size_mib), str(args.seed)], check=True)
    source_dir = os.path.join(work, "source")
    shutil.rmtree(source_dir, ignore_errors=True)
    source = Repository.init(source_dir, passphrase="bench", scrypt_params=KDF)
    full = back_up(source, image, size)
    rng = random.Random(args.seed + 100)
    changed = set(rng.sample(range(size // MiB), 40))
    with open(image, "r+b") as handle:
        for index in changed:
            handle.seek(index * MiB)
            handle.write(rng.randbytes(MiB))
    incremental = back_up(source, image, size, parent=full, changed=changed)
    results = {}
    for trial in range(args.trials):
        for keys in ("shared", "different"):
            location = os.path.join(work, "target-%s" % keys)
            shutil.rmtree(location, ignore_errors=True)
            if keys == "shared":
                target = repository_copy.init_with_keys_of(source, location, passphrase="target", scrypt_params=KDF)
            else:
                target = Repository.init(location, passphrase="target", scrypt_params=KDF)
            for which, record in (("full", full), ("incremental", incremental)):
                outcome = timed_copy(source, target, record.backup_id)
                results.setdefault((keys, which), []).append(outcome)
                print("trial %d %-9s %-11s wall %.2f s cpu %.2f s read %d rehashed %d uploaded %d (%.1f MiB) load %.2f" % (
                    trial + 1, keys, which, outcome["wall"], outcome["cpu"], outcome["read"], outcome["rehashed"],
                    outcome["uploaded"], outcome["mib_uploaded"], os.getloadavg()[0]), flush=True)
    print()
    print("| keys | backup | wall s (median) | CPU s (median) | MiB/s of disk (wall) | chunks read | re-hashed | objects uploaded | MiB uploaded |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for (keys, which), runs in results.items():
        wall = statistics.median(r["wall"] for r in runs)
        print("| %s | %s | %.2f | %.2f | %s | %d | %d | %d | %.1f |" % (
            keys, which, wall, statistics.median(r["cpu"] for r in runs),
            "%.0f" % (args.size_mib / wall) if which == "full" else "-", runs[0]["read"], runs[0]["rehashed"],
            runs[0]["uploaded"], runs[0]["mib_uploaded"]))


if __name__ == "__main__":
    main()
