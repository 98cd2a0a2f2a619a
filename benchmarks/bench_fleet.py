"""Benchmark: the hyperv_backup role on a lab fleet, VMs one at a time per host (rounds) against per_host 2 and 4.

Usage:
    source scripts/env.sh
    python benchmarks/bench_fleet.py [--hosts 5] [--vms 10] [--disk-mib 16] [--fill-percent 25] [--per-host 1,2,4]
                                     [--read-rate-mib 4] [--trials 3] [--baseline-role DIR] [--work DIR] [--json OUT]

What runs: ``playbooks/backup.yml`` (the role) with ``ansible-playbook`` against ``--hosts`` lab hosts (era 2022: RCT)
of ``--vms`` VMs each, one dynamic VHDX of ``--disk-mib`` with ``--fill-percent`` written, ``--forks`` = hosts, every
trial into a fresh repository (so every run backs up every VM in full: the same work each time). Configurations:
``per_host=N`` for each of ``--per-host``, and, with ``--baseline-role``, the role as it was before issue 14 (a roles
directory holding that ``hyperv_backup``; the play then names ``hyperv_backup`` from that path), which backs up one VM
per host per round. ``hyperv_backup_max_per_repository`` is set to hosts x the largest per_host so that it never
binds (it would cap every configuration alike).

``--read-rate-mib`` caps each VM's read rate (the module's ``read_rate_limit``): a real backup waits on the host's
disks and the network, not on the proxy's CPU; without a cap (0) a lab VM's backup is pure CPU on this machine, and
with 2 shared cores more parallel jobs cannot make it faster.

Measured per run: wall seconds of ``ansible-playbook``, and CPU seconds (user + system) of its whole process tree,
including the async jobs, which daemonise: this process is made a child subreaper (prctl), so the orphaned job
processes come back to it and their CPU time is counted when they are reaped. The 1-minute load average before and
after each run is kept (the machine is shared: CPU seconds do not move with the load, wall seconds do). Configurations
alternate within a trial; medians over ``--trials``. Results as JSON and a Markdown table on stdout.
"""
import argparse
import ctypes
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import yaml

from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_admin
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import LabLayout

MiB = 1024 * 1024
ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
PR_SET_CHILD_SUBREAPER = 36


def become_subreaper():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed: CPU of the async jobs would not be counted")


