"""Issue 14, VMs in parallel per host: the hyperv_backup role runs up to hyperv_backup_per_host VMs of a host at once.

Three lab hosts, one playbooks/backup.yml run each time, numbers given as -e key=value strings (as AWX surveys and the
command line give them):

* a Windows Server 2022 host (RCT VMs) and a 2012 R2 host (host-VSS VMs): with per_host=4, copies of VMs of the same
  host overlapped in time. The proof is the repository's own times (a backup's ``created`` .. ``completed`` lies inside
  the module run), not the role's, so an overlap there is a real one;
* a 2008 R2 host whose VMs share one CSV without a hardware VSS provider (one serialization key): its VMs never
  overlapped, judged on the role's started/finished, which enclose each module run;
* check mode (no async there) estimates every VM and writes nothing;
* with per_host=2 (an incremental run) no more than 2 copies of one host ever overlapped;
* every VM is in the report as a success, and every backup equals the disk at its recovery point (the frozen guard
  restores each one and compares it with ``qemu-img compare``).

On the role before issue 14 (one VM per host at a time, in rounds) the first check fails: no two copies of one host
overlap.
"""
import datetime
import json
import textwrap

import pytest
import yaml

import frozen_guard
from workflow_helpers import PLAYBOOKS, load_json, run_playbook

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MiB = 1024 * 1024
FLEET = {
    "par-hv2022": {"era": "2022", "vms": ["rct01", "rct02", "rct03", "rct04"]},
    "par-hv2012r2": {"era": "2012r2", "vms": ["vss01", "vss02", "vss03"]},
    "par-hv2008r2": {"era": "2008r2", "csv": "C:\\ClusterStorage\\Volume1", "vms": ["old01", "old02", "old03"]},
}
DISK = {"size": 32 * MiB, "fill": {"seed": 5, "percent": 30}}
# about 10 MiB read per VM at 4 MiB/s: each copy lasts 2-3 s, long enough to overlap with its neighbours' on a busy machine
READ_RATE = 4 * MiB


def _inventory(base):
    group_vars = {"ansible_connection": "local", "hyperv_backup_proxy": "localhost",
                  "hyperv_connection": {"transport": "lab", "host": "{{ inventory_hostname }}", "lab_directory": str(base / "lab")},
                  "hyperv_repository": {"repository": str(base / "repository")},
                  "hyperv_backup_report_directory": str(base / "reports")}
    path = base / "inventory.yml"
    path.write_text(yaml.safe_dump({"all": {"children": {"hyperv_hosts": {"vars": group_vars, "hosts": dict((h, {}) for h in FLEET)}}}}))
    return path


def _lab_play(base, seed):
    tasks = []
    for host, spec in FLEET.items():
        vms = []
        for name in spec["vms"]:
            vm = {"name": name, "disks": [dict(DISK, fill=dict(DISK["fill"], seed=seed))]}
            if spec.get("csv"):
                vm["csv"] = spec["csv"]
            vms.append(vm)
        args = {"lab_directory": str(base / "lab"), "host": host, "era": spec["era"], "services": {"vss": "Running"}, "vms": vms}
        if spec.get("csv"):
            args.update(cluster={"name": "OLDCLUSTER"}, csvs=[spec["csv"]])
        tasks.append({"name": "Lab host %s" % host, "hyperv.backup.hyperv_lab": args})
    path = base / "lab.yml"
    path.write_text(json.dumps([{"name": "Build the fleet", "hosts": "localhost", "gather_facts": False, "tasks": tasks}]))
    proc = run_playbook(path)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]


def _backup_play(base):
    """playbooks/backup.yml's play, with the copies slowed down a little (module_defaults) so that they last."""
    play = yaml.safe_load(PLAYBOOKS.joinpath("backup.yml").read_text())
    play[0]["hosts"] = "hyperv_hosts"
    play[0]["module_defaults"]["hyperv.backup.hyperv_backup"] = {"read_rate_limit": READ_RATE}
    path = base / "backup.yml"
    path.write_text(json.dumps(play))
    return path


def _run(base, run_id, per_host):
    # key=value: every value arrives as a string, as from an AWX survey
    args = ["--forks", "3", "-e", "hyperv_backup_per_host=%d" % per_host, "-e", "hyperv_backup_max_per_repository=12",
            "-e", "hyperv_backup_run_id=%s" % run_id]
    proc = run_playbook(_backup_play(base), *args, inventory=base / "inventory.yml")
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-3000:]
    return load_json(base / "reports" / ("%s.json" % run_id))


