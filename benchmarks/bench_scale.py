"""Benchmark: does the cost of a backup grow with the virtual disk size, or only with the data? (issue 14)

Usage:
    source scripts/env.sh
    python benchmarks/bench_scale.py [--sizes 16G,1T,4T,64T] [--trials 1] [--work DIR] [--json OUT.json]
                                     [--steps lab,full,incr,restore_raw,restore_vhdx,verify] [--markdown]
    python benchmarks/bench_scale.py --sizes 16G,64T --alternate 9 [--work DIR]

Workload (the issue's, lab era 2022, one VM with one dynamic VHDX of each size; only the written data takes space):
  - ``hyperv_lab``: the host and the VM with an empty dynamic VHDX of the size (default block size, 32 MiB), then
    256 guest writes of 1 MiB at seeded random 4 KiB-aligned places (lab churn);
  - ``hyperv_backup`` full; 40 guest writes of 64 KiB (lab churn); ``hyperv_backup`` incremental (RCT);
  - ``hyperv_restore`` of the incremental to raw and to VHDX (verify on, as by default);
  - ``hyperv_backup_repository`` state=verified.
Every step is a module process run as Ansible runs it (``python <module>.py args.json``, as bench_backup.py does),
under /usr/bin/time: wall seconds, CPU seconds (user + system) and the peak RSS of that process. Per step also the
repository growth (du of the repository before and after) and, for restores, the restored file's allocated size
(st_blocks * 512) and its apparent size. Medians of ``--trials``. JSON lines to ``--json`` (default
benchmarks/results/scale.json) and a Markdown table on stdout.

``--alternate N`` measures only the incremental, for the issue's "within 1.5x" comparison between sizes: each size's
lab and repository are prepared once (lab, full backup, the 40 guest writes) and kept aside; then N rounds, each
restoring every size's prepared state and running the incremental module on it, the sizes taken in turn (the order
reversed every other round), so that a change in the machine's load falls on every size alike. Per size: the median
CPU and wall seconds and peak RSS; per round: the ratio of each size to the first, and their median, lowest, highest.
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

MiB = 1024 * 1024
GiB = 1024 * MiB
TiB = 1024 * GiB
HERE = os.path.dirname(os.path.abspath(__file__))
MODULES = os.path.join(HERE, "..", "plugins", "modules")
STEPS = ("lab", "full", "incr", "restore_raw", "restore_vhdx", "verify")
UNITS = {"G": GiB, "T": TiB, "M": MiB}


def parse_size(text):
    text = text.strip().upper().rstrip("IB")
    if text[-1] in UNITS:
        return int(float(text[:-1]) * UNITS[text[-1]])
    return int(text)


def size_label(size):
    return "%d TiB" % (size // TiB) if size >= TiB else "%d GiB" % (size // GiB)


def run_child(argv):
    """(seconds, peak RSS bytes, CPU seconds, stdout) of ``argv`` under /usr/bin/time (its own RSS, not ours)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile("r") as stats_file:
        start = time.monotonic()
        proc = subprocess.run(["/usr/bin/time", "-f", "STATS %M %U %S", "-o", stats_file.name] + list(argv), stdout=out,
                              stderr=err, check=False)
        elapsed = time.monotonic() - start
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
        err.seek(0)
        errors = err.read().decode("utf-8", "replace")
        stats = [line.split()[1:] for line in stats_file.read().splitlines() if line.startswith("STATS ")]
    if proc.returncode != 0:
        raise RuntimeError("%s failed (rc %d): %s" % (" ".join(argv[:3]), proc.returncode, text[-3000:] + errors[-3000:]))
    rss, cpu = (int(stats[-1][0]) * 1024, float(stats[-1][1]) + float(stats[-1][2])) if stats else (None, None)
    return elapsed, rss, cpu, text


def module(name, args):
    """Run a module as Ansible does: a Python process reading its arguments from a JSON file."""
    handle, path = tempfile.mkstemp(suffix=".json")
    with os.fdopen(handle, "w") as out:
        json.dump({"ANSIBLE_MODULE_ARGS": args}, out)
    try:
        elapsed, rss, cpu, text = run_child([sys.executable, os.path.join(MODULES, name + ".py"), path])
    finally:
        os.unlink(path)
    result = json.loads(text[text.index("{"):])
    what = args.get("state") or args.get("type") or args.get("format") or ""
    sys.stderr.write("  %s %s: %.2f s, %.2f CPU s, %.0f MiB\n" % (name, what, elapsed, cpu, rss / float(MiB)))
    if result.get("failed"):
        raise RuntimeError("%s failed: %s" % (name, result.get("msg")))
    return {"seconds": round(elapsed, 3), "rss_mib": round(rss / float(MiB), 1), "cpu_seconds": round(cpu, 2)}, result


