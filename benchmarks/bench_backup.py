"""Benchmark: hyperv_backup / hyperv_restore against restic and borg on the same mixed 2 GiB image.

Usage:
    source scripts/env.sh
    python benchmarks/bench_backup.py [--size-mib 2048] [--seed 20240901] [--trials 3] [--work DIR]
                                      [--peers restic,borg] [--json OUT.json]
                                      [--chunk-size BYTES] [--skip engine,module] [--settle-seconds 65]

Data (the same for everybody):
  - the image is ``/work/shared/bench/gen_image.py OUT.raw SIZE SEED`` (40 % zeros, 30 % compressible,
    30 % random); peers back up the raw file, we back up a lab VM whose disk is that image as a dynamic VHDX;
  - the 1 % change is 40 x 1 MiB writes at random 4 KiB-aligned offsets (offsets drawn as in
    perf_baseline.sh: numpy default_rng(seed + 100), no two within 1 MiB). The bytes are the lab's churn
    bytes (lab_disks.churn_data), written into our VM by the lab's churn and into the peers' raw file by this
    script, so both see exactly the same change.

Per trial, fresh repositories: full backup, the change, incremental backup, restore of the incremental (restic
restores it a second time with ``--verify``, its own verified restore: ours always verifies). A round's
repositories are kept until the round ends, then deleted, and the next round waits ``--settle-seconds`` (see
``settle``), so that no tool creates its files right after another's mass deletion.
We report two timings: the engine (run_backup / run_restore in this process) and end to end (the Ansible
module run as a process, as Ansible runs it: python hyperv_backup.py args.json), each with its CPU seconds
(user + system, all threads) and the peak RSS of the process; the 1-minute load average is kept with every
trial (the machine may be shared: CPU seconds do not move with the load, wall seconds do). Peers run as in
perf_baseline.sh (restic repository v2 with compression auto; borg default chunker, lz4, -e none). The source
is page-cache warm for everybody (CPU-bound comparison). Medians of ``--trials``; results as JSON lines and a
Markdown table on stdout.
"""
import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from ansible_collections.hyperv.backup.plugins.module_utils.host.disk_access import map_path
from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_admin, lab_disks
from ansible_collections.hyperv.backup.plugins.module_utils.backup.backup_engine import CopyOptions, run_backup
from ansible_collections.hyperv.backup.plugins.module_utils.host.connection import HostSession
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import LabLayout
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository
from ansible_collections.hyperv.backup.plugins.module_utils.backup.restore_engine import run_restore
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vdisk import write_vhdx_from

MiB = 1024 * 1024
GEN_IMAGE = "/work/shared/bench/gen_image.py"
MODULES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "plugins", "modules")
CHURN_SEED = 4242
CHUNK_SIZE = None   # --chunk-size; None: the repository default


def sh(*argv, **kwargs):
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kwargs)


def change_offsets(size_mib, seed):
    """40 offsets (bytes), as perf_baseline.sh draws them."""
    rng = np.random.default_rng(seed + 100)
    nblk = size_mib * 256
    offs = []
    while len(offs) < 40:
        o = int(rng.integers(0, nblk - 256))
        if all(abs(o - p) >= 256 for p in offs):
            offs.append(o)
    return [o * 4096 for o in offs]


CPU_SECONDS = {}     # (tool, step) -> CPU seconds (user + system) of the last child run for that step


def run_child(argv, env=None, cwd=None):
    """(seconds, peak RSS bytes, stdout, CPU seconds user + system) of a child process.

    The child runs under /usr/bin/time (a small parent), so its peak RSS is its own: a child forked from this
    big benchmark process would inherit this process's RSS as its starting maximum. The machine is shared, so
    CPU seconds are the figure that does not depend on the load.
    """
    with tempfile.TemporaryFile() as out, tempfile.NamedTemporaryFile("r") as stats_file:
        start = time.monotonic()
        proc = subprocess.run(["/usr/bin/time", "-f", "STATS %M %U %S", "-o", stats_file.name] + list(argv), stdout=out,
                              stderr=subprocess.DEVNULL, env=env, cwd=cwd, check=False)
        elapsed = time.monotonic() - start
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
        stats = [line.split()[1:] for line in stats_file.read().splitlines() if line.startswith("STATS ")]
    if proc.returncode != 0:
        raise RuntimeError("%s failed (rc %d): %s" % (" ".join(argv[:4]), proc.returncode, text[-3000:]))
    rss, cpu = (int(stats[-1][0]) * 1024, float(stats[-1][1]) + float(stats[-1][2])) if stats else (None, None)
    return elapsed, rss, text, cpu


