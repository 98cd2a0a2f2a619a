"""Issue 16 point 1: every variable of the three roles takes what an AWX survey or ``-e key=value`` gives.

Each case runs the role with ``ansible-playbook -e name=value`` (a string, as a survey gives it) against a lab host, in
check mode where the role supports it (estimates only: the cheapest run in which the variable still has its effect),
then reads back what the role made of it (its typed settings and, for the backup role, which VMs it backed up and
how). Nonsense is refused before anything runs, with a message naming the variable and what it takes.
"""
import json
import sys
import textwrap

import pytest
import yaml

from workflow_helpers import PLAYBOOKS, run_playbook

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MiB = 1024 * 1024
HOST = "vars-hv2022"
VMS = ["web01", "web02", "db01"]

DUMP = textwrap.dedent("""\
    - name: Write down what the role made of its variables
      hosts: hyperv_hosts
      gather_facts: false
      tasks:
        - name: Save the settings and results
          ansible.builtin.copy:
            content: "{{ {'settings': hyperv_backup_settings, 'results': hyperv_backup_results | default([])} | to_json }}"
            dest: "{{ dump_file }}"
            mode: "0600"
          delegate_to: localhost
          check_mode: false
    """)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """One lab host with three small VMs, its inventory, and one real backup of web01 (for the restore cases)."""
    base = tmp_path_factory.mktemp("role-variables")
    lab_play = base / "lab.yml"
    lab_play.write_text(json.dumps([{"name": "Lab", "hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "Lab host", "hyperv.backup.hyperv_lab": {
            "lab_directory": str(base / "lab"), "host": HOST, "era": "2022", "services": {"vss": "Running"},
            "vms": [{"name": name, "disks": [{"size": 4 * MiB, "fill": {"seed": i, "percent": 10}}]} for i, name in enumerate(VMS)]}}]}]))
    built = run_playbook(lab_play)
    assert built.returncode == 0, built.stdout[-5000:]
    inventory = base / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"hyperv_hosts": {"hosts": {HOST: {}}, "vars": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable, "hyperv_backup_proxy": "localhost",
        "hyperv_restore_proxy": "localhost",
        "hyperv_connection": {"transport": "lab", "host": "{{ inventory_hostname }}", "lab_directory": str(base / "lab")},
        "hyperv_repository": {"repository": str(base / "repository")},
        "hyperv_backup_report_directory": str(base / "reports")}}}}}))
    play = yaml.safe_load((PLAYBOOKS / "backup.yml").read_text())
    play[0]["hosts"] = "hyperv_hosts"
    (base / "backup.yml").write_text(yaml.safe_dump(play))
    (base / "backup_dump.yml").write_text(yaml.safe_dump(play) + DUMP)
    first = run_playbook(base / "backup.yml", "-e", "hyperv_backup_vms=web01", "-e", "hyperv_backup_run_id=seed", inventory=inventory)
    assert first.returncode == 0, first.stdout[-8000:]
    return base


def _backup(lab, *pairs, check=True):  # pylint: disable=redefined-outer-name  # lab is a pytest fixture
    dump = lab / "dump.json"
    if dump.exists():
        dump.unlink()
    args = (["--check"] if check else []) + ["-e", "dump_file=%s" % dump]
    for pair in pairs:
        args += ["-e", pair]
    proc = run_playbook(lab / "backup_dump.yml", *args, inventory=lab / "inventory.yml")
    return proc, (json.loads(dump.read_text()) if dump.exists() else None)