def _catalog(base):
    play = base / "catalog.yml"
    play.write_text(textwrap.dedent("""\
        - name: Read the catalogue
          hosts: localhost
          gather_facts: false
          tasks:
            - name: List the backups
              hyperv.backup.hyperv_backup_info:
                repository: "{{ repo }}"
              register: catalog
            - name: Save them
              ansible.builtin.copy:
                content: "{{ catalog.backups | to_json }}"
                dest: "{{ out }}"
                mode: "0600"
        """))
    proc = run_playbook(play, extra_vars={"repo": str(base / "repository"), "out": str(base / "catalog.json")})
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    return load_json(base / "catalog.json")


def _time(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _most_at_once(spans):
    """The largest number of (start, end) spans that cover one instant."""
    edges = sorted([(s, 1) for s, _e in spans] + [(e, -1) for _s, e in spans], key=lambda edge: (edge[0], edge[1]))
    most = current = 0
    for _when, step in edges:
        current += step
        most = max(most, current)
    return most


def _copy_spans(catalog, run_id, host):
    """created .. completed of the run's backups of one host: times the module itself recorded in the repository."""
    return [(_time(b["created"]), _time(b["completed"])) for b in catalog
            if b["host"].lower() == host and (b.get("run_id") or (b.get("metadata") or {}).get("run_id")) == run_id]


def _assert_2008r2_never_overlapped(report):
    spans = sorted((vm["started"], vm["finished"], vm["vm"], vm["serialization_key"])
                   for vm in report["vms"] if vm["host"] == "par-hv2008r2")
    assert len(spans) == 3 and len({key for _s, _e, _v, key in spans}) == 1 and spans[0][3], spans
    for (s1, e1, v1, _k1), (s2, e2, v2, _k2) in zip(spans, spans[1:]):
        assert e1 <= s2, "%s and %s share a serialization key but overlapped: %s-%s and %s-%s" % (v1, v2, s1, e1, s2, e2)


def test_vms_of_one_host_are_backed_up_at_once(tmp_path):
    _lab_play(tmp_path, seed=5)
    _inventory(tmp_path)

    first = _run(tmp_path, "wide", per_host=4)
    assert first["status"] == "successful" and first["summary"]["succeeded"] == 10, first["problems"]
    catalog = _catalog(tmp_path)
    for host in ("par-hv2022", "par-hv2012r2"):
        spans = _copy_spans(catalog, "wide", host)
        assert len(spans) == len(FLEET[host]["vms"]), (host, catalog)
        assert _most_at_once(spans) >= 2, "no two copies of %s overlapped: %s" % (host, sorted(spans))
    assert {vm["method"] for vm in first["vms"] if vm["host"] == "par-hv2012r2"} == {"vss"}
    _assert_2008r2_never_overlapped(first)

    # check mode: ansible-core refuses async there, so the role runs each estimate in the foreground; nothing is written
    estimate = run_playbook(_backup_play(tmp_path), "--check", "-e", "hyperv_backup_per_host=4", "-e", "hyperv_backup_run_id=estimate",
                            inventory=tmp_path / "inventory.yml")
    assert estimate.returncode == 0, estimate.stdout[-8000:] + estimate.stderr[-3000:]
    assert not (tmp_path / "reports" / "estimate.json").exists() and len(_catalog(tmp_path)) == 10

    _lab_play(tmp_path, seed=6)          # new guest data: the next run copies again
    second = _run(tmp_path, "narrow", per_host=2)
    assert second["status"] == "successful" and second["summary"]["succeeded"] == 10, second["problems"]
    catalog = _catalog(tmp_path)
    assert _most_at_once(_copy_spans(catalog, "narrow", "par-hv2022")) <= 2, sorted(_copy_spans(catalog, "narrow", "par-hv2022"))
    _assert_2008r2_never_overlapped(second)

    outcome = frozen_guard.check_directory(tmp_path)
    assert not outcome.problems, "\n".join(outcome.problems)
    backups = {vm["backup_id"] for report in (first, second) for vm in report["vms"]}
    assert sorted(outcome.checked) == sorted(backups), outcome.summary()