def reap_orphans(timeout=60.0):
    """Wait for every process that came back to us (the async job wrappers end shortly after their results are read)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.05)


def build_fleet(work, hosts, vms, disk_mib, fill_percent):
    names = ["bench-hv%02d" % (index + 1) for index in range(hosts)]
    for host_index, host in enumerate(names):
        layout = LabLayout(os.path.join(work, "lab"), host)
        lab_admin.ensure_host(layout, era="2022", services={"vss": "Running"})
        for vm_index in range(vms):
            lab_admin.ensure_vm(layout, {"name": "vm%02d" % (vm_index + 1), "disks": [
                {"size": disk_mib * MiB, "fill": {"seed": 1000 + host_index * 100 + vm_index, "percent": fill_percent}}]})
    return names


def write_inventory(work, names):
    group_vars = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable, "hyperv_backup_proxy": "localhost",
                  "hyperv_connection": {"transport": "lab", "host": "{{ inventory_hostname }}", "lab_directory": os.path.join(work, "lab")},
                  "hyperv_backup_report_directory": os.path.join(work, "reports")}
    path = os.path.join(work, "inventory.yml")
    with open(path, "w") as handle:
        yaml.safe_dump({"all": {"children": {"hyperv_hosts": {"vars": group_vars, "hosts": dict((n, {}) for n in names)}}}}, handle)
    return path


def write_playbook(work, name, role, read_rate):
    play = {"name": "Back up the bench fleet (%s)" % name, "hosts": "hyperv_hosts", "gather_facts": False,
            "module_defaults": {"group/hyperv.backup.hyperv": "{{ hyperv_connection }}",
                                "group/hyperv.backup.repository": "{{ hyperv_repository }}"},
            "roles": [{"role": role}]}
    if read_rate:
        play["module_defaults"]["hyperv.backup.hyperv_backup"] = {"read_rate_limit": read_rate}
    path = os.path.join(work, "%s.yml" % name)
    with open(path, "w") as handle:
        json.dump([play], handle)
    return path


def run_once(work, inventory, playbook, extra, env, forks):
    repository = tempfile.mkdtemp(prefix="repo-", dir=work)
    shutil.rmtree(repository)            # the role creates it (hyperv_backup_create_repository)
    extra = dict(extra, hyperv_repository={"repository": repository})
    cmd = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", inventory, "--forks", str(forks),
           "-e", json.dumps(extra), playbook]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=work, check=False)
    wall = time.monotonic() - started
    reap_orphans()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    shutil.rmtree(repository, ignore_errors=True)
    if proc.returncode != 0:
        raise SystemExit("the run failed (rc %d):\n%s\n%s" % (proc.returncode, proc.stdout[-6000:], proc.stderr[-3000:]))
    return {"wall_seconds": round(wall, 2),
            "cpu_seconds": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 2),
            "load1_before": round(load_before, 2), "load1_after": round(os.getloadavg()[0], 2)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--hosts", type=int, default=5)
    parser.add_argument("--vms", type=int, default=10)
    parser.add_argument("--disk-mib", type=int, default=16)
    parser.add_argument("--fill-percent", type=int, default=25)
    parser.add_argument("--per-host", default="1,2,4")
    parser.add_argument("--read-rate-mib", type=float, default=4.0, help="per-VM read cap in MiB/s (0: none)")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--baseline-role", help="roles directory with the hyperv_backup role from before issue 14")
    parser.add_argument("--work")
    parser.add_argument("--json")
    args = parser.parse_args()

    become_subreaper()
    work = args.work or tempfile.mkdtemp(prefix="bench-fleet-")
    os.makedirs(work, exist_ok=True)
    names = build_fleet(work, args.hosts, args.vms, args.disk_mib, args.fill_percent)
    inventory = write_inventory(work, names)
    read_rate = int(args.read_rate_mib * MiB)
    per_hosts = [int(n) for n in args.per_host.split(",")]
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_HOME=os.path.join(work, "ansible_home"),
               ANSIBLE_ASYNC_DIR=os.path.join(work, "ansible_async"), ANSIBLE_LOCALHOST_WARNING="false")
    common = {"hyperv_backup_max_per_repository": args.hosts * max(per_hosts)}
    configs = []
    if args.baseline_role:
        env["ANSIBLE_ROLES_PATH"] = os.path.abspath(args.baseline_role)
        configs.append(("rounds (role before issue 14)", write_playbook(work, "baseline", "hyperv_backup", read_rate), {}))
    role_playbook = write_playbook(work, "role", "hyperv.backup.hyperv_backup", read_rate)
    configs += [("per_host=%d" % n, role_playbook, {"hyperv_backup_per_host": n}) for n in per_hosts]

    runs = dict((name, []) for name, _p, _e in configs)
    for trial in range(args.trials):
        for name, playbook, extra in configs:
            measured = run_once(work, inventory, playbook, dict(common, **extra), env, args.hosts)
            runs[name].append(measured)
            print("trial %d %-32s %s" % (trial + 1, name, json.dumps(measured)), flush=True)
            write_json(args, runs)          # after every run: a long benchmark stopped early keeps what it measured

    medians = write_json(args, runs)
    print("\n| configuration | wall s (median) | CPU s (median) | loads (1 min, before each run) |")
    print("| --- | ---: | ---: | --- |")
    for name, items in runs.items():
        if not items:
            continue
        print("| %s | %.1f | %.1f | %s |" % (name, medians[name]["wall_seconds"], medians[name]["cpu_seconds"],
                                             ", ".join("%.1f" % m["load1_before"] for m in items)))


def write_json(args, runs):
    """Medians of what has run so far; written to ``--json`` with every run."""
    medians = dict((name, dict((k, statistics.median(m[k] for m in items)) for k in ("wall_seconds", "cpu_seconds")))
                   for name, items in runs.items() if items)
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"hosts": args.hosts, "vms": args.vms, "disk_mib": args.disk_mib, "fill_percent": args.fill_percent,
                       "read_rate_mib": args.read_rate_mib, "trials": args.trials,
                       "cpus": os.cpu_count(), "medians": medians, "runs": runs}, out, indent=1)
    return medians


if __name__ == "__main__":
    main()
