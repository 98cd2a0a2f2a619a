"""hyperv_host_info, hyperv_vss_ensure and hyperv_recovery_point: argument handling, results and failures.

The host is the in-memory fake of tests/unit/plugins/module_utils/fake_host_session.py; the
integration targets run the same modules against the lab host through ansible-playbook.
"""
import json
import sys
from pathlib import Path

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.hyperv.backup.plugins.modules import hyperv_host_info, hyperv_recovery_point, hyperv_vss_ensure

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "module_utils"))
from fake_host_session import FakeHostSession, make_vm  # noqa: E402  pylint: disable=wrong-import-position

# psrp: the fake host's disk paths are not local files, as with a real Windows host
CONNECTION = {"transport": "psrp", "host": "hv01", "username": "backup", "password": "secret"}


def run_module(module, monkeypatch, capsys, session, **args):
    """Run module.main() with args against ``session``; returns (failed, result)."""
    monkeypatch.setattr(module.HostSession, "from_module_params", classmethod(lambda cls, params: session))
    with patch_module_args(dict(CONNECTION, **args)):
        with pytest.raises(SystemExit) as caught:
            module.main()
    result = json.loads(capsys.readouterr().out)
    return caught.value.code != 0, result


def test_host_info_reports_rct_and_never_changes(monkeypatch, capsys):
    session = FakeHostSession(build=9600, vms=[make_vm("web01", config="5.0")])
    failed, result = run_module(hyperv_host_info, monkeypatch, capsys, session)
    assert not failed and result["changed"] is False
    vm = result["vms"][0]
    assert vm["rct"]["eligible"] is False and "Windows Server 2012 R2" in vm["rct"]["reasons"][0]
    assert vm["serialization_key"] is None and {c["check"] for c in vm["preflight"]} >= {"backup_integration", "scsi_controller"}
    assert [c["check"] for c in result["preflight"]] == ["vss_service", "vss_writer"]


def test_host_info_failure_carries_category(monkeypatch, capsys):
    session = FakeHostSession(vms=[make_vm("web01")])
    failed, result = run_module(hyperv_host_info, monkeypatch, capsys, session, vms=["nope"])
    assert failed and result["category"] == "not_found" and "nope" in result["msg"]


def test_vss_ensure_check_mode_and_real_run(monkeypatch, capsys):
    session = FakeHostSession(vms=[make_vm("web01")])
    failed, result = run_module(hyperv_vss_ensure, monkeypatch, capsys, session, _ansible_check_mode=True)
    assert not failed and result["changed"] and result["would_start"] and session.vss_status == "Stopped"
    failed, result = run_module(hyperv_vss_ensure, monkeypatch, capsys, session)
    assert not failed and result["changed"] and session.vss_status == "Running"


def test_vss_ensure_fails_on_blocking_unless_told_not_to(monkeypatch, capsys):
    session = FakeHostSession(vms=[make_vm("web01", vss=None)], vss_status="Running")
    failed, result = run_module(hyperv_vss_ensure, monkeypatch, capsys, session)
    assert failed and "Host hv01 is not ready for online backups: VM web01 has no backup integration" in result["msg"]
    assert result["preflight"]  # the checks come with the failure
    failed, result = run_module(hyperv_vss_ensure, monkeypatch, capsys, session, fail_on_blocking=False)
    assert not failed and len(result["problems"]) == 1


def test_recovery_point_needs_id_for_absent(monkeypatch, capsys):
    failed, result = run_module(hyperv_recovery_point, monkeypatch, capsys, FakeHostSession(vms=[make_vm("web01")]),
                                vm="web01", state="absent")
    assert failed and "id" in result["msg"]


def test_recovery_point_present_check_mode_creates_nothing(monkeypatch, capsys):
    session = FakeHostSession(vms=[make_vm("web01")])
    failed, result = run_module(hyperv_recovery_point, monkeypatch, capsys, session, vm="web01", previous_method="vss",
                                _ansible_check_mode=True)
    assert not failed and result["changed"] and result["method"] == "vss" and result["recovery_point"] is None
    assert session.points["id-web01"] == []


def test_recovery_point_lifecycle(monkeypatch, capsys):
    session = FakeHostSession(vms=[make_vm("web01")])
    session.consistency = "crash"
    failed, made = run_module(hyperv_recovery_point, monkeypatch, capsys, session, vm="web01", run_id="r1",
                              consistency="application_or_crash")
    assert not failed and made["method"] == "rct" and made["consistency_fallback"] is True
    assert "crash-consistent" in json.dumps(made["warnings"])  # 2.19 may wrap warnings in dicts
    point_id = made["recovery_point"]["id"]
    failed, ref = run_module(hyperv_recovery_point, monkeypatch, capsys, session, vm="web01", state="reference_point", id=point_id)
    assert not failed and ref["changed"] and ref["reference_point"]["rct_ids"]
    failed, gone = run_module(hyperv_recovery_point, monkeypatch, capsys, session, vm="web01", state="absent", id=point_id)
    assert not failed and gone["changed"] is False


def test_recovery_point_cleaned_across_all_vms(monkeypatch, capsys):
    session = FakeHostSession(vms=[make_vm("a"), make_vm("b")])
    for vm_id in ("id-a", "id-b"):
        session.run("create_recovery_point", vm_id=vm_id, method="rct", consistency="application", tag="hyperv.backup:old")
    failed, result = run_module(hyperv_recovery_point, monkeypatch, capsys, session, state="cleaned")
    assert not failed and result["changed"] and sorted(r["vm"] for r in result["stale_removed"]) == ["a", "b"]
    assert session.points == {"id-a": [], "id-b": []}


def test_recovery_point_changes_without_reference_says_full(monkeypatch, capsys):
    session = FakeHostSession(vms=[make_vm("web01")])
    point = session.run("create_recovery_point", vm_id="id-web01", method="rct", consistency="application", tag="hyperv.backup:x")
    failed, result = run_module(hyperv_recovery_point, monkeypatch, capsys, session, vm="web01", state="changes", id=point["id"])
    assert not failed and result["changes_valid"] is False and result["reference_point_id"] is None
    assert "no reference point" in result["disks"][0]["reason"]


def test_previous_method_comes_from_the_repository(monkeypatch, capsys, tmp_path):
    from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository
    repo = Repository.init(str(tmp_path / "repo"), chunk_size=65536)
    with repo.begin_backup("id-web01", "web01", "hv01", "vss", "full") as backup:
        disk = backup.add_disk("disk0", 65536)
        disk.put_chunk(0, b"x" * 65536)
        backup.commit()
    session = FakeHostSession(vms=[make_vm("web01"), make_vm("db01")])
    failed, result = run_module(hyperv_recovery_point, monkeypatch, capsys, session, vm="web01",
                                repository=str(tmp_path / "repo"), _ansible_check_mode=True)
    assert not failed and result["previous_method"] == "vss" and result["method"] == "vss"
    assert "in the repository" in result["previous_method_source"]
    failed, result = run_module(hyperv_recovery_point, monkeypatch, capsys, session, vm="db01",
                                repository=str(tmp_path / "repo"), _ansible_check_mode=True)
    assert not failed and result["previous_method"] is None and result["method"] == "rct" and result["full_required"]
    # the option wins over the repository
    failed, result = run_module(hyperv_recovery_point, monkeypatch, capsys, session, vm="web01", previous_method="rct",
                                repository=str(tmp_path / "repo"), _ansible_check_mode=True)
    assert not failed and result["method"] == "rct" and result["previous_method_source"] == "previous_method option"