def module(name, args):
    """Run a module the way Ansible does (a Python process reading its arguments from a JSON file)."""
    handle, path = tempfile.mkstemp(suffix=".json")
    with os.fdopen(handle, "w") as out:
        json.dump({"ANSIBLE_MODULE_ARGS": args}, out)
    try:
        elapsed, rss, out, cpu = run_child([sys.executable, os.path.join(MODULES, name + ".py"), path])
    finally:
        os.unlink(path)
    result = json.loads(out[out.index("{"):])
    if result.get("failed"):
        raise RuntimeError("%s failed: %s" % (name, result.get("msg")))
    result["_cpu_seconds"] = cpu
    return elapsed, rss, result


class Workspace:
    """The image, its VHDX, the change, and the peers' v1/v2 raw files, prepared once."""

    def __init__(self, root, size_mib, seed):
        self.root = root
        self.size_mib = size_mib
        self.raw_v1 = os.path.join(root, "disk_v1.raw")
        self.raw_v2 = os.path.join(root, "disk_v2.raw")
        self.vhdx = os.path.join(root, "disk_v1.vhdx")
        if not os.path.exists(self.raw_v1) or os.path.getsize(self.raw_v1) != size_mib * MiB:
            sh(sys.executable, GEN_IMAGE, self.raw_v1, str(size_mib), str(seed))
        self.offsets = change_offsets(size_mib, seed)
        if not os.path.exists(self.vhdx):
            with open(self.raw_v1, "rb") as src:
                write_vhdx_from(self.vhdx, lambda off, n: os.pread(src.fileno(), n, off), size_mib * MiB)
        if not os.path.exists(self.raw_v2):
            shutil.copyfile(self.raw_v1, self.raw_v2)
            with open(self.raw_v2, "r+b") as out:
                for index, offset in enumerate(self.offsets):
                    os.pwrite(out.fileno(), lab_disks.churn_data(CHURN_SEED, index, MiB), offset)

    def fresh_lab(self, directory):
        layout = LabLayout(directory, "bench")
        lab_admin.ensure_host(layout, era="2019")
        lab_admin.ensure_vm(layout, {"name": "benchvm", "disks": [{"from_file": self.vhdx}]})
        return layout

    def churn(self, layout):
        lab_admin.churn(layout, "benchvm", seed=CHURN_SEED, write_size=MiB, offsets=self.offsets)


def warm(path):
    with open(path, "rb") as handle:
        while handle.read(16 * MiB):
            pass


def du(path):
    return int(sh("du", "-sb", path).stdout.split()[0])


def peak_rss_self():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _chunk_args():
    return {"chunk_size": CHUNK_SIZE} if CHUNK_SIZE else {}


@contextlib.contextmanager
def lab_backup_setup(ws, work):
    """(lab layout, open session, fresh repository, module params) under ``work``, the VM's disks in the page cache.

    bench_floor.py's engine runs use it too, so that both benchmarks time run_backup from the same start.
    """
    lab = os.path.join(work, "lab")
    layout = ws.fresh_lab(lab)
    repo = Repository.init(os.path.join(work, "repo"), **_chunk_args())
    params = dict(transport="lab", host="bench", lab_directory=lab, vm="benchvm")
    with HostSession.from_module_params(params) as session:
        for vm_disk in session.run("get_vms", names=["benchvm"])[0]["disks"]:
            warm(map_path(vm_disk["path"], session.path_map()))     # the host reports Windows paths
        yield layout, session, repo, params


