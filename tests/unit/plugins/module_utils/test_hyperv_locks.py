"""hyperv/locks.py: leases in files on the host, judged by the host's clock, against the lab host's files."""
import time

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import locks
from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_admin
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_bridge import LabBridge
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_host import LabTransport
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import LabLayout

VM = "0f2d3c4b-5a69-4788-9a0b-1c2d3e4f5a6b"
CSV = "C:\\ClusterStorage\\Volume1"


@pytest.fixture()
def host(tmp_path):
    layout = LabLayout(str(tmp_path), "hv1")
    lab_admin.ensure_host(layout, era="2022")
    return layout, LabBridge(str(tmp_path), "hv1")


def skew_host_clock(layout, seconds):
    doc = layout.read_host()
    doc["clock_offset_seconds"] = seconds
    layout.write_host(doc)


def test_a_lease_is_exclusive_until_released(host):
    _layout, bridge = host
    first = locks.vm_lease(bridge, VM, "run-a", seconds=600)
    assert first.try_acquire() is True
    assert locks.vm_lease(bridge, VM, "run-b", seconds=600).try_acquire() is False
    state = locks.vm_lease_holder(bridge, VM)
    assert state["owner"] == "run-a" and state["live"] is True and state["proxy"]
    assert first.try_acquire() is True                                     # re-entering is fine
    assert locks.vm_lease(bridge, VM, "run-b").release() is False          # only the owner releases
    assert first.release() is True
    assert locks.vm_lease(bridge, VM, "run-b", seconds=600).try_acquire() is True
    path = first.path
    assert path.startswith("C:\\ProgramData\\hyperv.backup\\locks\\") and path.endswith("vm-%s.lease" % VM)


def test_expiry_follows_the_host_clock_and_allows_takeover(host):
    layout, bridge = host
    assert locks.vm_lease(bridge, VM, "dead-run", seconds=60).try_acquire()
    skew_host_clock(layout, 120)                      # the host's time moves past the lease; nobody renewed it
    assert locks.vm_lease_holder(bridge, VM)["live"] is False
    taker = locks.vm_lease(bridge, VM, "new-run", seconds=60)
    assert taker.try_acquire() is True
    assert locks.vm_lease_holder(bridge, VM)["owner"] == "new-run"
    with pytest.raises(HostOperationError) as caught:                       # the old owner learns it lost the lease
        locks.vm_lease(bridge, VM, "dead-run", seconds=60).renew()
    assert caught.value.category == "busy"


@pytest.mark.parametrize("skew", [-3600, 3600])
def test_a_skewed_proxy_clock_does_not_change_expiry(host, skew):
    # The lab host's clock is real time + clock_offset_seconds; this proxy's clock is real time. With the host an
    # hour off, a lease judged by the proxy's clock would look an hour old (or not yet written): it must not.
    layout, bridge = host
    skew_host_clock(layout, skew)
    lease = locks.vm_lease(bridge, VM, "run-a", seconds=60)
    assert lease.try_acquire()
    state = locks.vm_lease_holder(bridge, VM)
    assert state["live"] is True and 0 <= state["age_seconds"] < 30
    assert locks.vm_lease(bridge, VM, "run-b", seconds=60).try_acquire() is False
    skew_host_clock(layout, skew + 120)              # only the host's time passing expires it
    assert locks.vm_lease_holder(bridge, VM)["live"] is False
    assert locks.vm_lease(bridge, VM, "run-b", seconds=60).try_acquire() is True


def test_renewal_keeps_a_lease_alive(host):
    layout, bridge = host
    lease = locks.vm_lease(bridge, VM, "run-a", seconds=60)
    assert lease.try_acquire()
    skew_host_clock(layout, 50)
    lease.renew()                                     # written at host time +50 s
    skew_host_clock(layout, 100)                      # 100 s after the first write, 50 s after the renewal
    assert locks.vm_lease_holder(bridge, VM)["live"] is True
    renewer = locks.Renewer([lease], interval=0.05).start()
    time.sleep(0.3)
    renewer.stop()
    assert renewer.errors == []
    skew_host_clock(layout, 150)
    assert locks.vm_lease_holder(bridge, VM)["live"] is True   # the renewer rewrote it at host time +100 s


