"""Benchmark: module memory and time against the number of backups in a repository (issue 14).

Usage:
    source scripts/env.sh
    python benchmarks/bench_history.py [--backups 1000] [--vms 100] [--steps 10,100,1000] [--work DIR] [--json OUT.json]

The repository (default chunk size, 1 MiB; plain) holds one VM with a 64 TiB virtual disk backed up ``--backups``
times (a full of 256 chunks, then incrementals of 40 changed chunks each at random places, each sharing the rest of
its index with its parent, as an RCT incremental does) and ``--vms`` other VMs with one 16 GiB backup each. Chunk
data is unique but compressible (so the repository stays small on disk and the figures are about the index and the
catalog, not about hashing gigabytes). At each count in ``--steps`` it runs, as Ansible runs them (a Python process
reading its arguments from a JSON file, under /usr/bin/time): ``hyperv_backup_info`` (list every backup),
``hyperv_backup_repository state=verified`` (re-read and re-hash every chunk and index page), and at the end
``state=pruned`` (keep_last 10, GC with the grace aged out) and verify again. Reported: wall seconds, CPU seconds,
peak RSS of each process, repository objects and bytes. The goal is every module under 256 MiB at 1,000 backups.
"""
import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_backup import module  # noqa: E402  pylint: disable=wrong-import-position

from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository  # noqa: E402

MiB = 1 << 20
TiB = 1 << 40
HUGE = 64 * TiB
SMALL = 16 << 30


def chunk(tag):
    """1 MiB, unique per tag, compresses to ~100 bytes."""
    head = ("%s|" % tag).encode() * 8
    return head + bytes(MiB - len(head))


def backup(repo, vm, size, chunks, parent=None):
    base = repo.load_disk_manifest(parent.backup_id, "disk0", parent) if parent is not None else None
    with repo.begin_backup(vm_id=vm, vm_name=vm, host="hv1", method="rct", backup_type="incremental" if parent else "full",
                           parent_backup_id=parent.backup_id if parent else None) as session:
        disk = session.add_disk(disk_key="disk0", virtual_size=size, base=base)
        for index, data in sorted(chunks.items()):
            disk.put_chunk_async(index, data)
        return session.commit()


def objects(path):
    count = size = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            count += 1
            size += os.path.getsize(os.path.join(root, name))
    return count, size


def measure(location, label, results, **extra):
    name = extra.pop("_module", "hyperv_backup_info")
    args = dict(repository=location, **extra)
    elapsed, rss, result = module(name, args)
    row = {"step": label, "module": name, "seconds": round(elapsed, 2), "cpu_seconds": result["_cpu_seconds"],
           "peak_rss_mib": round(rss / MiB, 1)}
    if name == "hyperv_backup_info":
        row["backups_listed"] = len(result.get("backups") or [])
    elif args.get("state") == "verified":
        row["chunks_checked"] = (result.get("verify") or result).get("chunks_checked")
    results.append(row)
    print(json.dumps(row), flush=True)
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--backups", type=int, default=1000)
    parser.add_argument("--vms", type=int, default=100)
    parser.add_argument("--steps", default="10,100,1000")
    parser.add_argument("--work")
    parser.add_argument("--json")
    parser.add_argument("--resume", action="store_true", help="go on with the repository already in --work")
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="bench_history_")
    location = os.path.join(work, "repo")
    rng = random.Random(14)
    steps = sorted(int(s) for s in args.steps.split(","))
    results = []
    started = time.monotonic()
    parent, first = None, 1
    if args.resume:
        repo = Repository.open(location)
        mine = [record for record in repo.list_backups() if record.vm_id == "big"]
        parent = max(mine, key=lambda record: record.order_key) if mine else None
        first = len(mine) + 1
        rng = random.Random(14 + first)
        if os.path.exists(args.json or ""):
            with open(args.json) as handle:
                results = json.load(handle)
    else:
        shutil.rmtree(location, ignore_errors=True)
        repo = Repository.init(location)
        for vm in range(args.vms):
            backup(repo, "vm-%03d" % vm, SMALL, dict((rng.randrange(SMALL // MiB), chunk("v%d-%d" % (vm, i))) for i in range(10)))
    chunk_count = HUGE // repo.chunk_size
    for number in range(first, args.backups + 1):
        count = 256 if parent is None else 40
        parent = backup(repo, "big", HUGE, dict((rng.randrange(chunk_count), chunk("b%d-%d" % (number, i))) for i in range(count)),
                        parent)
        if number in steps:
            built = round(time.monotonic() - started, 1)
            files, size = objects(location)
            print(json.dumps({"backups_of_big": number, "other_vms": args.vms, "objects": files, "bytes": size,
                              "build_seconds": built}), flush=True)
            results.append({"step": "built", "backups_of_big": number, "objects": files, "bytes": size})
            measure(location, "%d backups" % number, results)
            measure(location, "%d backups" % number, results, _module="hyperv_backup_repository", state="verified")
    for path in ("chunks", "manifests", "backups"):
        for root, _dirs, files in os.walk(os.path.join(location, path)):
            for name in files:
                os.utime(os.path.join(root, name), (time.time() - 7200, time.time() - 7200))
    measure(location, "prune to 10", results, _module="hyperv_backup_repository", state="pruned", keep_last=10,
            gc_grace_minutes=15)
    measure(location, "after prune", results, _module="hyperv_backup_repository", state="verified")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=1)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
