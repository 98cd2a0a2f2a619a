"""Benchmark: our VHDX reader vs `qemu-img convert` reading a whole dynamic VHDX.

Usage (from the repo root, after `source scripts/env.sh`):
    python benchmarks/bench_vdisk_read.py [--size-mib 2048] [--seed 20240901] [--trials 3]
                                          [--workdir DIR] [--vhdx EXISTING.vhdx] [--keep]

Without --vhdx it builds the image: /work/shared/bench/gen_image.py OUT.raw SIZE SEED, then
`qemu-img convert -f raw -O vhdx -o subformat=dynamic`. It checks once (untimed) that our reader
returns the same bytes as the raw source, then runs, interleaved, ``--trials`` trials of:
  ours/memory   : open_disk + readinto a preallocated 4 MiB buffer, end to end
  ours/file     : allocated_ranges() read in 4 MiB pieces and written to a raw file on the same
                  filesystem (unallocated ranges and all-zero 64 KiB pieces left as holes, like
                  qemu-img's default -S 4k), fsync
  qemu/file     : qemu-img convert -f vhdx -O raw IN OUT.raw (same filesystem), fsync
  qemu/null     : qemu-img convert -n -f vhdx IN --target-image-opts driver=null-co (reads only)
and reports medians in MB/s (10^6 bytes of virtual disk per second) plus ratios. The page cache is
warm (it cannot be dropped in a container), so this measures CPU cost, not disk throughput.
Results go to benchmarks/results/vdisk-<time>.json; big temporary files are removed unless --keep.
"""
import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, ".build", "collections"))

from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vdisk import open_disk  # noqa: E402

MiB = 1024 * 1024
CHUNK = 4 * MiB
GEN_IMAGE = "/work/shared/bench/gen_image.py"


def ours_memory(path):
    with open_disk(path) as disk:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        for offset in range(0, disk.virtual_size, CHUNK):
            length = min(CHUNK, disk.virtual_size - offset)
            disk.readinto(offset, view[:length])
        return disk.virtual_size


SPARSE = 64 * 1024
WRITE_PIECE = 2 * MiB
WRITERS = 2
ZERO_SPARSE = bytes(SPARSE)


def write_sparse(fd, buf, length, offset):
    """Write buf[:length] at offset, leaving 64 KiB all-zero pieces as holes (as qemu-img convert does)."""
    view = memoryview(buf)
    start = None
    for position in range(0, length, SPARSE):
        if start is not None and position - start >= WRITE_PIECE:    # 2 MiB writes, like qemu-img
            os.pwrite(fd, view[start:position], offset + start)
            start = position
        piece = min(SPARSE, length - position)
        zero = buf.startswith(ZERO_SPARSE[:piece], position, position + piece)   # a memcmp, no copy
        if zero and start is not None:
            if position > start:
                os.pwrite(fd, view[start:position], offset + start)
            start = None
        elif not zero and start is None:
            start = position
    if start is not None:
        os.pwrite(fd, view[start:length], offset + start)


def ours_file(path, out, writers=WRITERS):
    """Restore-to-raw as the engines do it: only the allocated ranges (from the BATs) are read and written.

    The main thread reads 4 MiB pieces while ``writers`` helper threads write earlier ones (pread and
    pwrite release the GIL), as qemu-img overlaps reads with several parallel writes.
    """
    with open_disk(path) as disk, ThreadPoolExecutor(max_workers=writers) as pool:
        buffers = [bytearray(CHUNK) for _buffer in range(writers + 1)]
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, disk.virtual_size)    # as qemu-img does: size first, then writes inside the file
            pending = []
            turn = 0
            for start, length in disk.allocated_ranges():
                for offset in range(start, start + length, CHUNK):
                    if len(pending) > writers - 1:
                        pending.pop(0).result()     # its buffer is the one we are about to reuse
                    buf = buffers[turn]
                    size = min(CHUNK, start + length - offset)
                    disk.readinto(offset, memoryview(buf)[:size])
                    pending.append(pool.submit(write_sparse, fd, buf, size, offset))
                    turn = (turn + 1) % len(buffers)
            for future in pending:
                future.result()
            os.fsync(fd)
        finally:
            os.close(fd)
        return disk.virtual_size