def timed(call, *args, **kwargs):
    """(call's result, wall seconds, CPU seconds of this process and all its threads)."""
    start, cpu = time.monotonic(), time.process_time()
    result = call(*args, **kwargs)
    return result, time.monotonic() - start, time.process_time() - cpu


def trial_engine(ws, work):
    out = {}
    with lab_backup_setup(ws, work) as (layout, session, repo, params):
        full, out["full"], out["full_cpu"] = timed(run_backup, session, repo, params, options=CopyOptions())
        ws.churn(layout)
        incr, out["incr"], out["incr_cpu"] = timed(run_backup, session, repo, params, options=CopyOptions())
    assert incr["type"] == "incremental", incr["type_reason"]
    out["incr_bytes_read"] = incr["bytes_read"]
    out["full_bytes_read"] = full["bytes_read"]
    out["repo_bytes"] = du(os.path.join(work, "repo"))
    for fmt in ("raw", "vhdx"):
        restored, out["restore_" + fmt], out["restore_%s_cpu" % fmt] = timed(
            run_restore, repo, {"vm": "benchvm", "destination": os.path.join(work, "restore_" + fmt), "format": fmt})
    stem = os.path.splitext(os.path.basename(restored["disks"][0]["path"]))[0]
    sh("cmp", os.path.join(work, "restore_raw", stem + ".raw"), ws.raw_v2)     # raises when they differ
    out["restore_verified_cmp"] = True
    return out


def trial_module(ws, work):
    lab = os.path.join(work, "lab")
    layout = ws.fresh_lab(lab)
    repo_path = os.path.join(work, "repo")
    Repository.init(repo_path, **_chunk_args())
    args = dict(transport="lab", host="bench", lab_directory=lab, vm="benchvm", repository=repo_path)
    out = {}
    out["full"], out["full_rss"], full = module("hyperv_backup", args)
    ws.churn(layout)
    out["incr"], out["incr_rss"], incr = module("hyperv_backup", args)
    assert incr["type"] == "incremental"
    out["restore_raw"], out["restore_rss"], restored = module("hyperv_restore", dict(
        repository=repo_path, vm="benchvm", destination=os.path.join(work, "restore"), format="raw"))
    out.update(full_cpu=full["_cpu_seconds"], incr_cpu=incr["_cpu_seconds"], restore_raw_cpu=restored["_cpu_seconds"],
               incr_engine_seconds=incr["duration_seconds"], incr_bytes_read=incr["bytes_read"], repo_bytes=du(repo_path))
    return out


def trial_restic(ws, work):
    env = dict(os.environ, RESTIC_PASSWORD="bench-password", RESTIC_CACHE_DIR=os.path.join(work, "cache"))
    repo = os.path.join(work, "repo")
    src = os.path.join(work, "src")
    os.makedirs(src)
    disk = os.path.join(src, "disk.raw")
    shutil.copyfile(ws.raw_v1, disk)
    warm(disk)
    sh("restic", "init", "-r", repo, "--repository-version", "2", env=env)
    out = {}
    out["full"], out["full_rss"], _o, out["full_cpu"] = run_child(["restic", "-r", repo, "backup", "--host", "bench", disk], env)
    shutil.copyfile(ws.raw_v2, disk)
    warm(disk)
    out["incr"], out["incr_rss"], _o, out["incr_cpu"] = run_child(["restic", "-r", repo, "backup", "--host", "bench", disk], env)
    out["repo_bytes"] = du(repo)
    target = os.path.join(work, "restore")
    out["restore_raw"], out["restore_rss"], _o, out["restore_raw_cpu"] = run_child(
        ["restic", "-r", repo, "restore", "latest", "--target", target], env)
    shutil.rmtree(target)
    # restic's own verified restore: it re-reads what it wrote (through the page cache, no fsync) and checks each
    # blob's hash. Ours fsyncs and re-reads from the device, so this is the closer peer of our restore; the plain
    # restore above stays the reference.
    out["restore_verified"], _rss, _o, out["restore_verified_cpu"] = run_child(
        ["restic", "-r", repo, "restore", "latest", "--verify", "--target", target], env)
    return out