def test_acquire_waits_and_then_names_the_holder(host):
    _layout, bridge = host
    assert locks.Lease(bridge, locks.VSS_SET_LOCK_NAME, "set-a", 600).try_acquire()
    waited = []
    with pytest.raises(HostOperationError) as caught:
        locks.Lease(bridge, locks.VSS_SET_LOCK_NAME, "set-b", 600, operation="create_recovery_point").acquire(
            wait_seconds=1, poll_seconds=0.1, sleep=waited.append, clock=iter([0, 0.2, 0.5, 2, 3, 4]).__next__)
    assert caught.value.category == "busy" and "set-a" in str(caught.value) and waited


def test_run_leases_hold_the_2008r2_queue_and_release_together(host):
    _layout, bridge = host
    key = "hv1:csv:C:\\ClusterStorage\\Volume1"
    lease = locks.take_run_leases(bridge, VM, "run-a", serialization_key=key, seconds=600)
    # A CSV queue's lease lives on the CSV itself, where every node of a cluster sees it.
    assert lease.holds == ["C:\\ClusterStorage\\Volume1\\hyperv.backup\\locks\\" + locks.serial_lease_name(key)]
    assert locks.serial_lease_holder(bridge, key)["owner"] == "run-a"
    other_vm = "1f2d3c4b-5a69-4788-9a0b-1c2d3e4f5a6b"
    with pytest.raises(HostOperationError) as caught:        # another VM on the same CSV queue
        locks.take_run_leases(bridge, other_vm, "run-b", serialization_key=key)
    assert caught.value.category == "busy" and caught.value.extra["serialization_key"] == key
    assert locks.vm_lease_holder(bridge, other_vm)["exists"] is False       # its VM lease was given back
    locks.take_run_leases(bridge, other_vm, "run-c")                         # without a key (RCT): runs at once
    assert locks.release_run_leases(bridge, VM, "run-a") is True
    assert locks.serial_lease_holder(bridge, key)["exists"] is False
    locks.take_run_leases(bridge, other_vm, "run-c", serialization_key=key)


def _csv_node(tmp_path, name, hardware=False):
    layout = LabLayout(str(tmp_path), name)
    lab_admin.ensure_host(layout, era="2008r2", cluster={"name": "OLDCLUSTER"}, csvs=[CSV],
                          services={"vss": "Running"}, hardware_vss_provider=hardware)
    lab_admin.ensure_vm(layout, {"name": "vm-" + name, "csv": CSV, "disks": [{"size": 8 * 1024 * 1024}]})
    return LabTransport(str(tmp_path), name)


def _create_on(transport, name):
    from ansible_collections.hyperv.backup.plugins.module_utils.hyperv.method_choice import parallel_safety
    host = transport.run("get_host_info")
    vm = transport.run("get_vms", {"names": ["vm-" + name]})[0]
    key = parallel_safety(host, [vm])[vm["id"]]["serialization_key"]
    point = transport.run("create_recovery_point", {"vm_id": vm["id"], "method": "vss", "consistency": "application_or_crash",
                                                    "tag": "hyperv.backup:run-" + name, "serialization_key": key})
    return vm, key, point


def test_2008r2_csv_vms_are_backed_up_one_at_a_time_across_the_cluster(tmp_path):
    # Two nodes of one 2008 R2 cluster, each with a VM on the same CSV: the queue lease lives on the CSV, which
    # both nodes see, so the second node's VM waits for the first (the CSV is redirected during a snapshot).
    node_a, node_b = _csv_node(tmp_path, "node-a"), _csv_node(tmp_path, "node-b")
    vm_a, key, point_a = _create_on(node_a, "node-a")
    assert key == "OLDCLUSTER:csv:" + CSV
    assert locks.serial_lease_holder(node_b.bridge, key)["owner"] == "run-node-a"   # seen from the other node
    with pytest.raises(HostOperationError) as busy:
        _create_on(node_b, "node-b")
    assert busy.value.category == "busy" and "queue" in busy.value.problem
    node_a.run("remove_recovery_point", {"vm_id": vm_a["id"], "id": point_a["id"]})
    vm_b, _key, point_b = _create_on(node_b, "node-b")
    node_b.run("remove_recovery_point", {"vm_id": vm_b["id"], "id": point_b["id"]})


def test_a_hardware_provider_lifts_the_2008r2_csv_queue(tmp_path):
    node_a, node_b = _csv_node(tmp_path, "node-a", hardware=True), _csv_node(tmp_path, "node-b", hardware=True)
    _vm_a, key_a, _point_a = _create_on(node_a, "node-a")
    _vm_b, key_b, _point_b = _create_on(node_b, "node-b")
    assert key_a is None and key_b is None