# (the -e pair as a survey gives it, the typed setting it must become, the VMs the run must back up or estimate)
BACKUP_CASES = {
    "vms one name": ("hyperv_backup_vms=web01", ("vms", ["web01"]), {"web01"}),
    "vms comma-separated": ("hyperv_backup_vms=web01,web02", ("vms", ["web01", "web02"]), {"web01", "web02"}),
    "vms JSON list": ('hyperv_backup_vms=["db01"]', ("vms", ["db01"]), {"db01"}),
    "exclude one name": ("hyperv_backup_exclude=db01", ("exclude", ["db01"]), {"web01", "web02"}),
    "exclude comma-separated": ("hyperv_backup_exclude=db01,web0?", ("exclude", ["db01", "web0?"]), set()),
    "per_host": ("hyperv_backup_per_host=2", ("per_host", 2), {"web01"}),
    "max_per_repository": ("hyperv_backup_max_per_repository=2", ("max_per_repository", 2), {"web01"}),
    "keep_reference_points": ("hyperv_backup_keep_reference_points=3", ("keep_reference_points", 3), {"web01"}),
    "window_minutes": ("hyperv_backup_window_minutes=30", ("window_minutes", 30), {"web01"}),
    "window_end": ("hyperv_backup_window_end=2999-01-01T00:00:00Z", ("window_end", "2999-01-01T00:00:00Z"), {"web01"}),
    "enable_backup_integration": ("hyperv_backup_enable_backup_integration=yes", ("enable_backup_integration", True), {"web01"}),
    "create_repository": ("hyperv_backup_create_repository=false", ("create_repository", False), {"web01"}),
    "fail_on_problems": ("hyperv_backup_fail_on_problems=False", ("fail_on_problems", False), {"web01"}),
    "retention JSON": ('hyperv_backup_retention={"keep_last":"3","keep_daily":7}', ("retention", {"keep_last": 3, "keep_daily": 7}), {"web01"}),
    "retention key=value": ("hyperv_backup_retention=keep_last=2", ("retention", {"keep_last": 2}), {"web01"}),
    "method": ("hyperv_backup_method=rct", ("method", "rct"), {"web01"}),
    "consistency": ("hyperv_backup_consistency=application_or_crash", ("consistency", "application_or_crash"), {"web01"}),
    "run_id": ("hyperv_backup_run_id=20261203", ("run_id", "20261203"), {"web01"}),
    "progress_interval": ("hyperv_backup_progress_interval=5", ("progress_interval", 5), {"web01"}),
    "report_title": ("hyperv_backup_report_title=Nightly", ("report_title", "Nightly"), {"web01"}),
    "proxy": ("hyperv_backup_proxy=localhost", ("proxy", "localhost"), {"web01"}),
}


@pytest.mark.parametrize("case", sorted(BACKUP_CASES))
def test_backup_role_takes_survey_strings(lab, case):  # pylint: disable=redefined-outer-name
    pair, (key, expected), vms = BACKUP_CASES[case]
    # one VM unless the case is about choosing VMs: the variable's effect shows as well, at a third of the cost
    selection = pair.startswith(("hyperv_backup_vms=", "hyperv_backup_exclude="))
    proc, dump = _backup(lab, pair) if selection else _backup(lab, "hyperv_backup_vms=web01", pair)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert dump["settings"][key] == expected, dump["settings"]
    assert {r["vm"] for r in dump["results"] if r["status"] == "success"} == vms, dump["results"]
    assert all(r["status"] == "success" for r in dump["results"]), dump["results"]


def test_backup_role_window_end_in_the_past_skips_every_vm(lab):  # pylint: disable=redefined-outer-name
    proc, dump = _backup(lab, "hyperv_backup_window_end=2000-01-01T00:00:00Z", "hyperv_backup_fail_on_problems=false")
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert sorted(r["status"] for r in dump["results"]) == ["skipped"] * 3, dump["results"]


def test_backup_role_named_vm_the_host_lacks_is_one_failure_not_its_letters(lab):  # pylint: disable=redefined-outer-name
    proc, dump = _backup(lab, "hyperv_backup_vms=web01,nosuchvm", "hyperv_backup_fail_on_problems=0")
    assert proc.returncode == 0, proc.stdout[-6000:]
    failed = [r["vm"] for r in dump["results"] if r["status"] == "failed"]
    assert failed == ["nosuchvm"], dump["results"]