def trial_borg(ws, work):
    env = dict(os.environ, BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes", BORG_RELOCATED_REPO_ACCESS_IS_OK="yes",
               BORG_BASE_DIR=os.path.join(work, "base"))
    repo = os.path.join(work, "repo")
    src = os.path.join(work, "src")
    os.makedirs(src)
    disk = os.path.join(src, "disk.raw")
    shutil.copyfile(ws.raw_v1, disk)
    warm(disk)
    sh("borg", "init", "-e", "none", repo, env=env)
    out = {}
    out["full"], out["full_rss"], _o, out["full_cpu"] = run_child(["borg", "create", repo + "::full", disk], env)
    shutil.copyfile(ws.raw_v2, disk)
    warm(disk)
    out["incr"], out["incr_rss"], _o, out["incr_cpu"] = run_child(["borg", "create", repo + "::incr", disk], env)
    out["repo_bytes"] = du(repo)
    target = os.path.join(work, "restore")
    os.makedirs(target)
    out["restore_raw"], out["restore_rss"], _o, out["restore_raw_cpu"] = run_child(["borg", "extract", repo + "::incr"], env, cwd=target)
    return out


def _medians(runs):
    """Median of every numeric measurement over the trials of one tool."""
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return dict((k, statistics.median(m[k] for m in runs)) for k in keys)


def per_gib(medians, gib):
    """{tool: {step: {cpu_per_gib, cpu_to_wall, speedup_vs_restic}}} from the medians (CPU seconds per GiB of image)."""
    out = {}
    restic = medians.get("restic") or {}
    for name, m in medians.items():
        if not isinstance(m, dict):
            continue
        for step in ("full", "incr", "restore_raw", "restore_vhdx", "restore_verified"):
            wall, cpu = m.get(step), m.get(step + "_cpu")
            if wall is None or cpu is None:
                continue
            out.setdefault(name, {})[step] = {
                "cpu_per_gib": cpu / gib, "cpu_to_wall": cpu / wall if wall else None,
                "restic_wall_ratio": restic[step] / wall if restic.get(step) and wall else None,
                "restic_cpu_ratio": restic[step + "_cpu"] / cpu if restic.get(step + "_cpu") and cpu else None}
            if step == "restore_raw" and name != "restic" and restic.get("restore_verified") and wall:
                out[name][step]["restic_verify_wall_ratio"] = restic["restore_verified"] / wall
                out[name][step]["restic_verify_cpu_ratio"] = restic["restore_verified_cpu"] / cpu if cpu else None
    return out


def print_per_gib(medians, gib):
    """CPU s per GiB of image, CPU-to-wall ratio (cores busy) and restic's time over ours, per step (medians)."""
    print("\n| tool | step | CPU s per GiB | CPU / wall | restic wall / ours | restic CPU / ours | restic --verify wall (CPU) / ours |")
    print("| --- | --- | --- | --- | --- | --- | --- |")

    def fmt(value, pattern):
        return "-" if value is None else pattern % value

    for name, steps in per_gib(medians, gib).items():
        for step, v in steps.items():
            verify = "-"
            if v.get("restic_verify_wall_ratio") is not None:
                verify = "%s (%s)" % (fmt(v["restic_verify_wall_ratio"], "%.2fx"), fmt(v.get("restic_verify_cpu_ratio"), "%.2fx"))
            print("| %s | %s | %s | %s | %s | %s | %s |" % (
                name, step, fmt(v["cpu_per_gib"], "%.2f"), fmt(v["cpu_to_wall"], "%.2f"),
                fmt(v["restic_wall_ratio"], "%.2fx"), fmt(v["restic_cpu_ratio"], "%.2fx"), verify))


def keep_only_repository(work):
    """Remove a finished trial's large files now (a handful of inodes) and keep its repository until the round ends."""
    for entry in os.listdir(work):
        if entry != "repo":
            path = os.path.join(work, entry)
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)


