"""Benchmark: write a mixed raw disk image into the repository, next to restic and borg on the same data.

usage: python benchmarks/bench_repository.py [--size-mib 2048] [--trials 3] [--workdir DIR] [--peers restic,borg_fixed4m,borg_default]
                                             [--configs plain,encrypted] [--output docs/benchmarks/repository.md]

Every timed step runs as a child process under ``/usr/bin/time -v`` (wall time, user+system CPU, peak RSS),
with the image page-cache warm, into a fresh repository on the same filesystem; each trial also restores our
backup and compares it with the image. Medians of the trials go into a Markdown table (written to --output
together with the command line) and the raw numbers into benchmarks/results/repository.json.
The image is made by /work/shared/bench/gen_image.py (40 % zeros, 30 % compressible, 30 % random).
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GEN_IMAGE = "/work/shared/bench/gen_image.py"
MiB = 1024 * 1024


# -- the child processes ------------------------------------------------------------------------------

def child_write(repo_path, image_path, passphrase):
    """Back up ``image_path`` as one disk of one VM (what the backup engine does for a full backup)."""
    from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository
    repo = Repository.init(repo_path, passphrase=passphrase or None)
    size = os.path.getsize(image_path)
    chunk = repo.chunk_size
    fd = os.open(image_path, os.O_RDONLY)
    try:
        with repo.begin_backup(vm_id="bench", vm_name="bench", host="bench", method="rct", backup_type="full",
                               consistency="crash") as session:
            disk = session.add_disk(disk_key="disk0", virtual_size=size, source_path=image_path)
            for index in range(disk.chunk_count):
                disk.put_chunk_async(index, os.pread(fd, disk.expected_length(index), index * chunk))
            record = session.commit()
    finally:
        os.close(fd)
    print(json.dumps(record.stats))


def child_restore(repo_path, out_path, passphrase):
    """Restore the backup to a sparse file (compared with the image afterwards, outside the timing)."""
    from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository
    repo = Repository.open(repo_path, passphrase=passphrase or None)
    record = repo.list_backups()[-1]
    reader = repo.open_disk_reader(record.backup_id, "disk0")
    fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, reader.virtual_size)
        for offset, data in reader.iter_chunks():
            os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


# -- measuring --------------------------------------------------------------------------------------

def timed(cmd, env=None, cwd=None):
    """Run ``cmd`` under /usr/bin/time -v; return wall s, cpu s, peak RSS MiB and stdout."""
    report = "/tmp/bench_repository_time.txt"
    load = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", "-o", report] + cmd, env=env, cwd=cwd, capture_output=True, text=True,
                          check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit("command failed (%d): %s\n%s\n%s" % (proc.returncode, " ".join(cmd), proc.stdout, proc.stderr))
    text = open(report).read()
    user = float(re.search(r"User time \(seconds\): ([\d.]+)", text).group(1))
    system = float(re.search(r"System time \(seconds\): ([\d.]+)", text).group(1))
    rss_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    return {"wall": wall, "cpu": user + system, "rss_mib": rss_kib / 1024.0, "stdout": proc.stdout, "load": load}


def du_bytes(path):
    return int(subprocess.run(["du", "-sb", path], capture_output=True, text=True, check=True).stdout.split()[0])


def warm(path):
    with open(path, "rb") as handle:
        while handle.read(16 * MiB):
            pass


def run_ours(workdir, image, config, env):
    repo = os.path.join(workdir, "repo_ours_" + config)
    shutil.rmtree(repo, ignore_errors=True)
    passphrase = "bench-password" if config == "encrypted" else ""
    warm(image)
    subprocess.run(["sync"], check=True)
    write = timed([sys.executable, __file__, "_write", repo, image, passphrase], env=env)
    size = du_bytes(repo)
    restored = os.path.join(workdir, "restore.raw")
    restore = timed([sys.executable, __file__, "_restore", repo, restored, passphrase], env=env)
    identical = subprocess.run(["cmp", "-s", restored, image], check=False).returncode == 0
    os.unlink(restored)
    shutil.rmtree(repo, ignore_errors=True)
    return {"backup": write, "repo_bytes": size, "restore": restore, "restore_identical": identical}


def run_peer(workdir, image, peer):
    src = os.path.join(workdir, "src")
    os.makedirs(src, exist_ok=True)
    link = os.path.join(src, "disk.raw")
    if not os.path.exists(link):
        os.link(image, link)
    repo = os.path.join(workdir, "repo_" + peer)
    shutil.rmtree(repo, ignore_errors=True)
    env = dict(os.environ, RESTIC_PASSWORD="bench-password", BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
               BORG_RELOCATED_REPO_ACCESS_IS_OK="yes", RESTIC_CACHE_DIR=os.path.join(workdir, "restic_cache"),
               BORG_BASE_DIR=os.path.join(workdir, "borgbase_" + peer))
    shutil.rmtree(env["RESTIC_CACHE_DIR"], ignore_errors=True)
    shutil.rmtree(env["BORG_BASE_DIR"], ignore_errors=True)
    if peer == "restic":
        subprocess.run(["restic", "init", "-r", repo, "--repository-version", "2"], env=env, check=True, capture_output=True)
        cmd = ["restic", "-r", repo, "backup", "--host", "bench", link]
    else:
        subprocess.run(["borg", "init", "-e", "none", repo], env=env, check=True, capture_output=True)
        extra = ["--chunker-params", "fixed,4194304"] if peer == "borg_fixed4m" else []
        cmd = ["borg", "create"] + extra + [repo + "::full", link]
    warm(image)
    subprocess.run(["sync"], check=True)
    result = timed(cmd, env=env)
    size = du_bytes(repo)
    shutil.rmtree(repo, ignore_errors=True)
    return {"backup": result, "repo_bytes": size}


def median(values):
    return statistics.median(values)


def table(results, image_bytes):
    rows = ["| tool / config | full backup MB/s (wall s, range) | CPU s | peak RSS MiB | repository MiB | restore MB/s (wall s) "
            "| restore CPU s | restore peak RSS MiB | machine load |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, trials in results.items():
        walls = [t["backup"]["wall"] for t in trials]
        line = "| %s | **%.0f** (%.2f s; %.2f-%.2f) | %.1f | %.0f | %.0f |" % (
            name, image_bytes / median(walls) / 1e6, median(walls), min(walls), max(walls),
            median([t["backup"]["cpu"] for t in trials]), median([t["backup"]["rss_mib"] for t in trials]),
            median([t["repo_bytes"] for t in trials]) / MiB)
        if "restore" in trials[0]:
            rwalls = [t["restore"]["wall"] for t in trials]
            ok = all(t["restore_identical"] for t in trials)
            line += " %.0f (%.2f s)%s | %.1f |" % (
                image_bytes / median(rwalls) / 1e6, median(rwalls), "" if ok else " MISMATCH",
                median([t["restore"]["cpu"] for t in trials]))
            line += " %.0f |" % median([t["restore"]["rss_mib"] for t in trials])
        else:
            line += " - | - | - |"
        line += " %.1f |" % median([t["backup"]["load"] for t in trials])
        rows.append(line)
    return "\n".join(rows)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "_write":
        return child_write(sys.argv[2], sys.argv[3], sys.argv[4])
    if len(sys.argv) > 1 and sys.argv[1] == "_restore":
        return child_restore(sys.argv[2], sys.argv[3], sys.argv[4])
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=20240901)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--workdir", default="/tmp/bench_repository")
    parser.add_argument("--peers", default="restic,borg_fixed4m,borg_default")
    parser.add_argument("--configs", default="plain,encrypted")
    parser.add_argument("--output", default=os.path.join(ROOT, "docs", "benchmarks", "repository.md"))
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    image = os.path.join(args.workdir, "disk_%d.raw" % args.size_mib)
    if not os.path.exists(image) or os.path.getsize(image) != args.size_mib * MiB:
        subprocess.run([sys.executable, GEN_IMAGE, image, str(args.size_mib), str(args.seed)], check=True)
    env = dict(os.environ)
    collections = os.path.join(ROOT, ".build", "collections")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (collections, env.get("PYTHONPATH")) if p)
    results = {}
    for trial in range(args.trials):
        for config in [c for c in args.configs.split(",") if c]:
            name = "hyperv.backup (%s, 4 MiB, blake3, zstd-1)" % ("AES-256-GCM" if config == "encrypted" else "no encryption")
            results.setdefault(name, []).append(run_ours(args.workdir, image, config, env))
            print("trial %d %s: %.2f s" % (trial + 1, name, results[name][-1]["backup"]["wall"]), flush=True)
        for peer in [p for p in args.peers.split(",") if p]:
            name = {"restic": "restic 0.14 (CDC, zstd auto, encrypted)", "borg_fixed4m": "borg 1.2 fixed 4 MiB, lz4, no encryption",
                    "borg_default": "borg 1.2 default (buzhash), lz4, no encryption"}[peer]
            results.setdefault(name, []).append(run_peer(args.workdir, image, peer))
            print("trial %d %s: %.2f s" % (trial + 1, name, results[name][-1]["backup"]["wall"]), flush=True)
    image_bytes = os.path.getsize(image)
    cpu = subprocess.run(["sh", "-c", "lscpu | grep -E 'Model name|^CPU\\(s\\)'"], capture_output=True, text=True, check=False).stdout
    command = "python benchmarks/bench_repository.py " + " ".join(sys.argv[1:])
    body = table(results, image_bytes)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "repository.json"), "w") as handle:
        json.dump({"image_bytes": image_bytes, "results": results}, handle, indent=1, default=str)
    with open(args.output, "w") as handle:
        handle.write(TEMPLATE % {"command": command.strip(), "size": args.size_mib, "trials": args.trials, "table": body,
                                 "cpu": cpu.strip().replace("\n", "; "), "date": time.strftime("%Y-%m-%d")})
    print(body)
    return 0


TEMPLATE = """# Repository write benchmark

Measured %(date)s on the project VM (%(cpu)s), page-cache-warm source, repository on the same ext4 disk.

Command (from the collection root, after `source scripts/env.sh`):

    %(command)s

Image: `gen_image.py disk.raw %(size)d 20240901` (40 %% zeros, 30 %% compressible, 30 %% random).
%(trials)d trials, medians; the range of wall times in brackets. MB/s = image size / wall time.
CPU s = user + system of the whole process (/usr/bin/time -v); peak RSS = its maximum resident set.
"machine load" = 1-minute load average when the backup started (2 vCPUs; other work was running on the
machine, so wall times are noisy: compare CPU seconds first).
"hyperv.backup" is one process: `Repository.init`, one session, `put_chunk_async` of every 4 MiB chunk read with
`os.pread`, `commit` (chunk files fsynced, then manifest, then record). Restore = `iter_chunks` into a sparse file,
fsync (untimed `cmp` with the image afterwards: all identical unless marked MISMATCH). restic and borg were
timed for the backup only (their restores are in /work/shared/reference/perf_baseline.md, section 4).

%(table)s
"""


if __name__ == "__main__":
    sys.exit(main())