# (the -e pair, what the failure must say)
BACKUP_REFUSALS = {
    "window_minutes abc": ("hyperv_backup_window_minutes=abc", "hyperv_backup_window_minutes"),
    "window_minutes -1": ("hyperv_backup_window_minutes=-1", 'hyperv_backup_window_minutes is \\"-1\\": give a whole number of minutes'),
    "per_host 0": ("hyperv_backup_per_host=0", 'hyperv_backup_per_host is \\"0\\": give a whole number of VMs, 1 or more'),
    "max_per_repository 0": ("hyperv_backup_max_per_repository=0", "hyperv_backup_max_per_repository is"),
    "keep_reference_points 0": ("hyperv_backup_keep_reference_points=0", "hyperv_backup_keep_reference_points is"),
    "progress_interval 0": ("hyperv_backup_progress_interval=0", "hyperv_backup_progress_interval is"),
    "progress_interval 1.5": ("hyperv_backup_progress_interval=1.5", "hyperv_backup_progress_interval"),
    "fail_on_problems maybe": ("hyperv_backup_fail_on_problems=maybe", "hyperv_backup_fail_on_problems"),
    "retention unknown key": ('hyperv_backup_retention={"keep_hourly":1}', "hyperv_backup_retention is"),
    "retention negative": ('hyperv_backup_retention={"keep_last":-1}', "hyperv_backup_retention is"),
    "window_end not a time": ("hyperv_backup_window_end=tomorrow", "hyperv_backup_window_end is"),
    "run_id with a slash": ("hyperv_backup_run_id=a/b", "hyperv_backup_run_id is"),
    "vms empty": ("hyperv_backup_vms=,", "hyperv_backup_vms is empty"),
    "method unknown": ("hyperv_backup_method=fast", "hyperv_backup_method"),
}


@pytest.mark.parametrize("case", sorted(BACKUP_REFUSALS))
def test_backup_role_refuses_nonsense_early(lab, case):  # pylint: disable=redefined-outer-name
    pair, message = BACKUP_REFUSALS[case]
    proc, dump = _backup(lab, pair)
    assert proc.returncode != 0 and dump is None, proc.stdout[-4000:]
    assert message in proc.stdout, proc.stdout[-4000:]
    # refused before the role did anything on the host
    assert "Read the host's facts and VMs" not in proc.stdout and "Start the run" not in proc.stdout, proc.stdout[-4000:]


RESTORE_DUMP = textwrap.dedent("""\
    - name: Write down what the role made of its variables
      hosts: hyperv_hosts
      gather_facts: false
      tasks:
        - name: Save the settings and result
          ansible.builtin.copy:
            content: "{{ {'settings': hyperv_restore_settings, 'result': hyperv_restore_result | default({})} | to_json }}"
            dest: "{{ dump_file }}"
            mode: "0600"
          delegate_to: localhost
          check_mode: false
    """)


def _restore(lab, *pairs, check=True):  # pylint: disable=redefined-outer-name
    play = lab / "restore_dump.yml"
    if not play.exists():
        play.write_text((PLAYBOOKS / "restore.yml").read_text() + "\n" + RESTORE_DUMP)
    dump = lab / "restore_dump.json"
    if dump.exists():
        dump.unlink()
    args = (["--check"] if check else []) + ["-e", "dump_file=%s" % dump]
    for pair in pairs:
        args += ["-e", pair]
    proc = run_playbook(play, *args, inventory=lab / "inventory.yml")
    return proc, (json.loads(dump.read_text()) if dump.exists() else None)


# (the -e pairs as a survey gives them, the typed setting, its value); restores of web01 into a proxy directory, in check mode
RESTORE_CASES = {
    "vm": (["hyperv_restore_vm=web01"], "vm", "web01"),
    "backup_id": ([], "backup_id", None),          # the id of the fixture's backup
    "point_in_time": (["hyperv_restore_vm=web01", "hyperv_restore_point_in_time=2999-01-01T00:00:00Z"], "point_in_time", "2999-01-01T00:00:00Z"),
    "source_host": (["hyperv_restore_vm=web01", "hyperv_restore_source_host=" + HOST], "source_host", HOST),
    "format": (["hyperv_restore_vm=web01", "hyperv_restore_format=raw"], "format", "raw"),
    "path_map JSON": (["hyperv_restore_vm=web01", 'hyperv_restore_path_map={"E:":"/mnt/e"}'], "path_map", {"E:": "/mnt/e"}),
    "switch_map key=value": (["hyperv_restore_vm=web01", "hyperv_restore_switch_map=*=Lab"], "switch_map", {"*": "Lab"}),
    "progress_interval": (["hyperv_restore_vm=web01", "hyperv_restore_progress_interval=7"], "progress_interval", 7),
    "proxy": (["hyperv_restore_vm=web01", "hyperv_restore_proxy=localhost"], "proxy", "localhost"),
    "register_as empty": (["hyperv_restore_vm=web01", "hyperv_restore_register_as="], "register_as", ""),
}