def settle(work_dirs, seconds):
    """Delete the round's repositories, then wait until their freed inodes are no longer "recently deleted".

    Without a journal (this VM's root ext4), ext4 reads the inode-table block of every free inode it considers and
    skips one freed in the last 60 s (300 s more while that block is dirty) before it allocates. Deleting one
    repository of ~2,500 chunk files and creating the next right away doubled the system CPU time of our full backup
    (docs/benchmarks/backup.md, 2026-12-05 evening). About half of that is this inode cost, which only this
    benchmark's delete-and-recreate loop pays, and mostly a store with one file per chunk; the other half is freed
    page-cache memory that this VM reports to its host and faults back in, which no wait inside the guest avoids.
    ``sync`` makes the blocks clean, so the 60 s bound applies.
    """
    removed = False
    for work in work_dirs:
        if os.path.exists(work):
            shutil.rmtree(work)
            removed = True
    if removed and seconds:
        os.sync()
        time.sleep(seconds)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=20240901)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--work", default=None, help="kept between runs (the image is generated once)")
    parser.add_argument("--peers", default="restic,borg")
    parser.add_argument("--skip", default="", help="comma list of: engine,module")
    parser.add_argument("--json", default=None)
    parser.add_argument("--chunk-size", type=int, default=None, help="repository chunk size (default: the repository's)")
    parser.add_argument("--settle-seconds", type=int, default=65,
                        help="wait after deleting a round's repositories before the next round (see settle())")
    args = parser.parse_args()
    global CHUNK_SIZE  # pylint: disable=global-statement
    CHUNK_SIZE = args.chunk_size
    root = args.work or tempfile.mkdtemp(prefix="bench_backup_")
    os.makedirs(root, exist_ok=True)
    ws = Workspace(root, args.size_mib, args.seed)
    runners = [("engine", trial_engine), ("module", trial_module)]
    runners = [r for r in runners if r[0] not in args.skip.split(",")]
    runners += [(p, {"restic": trial_restic, "borg": trial_borg}[p]) for p in args.peers.split(",") if p]
    results = {}
    stale = [os.path.join(root, entry) for entry in os.listdir(root) if entry.startswith("run_")]
    for trial in range(args.trials):
        settle(stale, args.settle_seconds)
        stale = []
        for name, runner in runners:
            work = os.path.join(root, "run_%s_%d" % (name, trial))
            os.makedirs(work)
            load_before = os.getloadavg()[0]     # the machine is shared: keep the load next to every trial
            measured = runner(ws, work)
            measured["load1_before"] = load_before
            measured["load1_after"] = os.getloadavg()[0]
            print(json.dumps({"tool": name, "trial": trial, **measured}), flush=True)
            results.setdefault(name, []).append(measured)
            keep_only_repository(work)
            stale.append(work)
    settle(stale, 0)
    medians = dict((name, _medians(runs)) for name, runs in results.items())
    medians["engine_process_peak_rss"] = peak_rss_self()
    print("\n| tool | full s (CPU s) | incremental s (CPU s) | restore s (CPU s) | repository bytes | peak RSS (full/incr/restore) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, m in medians.items():
        if not isinstance(m, dict):
            continue
        rss = "/".join("%d MiB" % (m[k] // MiB) for k in ("full_rss", "incr_rss", "restore_rss") if k in m) or "-"
        cells = ["%.2f (%.2f)" % (m.get(step, float("nan")), m.get(step + "_cpu", float("nan"))) for step in ("full", "incr", "restore_raw")]
        print("| %s | %s | %s | %s | %s | %s |" % tuple([name] + cells + [m.get("repo_bytes", "-"), rss]))
    print_per_gib(medians, args.size_mib / 1024.0)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)   # benchmarks/results/ is not in git
        with open(args.json, "w") as out:
            json.dump({"size_mib": args.size_mib, "seed": args.seed, "trials": args.trials, "settle_seconds": args.settle_seconds,
                       "medians": medians,
                       "per_gib": per_gib(medians, args.size_mib / 1024.0), "runs": results, "cpus": os.cpu_count(), "load": os.getloadavg()}, out, indent=1)


if __name__ == "__main__":
    main()
