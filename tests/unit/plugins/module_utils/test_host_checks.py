"""VSS ensure flow and pre-flight checks against an in-memory host."""
import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import host_checks as hc

from fake_host_session import FakeHostSession, make_vm


def by_check(checks, name, vm=None):
    found = [c for c in checks if c["check"] == name and c["vm"] == vm]
    assert len(found) == 1, checks
    return found[0]


def test_starts_vss_once_then_not_changed():
    session = FakeHostSession(vms=[make_vm("web01")])
    first = hc.ensure_vss_ready(session)
    assert first["changed"] and first["would_start"] and first["vss_service"]["status"] == "Running"
    assert first["vss_service"]["previous_status"] == "Stopped" and first["problems"] == []
    second = hc.ensure_vss_ready(session)
    assert not second["changed"] and not second["would_start"]
    assert [c[0] for c in session.calls].count("start_service") == 1


def test_check_mode_starts_nothing():
    session = FakeHostSession(vms=[make_vm("web01")])
    result = hc.ensure_vss_ready(session, check_mode=True)
    assert result["changed"] and result["would_start"] and session.vss_status == "Stopped"
    assert "start_service" not in [c[0] for c in session.calls]
    assert "would be started" in by_check(result["preflight"], "vss_service")["message"]
    assert result["problems"] == []


def test_service_that_will_not_start_raises():
    session = FakeHostSession(vms=[make_vm("web01")])
    session.faults["start_service"] = ("service", "Cannot start service vss")
    with pytest.raises(HostOperationError) as caught:
        hc.ensure_vss_ready(session)
    assert caught.value.category == "service"


def test_failed_writer_is_a_blocking_problem():
    session = FakeHostSession(vms=[make_vm("web01")], vss_status="Running", writer_state="[8] Failed")
    result = hc.ensure_vss_ready(session)
    check = by_check(result["preflight"], "vss_writer")
    assert not check["ok"] and check["blocking"] and "vmms" in check["message"]
    assert result["problems"] == [check["message"]]


def test_missing_integration_names_vm_and_what_to_do():
    session = FakeHostSession(vms=[make_vm("web01"), make_vm("db01", vss=None)], vss_status="Running")
    result = hc.ensure_vss_ready(session)
    assert len(result["problems"]) == 1
    assert "VM db01 has no backup integration service" in result["problems"][0]
    assert "integration services in the guest" in result["problems"][0]


def test_disabled_integration_enabled_on_request_only():
    session = FakeHostSession(vms=[make_vm("web01", vss_enabled=False)], vss_status="Running")
    report = hc.ensure_vss_ready(session)
    assert not report["changed"] and "enable_backup_integration: true" in report["problems"][0]
    dry = hc.ensure_vss_ready(session, enable_backup_integration=True, check_mode=True)
    assert dry["changed"] and dry["vms"][0]["would_enable"] and not dry["vms"][0]["enabled_now"]
    assert dry["problems"] == [] and "enable_integration_service" not in [c[0] for c in session.calls]
    done = hc.ensure_vss_ready(session, enable_backup_integration=True)
    assert done["changed"] and done["vms"][0]["enabled_now"] and done["problems"] == []
    assert done["vms"][0]["backup_integration"]["enabled"] is True
    again = hc.ensure_vss_ready(session, enable_backup_integration=True)
    assert not again["changed"]


def test_not_answering_matters_only_when_running():
    running = FakeHostSession(vms=[make_vm("web01", vss="NoContact")], vss_status="Running")
    assert "not answering (status NoContact)" in hc.ensure_vss_ready(running)["problems"][0]
    off = FakeHostSession(vms=[make_vm("web01", vss="NoContact", state="Off")], vss_status="Running")
    assert hc.ensure_vss_ready(off)["problems"] == []


def test_scsi_controller_needed_on_2012r2_generation1():
    facts = {"os_build": 9600}
    assert not hc.scsi_controller_check(facts, make_vm("a", generation=1, scsi=0))["ok"]
    assert hc.scsi_controller_check(facts, make_vm("a", generation=1, scsi=1))["ok"]
    assert hc.scsi_controller_check(facts, make_vm("a", generation=2, scsi=0))["ok"]
    assert hc.scsi_controller_check({"os_build": 14393}, make_vm("a", generation=1, scsi=0))["ok"]


def test_advisory_checks_do_not_block():
    facts = {"os_build": 14393, "cluster": {"name": "clu", "functional_level": 8}}
    vm = make_vm("old", config="5.0", clustered=True)
    vm["checkpoints"] = [{"id": "1", "name": "hyperv.backup:run0", "type": "Recovery", "ours": True}]
    checks = hc.vm_checks(facts, vm)
    failing = dict((c["check"], c) for c in checks if not c["ok"])
    assert sorted(failing) == ["cluster_functional_level", "configuration_version", "stray_checkpoints"]
    assert not any(c["blocking"] for c in failing.values())
    assert "hyperv.backup:run0" in failing["stray_checkpoints"]["message"]
    assert "Update-VMVersion" in failing["configuration_version"]["message"]


def test_preflight_shape_and_per_vm_lists():
    session = FakeHostSession(vms=[make_vm("web01"), make_vm("db01")], vss_status="Running")
    result = hc.ensure_vss_ready(session, vm_names=["db01"])
    assert [vm["name"] for vm in result["vms"]] == ["db01"]
    assert all(set(c) == {"check", "vm", "ok", "blocking", "message"} for c in result["preflight"])
    assert {c["check"] for c in result["vms"][0]["preflight"]} == {
        "backup_integration", "scsi_controller", "configuration_version", "cluster_functional_level", "stray_checkpoints"}


def test_host_inventory_combines_facts_rules_queues_and_checks():
    csv = "C:\\ClusterStorage\\Volume1"
    session = FakeHostSession(build=7601, vms=[make_vm("a", config="5.0", csv_path=csv, disk_format="vhd"), make_vm("b")])
    inventory = hc.host_inventory(session)
    assert inventory["host"]["os_build"] == 7601 and inventory["vss_service"]["status"] == "Stopped"
    a, b = inventory["vms"]
    assert a["serialization_key"] == "hv01:csv:" + csv and b["serialization_key"] == "hv01:host"
    assert not a["rct"]["eligible"] and len(a["rct"]["reasons"]) == 3  # build, configuration version, VHD disk
    assert [c["vm"] for c in a["preflight"]] == ["a"] * 5
    assert not any(op in ("start_service", "enable_integration_service") for op, _params in session.calls)