@pytest.mark.parametrize("case", sorted(RESTORE_CASES))
def test_restore_role_takes_survey_strings(lab, case):  # pylint: disable=redefined-outer-name
    pairs, key, expected = RESTORE_CASES[case]
    if key == "backup_id":
        expected = _seed_backup_id(lab)
        pairs = ["hyperv_restore_backup_id=" + expected]
    proc, dump = _restore(lab, "hyperv_restore_destination=%s" % (lab / "restored"), *pairs)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert dump["settings"][key] == expected, dump["settings"]
    assert dump["result"].get("planned"), dump["result"]                   # check mode: what would be written
    assert not (lab / "restored").exists()


def test_restore_role_test_flag_as_a_string_runs_a_restore_test(lab):  # pylint: disable=redefined-outer-name
    proc, dump = _restore(lab, "hyperv_restore_vm=web01", "hyperv_restore_test=True",
                          "hyperv_restore_test_directory=%s" % (lab / "scratch"), check=False)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert dump["settings"]["test"] is True and dump["result"]["verified"], dump
    proc, dump = _restore(lab, "hyperv_restore_vm=web01", "hyperv_restore_test=false", "hyperv_restore_destination=%s" % (lab / "r2"))
    assert proc.returncode == 0 and dump["settings"]["test"] is False, proc.stdout[-4000:]


def _seed_backup_id(lab):  # pylint: disable=redefined-outer-name
    report = json.loads((lab / "reports" / "seed.json").read_text())
    return report["vms"][0]["backup_id"]


RESTORE_REFUSALS = {
    "test maybe": (["hyperv_restore_vm=web01", "hyperv_restore_test=maybe"], "hyperv_restore_test"),
    "progress_interval 0": (["hyperv_restore_vm=web01", "hyperv_restore_destination=/tmp/x", "hyperv_restore_progress_interval=0"],
                            "hyperv_restore_progress_interval is"),
    "format qcow2": (["hyperv_restore_vm=web01", "hyperv_restore_destination=/tmp/x", "hyperv_restore_format=qcow2"], "hyperv_restore_format"),
    "no vm": (["hyperv_restore_destination=/tmp/x"], "set hyperv_restore_vm"),
    "no destination": (["hyperv_restore_vm=web01"], "set hyperv_restore_destination"),
    "relative test directory": (["hyperv_restore_vm=web01", "hyperv_restore_test=yes", "hyperv_restore_test_directory=scratch"],
                                "hyperv_restore_test_directory is"),
}


@pytest.mark.parametrize("case", sorted(RESTORE_REFUSALS))
def test_restore_role_refuses_nonsense_early(lab, case):  # pylint: disable=redefined-outer-name
    pairs, message = RESTORE_REFUSALS[case]
    proc, dump = _restore(lab, *pairs)
    assert proc.returncode != 0 and dump is None, proc.stdout[-4000:]
    assert message in proc.stdout, proc.stdout[-4000:]
    assert "Find the backups of the VM" not in proc.stdout, proc.stdout[-4000:]


SCHEDULE_APPLY = textwrap.dedent("""\
    - name: Apply the schedule role
      hosts: localhost
      gather_facts: false
      roles:
        - role: hyperv.backup.hyperv_backup_schedule
    """)


