"""Issue 16 point 4: the module_defaults groups of meta/runtime.yml.

A play written for real hosts sets the connection options once, credentials included, for
``group/hyperv.backup.hyperv``; a lab task in the same play (hyperv_lab takes no credentials) must not get them.
The lab module has its own group, ``group/hyperv.backup.lab``, for its lab_directory and host.
"""
import json
import sys

import pytest
import yaml

from workflow_helpers import ROOT, run_playbook

pytestmark = pytest.mark.integration


REAL_HOST_DEFAULTS = {"transport": "lab", "host": "hv1", "username": "EXAMPLE\\svc-hvbackup", "password": "not-a-real-secret",
                      "auth": "ntlm", "cert_validation": "ignore"}
LAB_VMS = [{"name": "web01", "disks": [{"size": 4 * 1024 * 1024}]}]
CHECKS = {"name": "Check both tasks", "ansible.builtin.assert": {"that": [
    "lab.vms | map(attribute='name') | list == ['web01']", "info.vms | map(attribute='name') | list == ['web01']"]}}


def _run(tmp_path, module_defaults, lab_args):
    play = [{"name": "module_defaults for real hosts, with a lab task", "hosts": "localhost", "gather_facts": False,
             "vars": {"ansible_python_interpreter": sys.executable}, "module_defaults": module_defaults,
             "tasks": [{"name": "Build the lab host", "hyperv.backup.hyperv_lab": lab_args, "register": "lab"},
                       {"name": "Read the host with the connection defaults", "hyperv.backup.hyperv_host_info": {}, "register": "info"},
                       CHECKS]}]
    playbook = tmp_path / "play.yml"
    playbook.write_text(json.dumps(play))
    # no HYPERV_* variables: what the tasks get comes from module_defaults and the task alone
    proc = run_playbook(playbook, env={"HYPERV_LAB_DIRECTORY": "", "HYPERV_TRANSPORT": "", "HYPERV_HOST": ""}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert "Unsupported parameters" not in proc.stdout


def test_lab_task_runs_under_module_defaults_with_credentials(tmp_path):
    """The play's connection defaults carry credentials; the lab task names its own lab directory and host."""
    lab_directory = str(tmp_path / "lab")
    _run(tmp_path, {"group/hyperv.backup.hyperv": dict(REAL_HOST_DEFAULTS, lab_directory=lab_directory)},
         {"lab_directory": lab_directory, "host": "hv1", "vms": LAB_VMS})


def test_lab_group_gives_the_lab_module_its_defaults(tmp_path):
    lab_directory = str(tmp_path / "lab")
    _run(tmp_path, {"group/hyperv.backup.hyperv": dict(REAL_HOST_DEFAULTS, lab_directory=lab_directory),
                    "group/hyperv.backup.lab": {"lab_directory": lab_directory, "host": "hv1"}},
         {"vms": LAB_VMS})


def test_runtime_groups_keep_hyperv_lab_apart():
    groups = yaml.safe_load((ROOT / "meta" / "runtime.yml").read_text())["action_groups"]
    assert "hyperv_lab" not in groups["hyperv"] and groups["lab"] == ["hyperv_lab"]
    assert set(groups["hyperv"]) == {"hyperv_host_info", "hyperv_vss_ensure", "hyperv_recovery_point", "hyperv_backup",
                                     "hyperv_restore"}