def du(path):
    """Bytes allocated under ``path`` (st_blocks), 0 when it does not exist."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total


def restored_file(result):
    disk = (result.get("disks") or [{}])[0]
    return disk.get("path")


def trial(size, work, steps):
    """One run of the workload on a ``size``-byte disk; {step: measures}."""
    lab, repo = os.path.join(work, "lab"), os.path.join(work, "repo")
    lab_args = dict(transport="lab", lab_directory=lab, host="scale")
    out = {}
    measure = module("hyperv_lab", dict(lab_args, era="2022", vms=[{"name": "scalevm", "disks": [{"size": size}]}],
                                        churn=[{"vm": "scalevm", "seed": 1, "writes": 256, "write_size": MiB}]))[0]
    measure["lab_bytes"] = du(lab)
    out["lab"] = measure
    conn = dict(transport="lab", host="scale", lab_directory=lab, vm="scalevm", repository=repo)
    module("hyperv_backup_repository", dict(repository=repo, state="present"))
    for step in ("full", "incr"):
        if step == "incr":
            incr_churn = [{"vm": "scalevm", "seed": 2, "writes": 40, "write_size": 64 * 1024}]
            out["lab_churn_incr"] = module("hyperv_lab", dict(lab_args, churn=incr_churn))[0]
        before = du(repo)
        measure, result = module("hyperv_backup", dict(conn, type="full" if step == "full" else "incremental"))
        measure.update(repo_growth_bytes=du(repo) - before, type=result.get("type"), bytes_read=result.get("bytes_read"))
        out[step] = measure
    for fmt in ("raw", "vhdx"):
        step = "restore_" + fmt
        if step not in steps:
            continue
        destination = os.path.join(work, step)
        measure, result = module("hyperv_restore", dict(repository=repo, vm="scalevm", destination=destination, format=fmt))
        path = restored_file(result)
        st = os.stat(path)
        measure.update(allocated_bytes=st.st_blocks * 512, apparent_bytes=st.st_size)
        out[step] = measure
        shutil.rmtree(destination, ignore_errors=True)
    if "verify" in steps:
        out["verify"] = module("hyperv_backup_repository", dict(repository=repo, state="verified"))[0]
    out["repo_bytes"] = du(repo)
    return out


def prepare_incremental(size, work):
    """The state just before the incremental: lab with its 256 guest writes, full backup, then the 40 guest writes."""
    lab, repo = os.path.join(work, "lab"), os.path.join(work, "repo")
    lab_args = dict(transport="lab", lab_directory=lab, host="scale")
    module("hyperv_lab", dict(lab_args, era="2022", vms=[{"name": "scalevm", "disks": [{"size": size}]}],
                              churn=[{"vm": "scalevm", "seed": 1, "writes": 256, "write_size": MiB}]))
    module("hyperv_backup_repository", dict(repository=repo, state="present"))
    module("hyperv_backup", dict(transport="lab", host="scale", lab_directory=lab, vm="scalevm", repository=repo,
                                 type="full"))
    module("hyperv_lab", dict(lab_args, churn=[{"vm": "scalevm", "seed": 2, "writes": 40, "write_size": 64 * 1024}]))


def alternate_incremental(sizes, base, rounds):
    """--alternate: {size text: [incremental measures]} and the per-round ratios to the first size."""
    prepared = {}
    for text in sizes:
        work = os.path.join(base, "alt_%s" % text)
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work)
        prepare_incremental(parse_size(text), work)
        # the same absolute path for every run (the lab's state names its files): put the state aside, copy it back
        os.rename(work, work + ".prepared")
        prepared[text] = work
    runs = dict((text, []) for text in sizes)
    for number in range(rounds):
        for text in (sizes if number % 2 == 0 else list(reversed(sizes))):
            work = prepared[text]
            shutil.rmtree(work, ignore_errors=True)
            subprocess.run(["cp", "-a", "--sparse=always", work + ".prepared", work], check=True)
            lab, repo = os.path.join(work, "lab"), os.path.join(work, "repo")
            measure, result = module("hyperv_backup", dict(transport="lab", host="scale", lab_directory=lab, vm="scalevm",
                                                           repository=repo, type="incremental"))
            if result.get("type") != "incremental":
                raise RuntimeError("size %s: the backup was %s, not incremental" % (text, result.get("type")))
            measure["load_1min"] = os.getloadavg()[0]
            runs[text].append(measure)
    for work in prepared.values():
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(work + ".prepared", ignore_errors=True)
    ratios = {}
    for text in sizes[1:]:
        ratios[text] = dict((key, [b[key] / a[key] for a, b in zip(runs[sizes[0]], runs[text])])
                            for key in ("cpu_seconds", "seconds"))
    return runs, ratios


def alternate_table(sizes, runs, ratios):
    lines = ["| virtual disk | runs | CPU s, median | wall s, median | peak RSS MiB, median |",
             "| --- | --- | --- | --- | --- |"]
    for text in sizes:
        got = runs[text]
        cells = (size_label(parse_size(text)), len(got), statistics.median(m["cpu_seconds"] for m in got),
                 statistics.median(m["seconds"] for m in got), statistics.median(m["rss_mib"] for m in got))
        lines.append("| %s | %d | %.3f | %.3f | %.0f |" % cells)
    lines += ["", "| virtual disk | against | CPU ratio: median (lowest - highest) | wall ratio: median (lowest - highest) | "
              "ratio of the CPU medians |", "| --- | --- | --- | --- | --- |"]
    for text, per_key in ratios.items():
        cpu, wall = per_key["cpu_seconds"], per_key["seconds"]
        of_medians = (statistics.median(m["cpu_seconds"] for m in runs[text])
                      / statistics.median(m["cpu_seconds"] for m in runs[sizes[0]]))
        lines.append("| %s | %s | %.2fx (%.2f - %.2f) | %.2fx (%.2f - %.2f) | %.2fx |" % (
            size_label(parse_size(text)), size_label(parse_size(sizes[0])), statistics.median(cpu), min(cpu), max(cpu),
            statistics.median(wall), min(wall), max(wall), of_medians))
    return "\n".join(lines)


def medians(runs):
    """Per step, the median of each number over the trials."""
    out = {}
    for step in runs[0]:
        if isinstance(runs[0][step], dict):
            out[step] = {}
            for key, value in runs[0][step].items():
                values = [r[step][key] for r in runs if isinstance(r[step].get(key), (int, float))]
                out[step][key] = statistics.median(values) if values and isinstance(value, (int, float)) else value
        else:
            out[step] = statistics.median([r[step] for r in runs])
    return out


def table(rows):
    lines = ["| virtual disk | step | seconds | CPU s | peak RSS MiB | repo growth MiB | restored allocated MiB |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        for step in ("lab", "full", "lab_churn_incr", "incr", "restore_raw", "restore_vhdx", "verify"):
            m = row["medians"].get(step)
            if not m:
                continue
            growth = m.get("repo_growth_bytes")
            alloc = m.get("allocated_bytes")
            lines.append("| %s | %s | %.2f | %.2f | %.0f | %s | %s |" % (
                size_label(row["virtual_size"]), step, m["seconds"], m["cpu_seconds"], m["rss_mib"],
                "%.1f" % (growth / float(MiB)) if growth is not None else "",
                "%.1f" % (alloc / float(MiB)) if alloc is not None else ""))
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--sizes", default="16G,1T,4T,64T")
    parser.add_argument("--trials", type=int, default=1)
    parser.add_argument("--work", default=None)
    parser.add_argument("--json", default=os.path.join(HERE, "results", "scale.json"))
    parser.add_argument("--steps", default=",".join(STEPS))
    parser.add_argument("--label", default="", help="free text kept with every row (e.g. which code was measured)")
    parser.add_argument("--alternate", type=int, default=0, metavar="N",
                        help="only the incremental: N rounds over the sizes in turn, from a state prepared once per size")
    args = parser.parse_args()
    steps = set(args.steps.split(","))
    rows = []
    # ext4 (this machine's /) refuses files over 16 TiB (EFBIG), so a 64 TiB raw restore needs tmpfs (or XFS/btrfs):
    # the default work directory is under /dev/shm; only the written data takes memory there (about 1.5 GiB at the peak)
    base = args.work or tempfile.mkdtemp(prefix="bench_scale_", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    if args.alternate:
        sizes = args.sizes.split(",")
        runs, ratios = alternate_incremental(sizes, base, args.alternate)
        if args.json:
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
            with open(args.json, "a") as out:
                out.write(json.dumps({"alternate": args.alternate, "label": args.label, "runs": runs, "ratios": ratios,
                                      "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n")
        if not args.work:
            shutil.rmtree(base, ignore_errors=True)
        print(alternate_table(sizes, runs, ratios))
        return
    for text in args.sizes.split(","):
        size = parse_size(text)
        runs = []
        for index in range(args.trials):
            work = os.path.join(base, "%s_%d" % (text, index))
            shutil.rmtree(work, ignore_errors=True)
            os.makedirs(work)
            try:
                runs.append(trial(size, work, steps))
            finally:
                shutil.rmtree(work, ignore_errors=True)
        row = {"virtual_size": size, "trials": args.trials, "label": args.label, "load_1min": os.getloadavg()[0],
               "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "medians": medians(runs), "runs": runs}
        rows.append(row)
        print(json.dumps({"virtual_size": size, "medians": row["medians"]}), flush=True)
        if args.json:
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
            with open(args.json, "a") as out:
                out.write(json.dumps(row) + "\n")
    if not args.work:
        shutil.rmtree(base, ignore_errors=True)
    print(table(rows))


if __name__ == "__main__":
    main()