@pytest.fixture()
def schedule(tmp_path):
    (tmp_path / "apply.yml").write_text(SCHEDULE_APPLY)

    def apply(*pairs):
        args = ["-e", "hyperv_backup_schedule_name=hvb-vars", "-e", "hyperv_backup_schedule_root=%s" % (tmp_path / "root"),
                "-e", "hyperv_backup_schedule_manager=systemd", "-e", "hyperv_backup_schedule_playbook=/srv/backup.yml",
                "-e", "hyperv_backup_schedule_inventory=/srv/inventory.yml", "-e", "hyperv_backup_schedule_lock_file=/run/lock/hvb.lock"]
        for pair in pairs:
            args += ["-e", pair]
        proc = run_playbook(tmp_path / "apply.yml", *args)
        units = tmp_path / "root" / "etc" / "systemd" / "system"
        files = {"wrapper": tmp_path / "root" / "usr" / "local" / "libexec" / "hyperv-backup" / "hvb-vars.sh",
                 "timer": units / "hvb-vars.timer", "service": units / "hvb-vars.service"}
        texts = dict((name, path.read_text()) for name, path in files.items() if path.exists())
        texts["enabled"] = str((units / "timers.target.wants" / "hvb-vars.timer").exists())
        return proc, texts
    return apply


# (the -e pair, which installed file, a line it must hold)
SCHEDULE_CASES = {
    "nice": ("hyperv_backup_schedule_nice=5", "wrapper", "nice -n 5 "),
    "timeout_seconds": ("hyperv_backup_schedule_timeout_seconds=600", "wrapper", "timeout --kill-after=300 600 "),
    "timeout_seconds for systemd": ("hyperv_backup_schedule_timeout_seconds=600", "service", "TimeoutStartSec=1200"),
    "randomized_delay_sec": ("hyperv_backup_schedule_randomized_delay_sec=90", "timer", "RandomizedDelaySec=90"),
    "persistent": ("hyperv_backup_schedule_persistent=false", "timer", "Persistent=false"),
    "enable": ("hyperv_backup_schedule_enable=no", "enabled", "False"),
    # a value with a space: -e key=value would split it, so as JSON (a survey's answer is one string either way)
    "extra_args": ('{"hyperv_backup_schedule_extra_args": "--limit=hv01,hv02 --forks=10"}', "wrapper", " --limit=hv01,hv02 --forks=10 /srv/backup.yml"),
    "extra_vars": ('hyperv_backup_schedule_extra_vars={"hyperv_backup_per_host":"2"}', "wrapper", """-e '{"hyperv_backup_per_host": "2"}'"""),
    "environment": ('hyperv_backup_schedule_environment={"HVB_GREETING":"hi"}', "wrapper", "export HVB_GREETING=hi"),
}


@pytest.mark.parametrize("case", sorted(SCHEDULE_CASES))
def test_schedule_role_takes_survey_strings(schedule, case):  # pylint: disable=redefined-outer-name
    pair, name, expected = SCHEDULE_CASES[case]
    proc, texts = schedule(pair)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
    assert expected in texts[name], texts.get(name)


SCHEDULE_REFUSALS = {
    "nice 20": ("hyperv_backup_schedule_nice=20", 'hyperv_backup_schedule_nice is \\"20\\": give a whole number from -20 to 19'),
    "timeout_seconds -5": ("hyperv_backup_schedule_timeout_seconds=-5", "hyperv_backup_schedule_timeout_seconds is"),
    "randomized_delay_sec abc": ("hyperv_backup_schedule_randomized_delay_sec=abc", "hyperv_backup_schedule_randomized_delay_sec"),
    "persistent maybe": ("hyperv_backup_schedule_persistent=maybe", "hyperv_backup_schedule_persistent"),
    "environment bad name": ('hyperv_backup_schedule_environment={"1BAD":"x"}', "not shell identifiers: 1BAD"),
}


@pytest.mark.parametrize("case", sorted(SCHEDULE_REFUSALS))
def test_schedule_role_refuses_nonsense_early(schedule, case):  # pylint: disable=redefined-outer-name
    pair, message = SCHEDULE_REFUSALS[case]
    proc, texts = schedule(pair)
    assert proc.returncode != 0 and "wrapper" not in texts, proc.stdout[-4000:]
    assert message in proc.stdout, proc.stdout[-4000:]