def qemu_file(path, out):
    subprocess.run(["qemu-img", "convert", "-f", "vhdx", "-O", "raw", path, out], check=True)
    fd = os.open(out, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def qemu_null(path, size):
    subprocess.run(["qemu-img", "convert", "-n", "-f", "vhdx", path, "--target-image-opts",
                    "driver=null-co,size=%d" % size], check=True)


def _cpu():
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(func, *args):
    """(wall seconds, CPU seconds of this process and its children): CPU time is less disturbed by other load."""
    cpu = _cpu()
    start = time.perf_counter()
    func(*args)
    return time.perf_counter() - start, _cpu() - cpu


def verify(path, raw):
    with open_disk(path) as disk, open(raw, "rb") as source:
        for offset in range(0, disk.virtual_size, CHUNK):
            length = min(CHUNK, disk.virtual_size - offset)
            if disk.read(offset, length) != source.read(length):
                raise SystemExit("MISMATCH at offset %d: our reader differs from the raw source" % offset)


def machine():
    cpu = ""
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "")
    except OSError:
        pass
    qemu = subprocess.run(["qemu-img", "--version"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    return {"cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release(), "qemu": qemu}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=20240901)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--workdir", default=os.path.join(ROOT, "benchmarks", "results", "vdisk-work"))
    parser.add_argument("--vhdx", help="use this dynamic VHDX instead of building one")
    parser.add_argument("--keep", action="store_true", help="keep the generated image files")
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    made = []
    raw = None
    if args.vhdx:
        vhdx = args.vhdx
    else:
        raw = os.path.join(args.workdir, "bench.raw")
        vhdx = os.path.join(args.workdir, "bench.vhdx")
        made += [raw, raw + ".layout.tsv", vhdx]
        if not os.path.exists(vhdx):
            subprocess.run([sys.executable, GEN_IMAGE, raw, str(args.size_mib), str(args.seed)], check=True)
            subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vhdx", "-o", "subformat=dynamic", raw, vhdx], check=True)
    if raw and os.path.exists(raw):
        verify(vhdx, raw)
        os.unlink(raw)      # not needed any more; frees the space before the timed runs
    with open_disk(vhdx) as disk:
        size = disk.virtual_size
        allocated = sum(length for _offset, length in disk.allocated_ranges())
    out = os.path.join(args.workdir, "out.raw")
    load_before = os.getloadavg()
    names = ("ours/memory", "qemu/null", "ours/file", "qemu/file")
    times = dict((name, []) for name in names)
    cpu = dict((name, []) for name in names)
    for _trial in range(args.trials):
        for name, func, extra in (("ours/memory", ours_memory, ()), ("qemu/null", qemu_null, (size,)),
                                  ("ours/file", ours_file, (out,)), ("qemu/file", qemu_file, (out,))):
            wall, used = timed(func, vhdx, *extra)
            times[name].append(wall)
            cpu[name].append(used)
            if os.path.exists(out):
                os.unlink(out)
    medians = dict((name, statistics.median(values)) for name, values in times.items())
    cpu_medians = dict((name, statistics.median(values)) for name, values in cpu.items())
    result = {
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "image": {"path": vhdx, "virtual_size": size, "allocated_bytes": allocated, "file_size": os.path.getsize(vhdx),
                  "size_mib": args.size_mib, "seed": args.seed},
        "machine": machine(),
        "load_average_before_after": [load_before, os.getloadavg()],
        "trials": times,
        "cpu_trials": cpu,
        "median_seconds": medians,
        "median_cpu_seconds": cpu_medians,
        "median_mb_per_s": dict((name, size / 1e6 / seconds) for name, seconds in medians.items()),
        "ratio_ours_memory_vs_qemu_null": medians["qemu/null"] / medians["ours/memory"],
        "ratio_ours_file_vs_qemu_file": medians["qemu/file"] / medians["ours/file"],
    }
    os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
    report = os.path.join(ROOT, "benchmarks", "results", "vdisk-%s.json" % time.strftime("%Y%m%dT%H%M%S"))
    with open(report, "w") as handle:
        json.dump(result, handle, indent=2)
    print("| run | median wall s | MB/s | median CPU s | wall trials (s) |")
    print("| --- | --- | --- | --- | --- |")
    for name in names:
        trials = ", ".join("%.3f" % t for t in times[name])
        print("| %s | %.3f | %.0f | %.3f | %s |" % (name, medians[name], result["median_mb_per_s"][name], cpu_medians[name], trials))
    print("ours/memory vs qemu/null: %.2fx; ours/file vs qemu/file: %.2fx (>1 = ours faster)"
          % (result["ratio_ours_memory_vs_qemu_null"], result["ratio_ours_file_vs_qemu_file"]))
    print("load average before/after: %s / %s" % tuple(result["load_average_before_after"]))
    print("results:", report)
    if not args.keep:
        for path in made:
            if os.path.exists(path):
                os.unlink(path)
        if not os.listdir(args.workdir):
            shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
