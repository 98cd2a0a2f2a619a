"""Benchmark: what a full backup's work costs without the engine (the floor under its CPU seconds per GiB).

Usage:
    source scripts/env.sh
    python benchmarks/bench_floor.py [--size-mib 4096] [--seed 20240901] [--trials 3] [--work DIR]
                                     [--levels 1,-1,none] [--engine-workers N,1] [--settle-seconds 65]
                                     [--json OUT.json]

The image, its VHDX and the lab VM are bench_backup.py's (same ``--work`` layout, generated once). Per trial:

  - **floor**, one pass over the raw image in one thread with nothing of the engine around it: for every 1 MiB
    chunk ``os.preadv`` into a reused buffer, the zero test, the chunk id (``RepositoryKeys.chunk_id``: BLAKE3),
    the compression probe and zstd (``worth_compressing``, the repository's compressor at each ``--levels`` entry;
    ``none`` stores every chunk as it is), the envelope (``seal_parts``: header and XXH3-128), and the write of one
    file per chunk (``LocalStore.put`` without fsync, then one ``flush``, as a backup commits). Each step's CPU
    seconds (``time.process_time``, this thread) are summed over the pass;
  - **engine**, ``run_backup`` of the lab VM into a fresh repository, in this process (all threads), as
    bench_backup.py's engine trial: the same work plus reading the VHDX, the pipeline's threads, the index, the
    recovery point and the commit.

``engine - floor`` at level 1 is what the engine adds to the primitives; the floor's own CPU seconds per GiB is
what no change to the engine can go below at that compression level on this machine. Repositories are deleted
and the file system left ``--settle-seconds`` before the next trial (bench_backup.settle). Medians of ``--trials``.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

from ansible_collections.hyperv.backup.plugins.module_utils.backup.backup_engine import CopyOptions, default_workers, run_backup
from ansible_collections.hyperv.backup.plugins.module_utils.repository.backup_record import chunk_key
from ansible_collections.hyperv.backup.plugins.module_utils.repository.local_store import LocalStore
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_crypto import (
    KIND_CHUNK, RepositoryKeys, new_compressor, worth_compressing)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_backup import Workspace, lab_backup_setup, settle, timed, warm  # noqa: E402  pylint: disable=wrong-import-position

MiB = 1024 * 1024
STEPS = ("read", "zero_test", "chunk_id", "probe", "compress", "envelope", "write", "flush")


def floor_pass(raw, store_dir, level):
    """{step: CPU seconds} of one single-threaded pass storing every non-zero chunk of ``raw`` at ``level``."""
    keys = RepositoryKeys()
    compressor = None if level == "none" else new_compressor(int(level))
    store = LocalStore(store_dir, create=True)
    spent = dict((step, 0.0) for step in STEPS)
    clock = time.process_time
    buf, zero = bytearray(MiB), bytes(MiB)
    fd = os.open(raw, os.O_RDONLY)
    chunks = stored = 0
    try:
        size = os.fstat(fd).st_size
        for offset in range(0, size, MiB):
            t0 = clock()
            os.preadv(fd, [buf], offset)
            t1 = clock()
            is_zero = buf == zero
            t2 = clock()
            spent["read"] += t1 - t0
            spent["zero_test"] += t2 - t1
            if is_zero:
                continue
            cid = keys.chunk_id(buf)
            t3 = clock()
            worth = compressor is not None and worth_compressing(buf, compressor)
            t4 = clock()
            body = buf
            if worth:
                packed = compressor.compress(buf)
                if len(packed) < len(buf):
                    body = packed
            t5 = clock()
            key = chunk_key(cid)
            # The body is already what seal_parts would keep, so without a compressor it adds only the header and the
            # checksum: the same bytes and cost, though the flags do not say zstd (nothing reads these files back).
            parts = keys.seal_parts(KIND_CHUNK, key, body, None)
            t6 = clock()
            store.put(key, parts, durable=False)
            t7 = clock()
            spent["chunk_id"] += t3 - t2
            spent["probe"] += t4 - t3
            spent["compress"] += t5 - t4
            spent["envelope"] += t6 - t5
            spent["write"] += t7 - t6
            chunks += 1
            stored += sum(len(p) for p in parts)
    finally:
        os.close(fd)
    t8 = clock()
    store.flush()
    spent["flush"] = clock() - t8
    spent["total"] = sum(spent[step] for step in STEPS)
    spent["chunks"] = chunks
    spent["stored_bytes"] = stored
    return spent


def engine_full(ws, work, workers):
    """(CPU seconds, wall seconds, backup type) of run_backup's full backup of the lab VM with ``workers`` copy threads."""
    with lab_backup_setup(ws, work) as (_layout, session, repo, params):
        result, wall, cpu = timed(run_backup, session, repo, params, options=CopyOptions(workers=workers))
    return cpu, wall, result["type"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--size-mib", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=20240901)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--work", default=None, help="bench_backup.py's work directory (the image is generated once)")
    parser.add_argument("--levels", default="1,-1,none", help="zstd levels of the floor pass; none: no compression")
    parser.add_argument("--engine-workers", default="%d,1" % default_workers(),
                        help="copy threads of the engine runs (default: the engine's own, cores + 2, and 1)")
    parser.add_argument("--settle-seconds", type=int, default=65)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    root = args.work or tempfile.mkdtemp(prefix="bench_floor_")
    os.makedirs(root, exist_ok=True)
    ws = Workspace(root, args.size_mib, args.seed)
    gib = args.size_mib / 1024.0
    levels = [level.strip() for level in args.levels.split(",") if level.strip()]
    runs = {}
    stale = [os.path.join(root, entry) for entry in os.listdir(root) if entry.startswith("floor_")]
    for trial in range(args.trials):
        settle(stale, args.settle_seconds)
        stale = []
        warm(ws.raw_v1)
        for level in levels:
            work = os.path.join(root, "floor_%s_%d" % (level, trial))
            stale.append(work)
            spent = floor_pass(ws.raw_v1, work, level)
            spent["load1"] = os.getloadavg()[0]
            print(json.dumps({"run": "floor", "level": level, "trial": trial, **spent}), flush=True)
            runs.setdefault("floor " + level, []).append(spent)
        for workers in [int(w) for w in args.engine_workers.split(",") if w.strip()]:
            work = os.path.join(root, "floor_engine%d_%d" % (workers, trial))
            os.makedirs(work)
            stale.append(work)
            cpu, wall, backup_type = engine_full(ws, work, workers)
            assert backup_type == "full", backup_type
            print(json.dumps({"run": "engine", "workers": workers, "trial": trial, "total": cpu, "wall": wall,
                              "load1": os.getloadavg()[0]}), flush=True)
            runs.setdefault("engine, %d worker(s)" % workers, []).append({"total": cpu, "wall": wall})
    settle(stale, 0)
    medians = dict((name, dict((k, statistics.median(r[k] for r in rs)) for k in rs[0])) for name, rs in runs.items())
    print("\n| run | " + " | ".join(STEPS) + " | total CPU s | CPU s per GiB | stored MB |")
    print("| --- |" + " --- |" * (len(STEPS) + 3))
    for name, m in medians.items():
        cells = ["%.2f" % m[step] if step in m else "-" for step in STEPS]
        stored = "%.0f" % (m["stored_bytes"] / 1e6) if "stored_bytes" in m else "-"
        print("| %s | %s | %.2f | %.2f | %s |" % (name, " | ".join(cells), m["total"], m["total"] / gib, stored))
    if "floor 1" in medians:
        for name, m in medians.items():
            if name.startswith("engine"):
                extra = m["total"] - medians["floor 1"]["total"]
                print("%s - floor at level 1: %.2f CPU s (%.2f per GiB); wall %.2f s" % (name, extra, extra / gib, m["wall"]))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as out:
            json.dump({"size_mib": args.size_mib, "seed": args.seed, "trials": args.trials, "levels": levels,
                       "settle_seconds": args.settle_seconds, "medians": medians, "runs": runs, "cpus": os.cpu_count()}, out, indent=1)


if __name__ == "__main__":
    main()
