"""The hyperv_lab module: one task builds a host with VMs; idempotent; check mode changes nothing; clear failures."""
import os

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.hyperv.backup.plugins.modules import hyperv_lab

from test_lab_helpers import MiB


class ExitJson(Exception):
    pass


class FailJson(Exception):
    pass


def run_module(monkeypatch, args, check_mode=False):
    def exit_json(_self, **result):
        raise ExitJson(result)

    def fail_json(_self, **result):
        raise FailJson(result)

    monkeypatch.setattr(hyperv_lab.AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(hyperv_lab.AnsibleModule, "fail_json", fail_json)
    if check_mode:
        args = dict(args, _ansible_check_mode=True)
    with patch_module_args(args):
        with pytest.raises((ExitJson, FailJson)) as info:
            hyperv_lab.main()
    if isinstance(info.value, FailJson):
        return dict(info.value.args[0], failed=True)
    return info.value.args[0]


FLEET = {"era": "2019", "cluster": {"name": "CL1"}, "csvs": ["C:\\ClusterStorage\\Volume1"],
         "services": {"vss": "Running"},
         "vms": [{"name": "web01", "csv": "C:\\ClusterStorage\\Volume1", "disks": [{"size": 64 * MiB, "fill": {"seed": 1, "percent": 10}}]},
                 {"name": "db01", "generation": 1, "configuration_version": "8.0", "disks": [{"size": 32 * MiB}, {"size": 32 * MiB}],
                  "integration_services": [{"name": "VSS", "operational_status": "NoContact"}]}]}


def test_one_task_builds_a_host_and_is_idempotent(tmp_path, monkeypatch):
    args = dict(FLEET, lab_directory=str(tmp_path), host="hv01")
    planned = run_module(monkeypatch, args, check_mode=True)
    assert planned["changed"] is True and not (tmp_path / "hv01").exists()
    first = run_module(monkeypatch, args)
    assert first["changed"] is True
    assert first["host"]["os_build"] == 17763 and first["host"]["cluster"] == {"name": "CL1", "functional_level": 10}
    web, db = sorted(first["vms"], key=lambda vm: vm["name"], reverse=True)
    assert web["clustered"] is True and web["csv_path"] == "C:\\ClusterStorage\\Volume1"
    assert web["windows_path"] == "C:\\ClusterStorage\\Volume1\\" + web["id"]      # lab VM folders are named by VM id
    assert [d["controller_type"] for d in db["disks"]] == ["IDE", "IDE"] and db["configuration_version"] == "8.0"
    assert [s["operational_status"] for s in db["integration_services"] if s["name"] == "VSS"] == ["NoContact"]
    again = run_module(monkeypatch, args)
    assert again["changed"] is False and again["vms"] == first["vms"]
    assert run_module(monkeypatch, args, check_mode=True)["changed"] is False


def test_changes_churn_and_removal(tmp_path, monkeypatch):
    base = dict(FLEET, lab_directory=str(tmp_path), host="hv01")
    run_module(monkeypatch, base)
    changed = run_module(monkeypatch, {"lab_directory": str(tmp_path), "host": "hv01", "faults": ["rct_invalid"],
                                       "vms": [{"name": "web01", "state": "Off"}]}, check_mode=True)
    assert changed["changed"] is True
    assert [vm["state"] for vm in changed["vms"] if vm["name"] == "web01"] == ["Running"]
    churned = run_module(monkeypatch, {"lab_directory": str(tmp_path), "host": "hv01",
                                       "churn": [{"vm": "web01", "seed": 3, "writes": 4}]})
    assert churned["changed"] is True and len(churned["churned"][0]["writes"]) == 4
    resized = run_module(monkeypatch, {"lab_directory": str(tmp_path), "host": "hv01",
                                       "resize_disk": {"vm": "db01", "disk": 1, "size": 64 * MiB}})
    assert resized["changed"] is True
    assert [vm["disks"][1]["virtual_size"] for vm in resized["vms"] if vm["name"] == "db01"] == [64 * MiB]
    removed = run_module(monkeypatch, {"lab_directory": str(tmp_path), "host": "hv01", "vms": [{"name": "db01", "present": False}]})
    assert removed["changed"] is True and [vm["name"] for vm in removed["vms"]] == ["web01"]
    gone = run_module(monkeypatch, {"lab_directory": str(tmp_path), "host": "hv01", "state": "absent"})
    assert gone["changed"] is True and not os.path.exists(tmp_path / "hv01")
    assert run_module(monkeypatch, {"lab_directory": str(tmp_path), "host": "hv01", "state": "absent"})["changed"] is False


@pytest.mark.parametrize("args,text", [
    ({"faults": ["flaky"]}, "unknown lab host fault"),
    ({"vms": [{"name": "x", "csv": "C:\\ClusterStorage\\Volume9"}]}, "not one of the host's CSVs"),
    ({"era": "2016", "vms": [{"name": "x", "configuration_version": "10.0"}]}, "newer than a 2016 host supports"),
    ({"churn": [{"vm": "ghost"}]}, "no VM named 'ghost'"),
    ({"services": {"spooler": "Running"}}, "no service 'spooler'"),
])
def test_bad_definitions_fail_clearly(tmp_path, monkeypatch, args, text):
    result = run_module(monkeypatch, dict(args, lab_directory=str(tmp_path), host="hv01"))
    assert result["failed"] and text in result["msg"]


def test_lab_directory_and_host_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("HYPERV_LAB_DIRECTORY", str(tmp_path))
    monkeypatch.setenv("HYPERV_HOST", "envhost")
    result = run_module(monkeypatch, {"era": "2016"})
    assert result["changed"] and result["host"]["computer_name"] == "ENVHOST"
