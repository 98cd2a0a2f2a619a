"""hyperv/locks.py, issue 14: the 2008 R2 queue lease is held for one VM, also against the other VMs of the same run.

The role now backs up several VMs of a host at once, all with the same run id (the leases' owner). A queue lease that
any holder with the same owner could re-enter let two VMs of one run share a CSV queue: on two nodes of a cluster (the
key names the CSV, the hosts run in parallel) or if the role ever put them in one wave. The queue names the VM it is
held for; the run's other VMs are refused (busy) until it is handed back, and renewals keep that name."""
import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import locks
from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_admin
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_bridge import LabBridge
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import LabLayout

VM_A = "0f2d3c4b-5a69-4788-9a0b-1c2d3e4f5a6b"
VM_B = "1f2d3c4b-5a69-4788-9a0b-1c2d3e4f5a6b"
KEY = "OLDCLUSTER:csv:C:\\ClusterStorage\\Volume1"


@pytest.fixture()
def bridge(tmp_path):
    layout = LabLayout(str(tmp_path), "hv1")
    lab_admin.ensure_host(layout, era="2008r2")
    return LabBridge(str(tmp_path), "hv1")


def test_two_vms_of_one_run_take_turns_on_a_queue(bridge):
    locks.take_run_leases(bridge, VM_A, "run-1", serialization_key=KEY, seconds=600)
    with pytest.raises(HostOperationError) as busy:
        locks.take_run_leases(bridge, VM_B, "run-1", serialization_key=KEY, seconds=600)
    assert busy.value.category == "busy" and VM_A in str(busy.value), str(busy.value)
    assert locks.vm_lease_holder(bridge, VM_B)["exists"] is False          # B's VM lease was given back
    # the holder itself may come back (the same VM of the same run), and a key-less VM of the run runs at once
    locks.take_run_leases(bridge, VM_A, "run-1", serialization_key=KEY, seconds=600)
    locks.take_run_leases(bridge, VM_B, "run-1", seconds=600)
    locks.release_run_leases(bridge, VM_B, "run-1")
    assert locks.release_run_leases(bridge, VM_A, "run-1") is True
    locks.take_run_leases(bridge, VM_B, "run-1", serialization_key=KEY, seconds=600)      # its turn now


def test_renewals_keep_the_vm_the_queue_is_held_for(bridge):
    locks.take_run_leases(bridge, VM_A, "run-1", serialization_key=KEY, seconds=600)
    renewer = locks.run_renewer(bridge, VM_A, "run-1", interval=3600)
    for lease in renewer.leases:                      # what the renewer thread does every interval
        lease.renew(create=False)
    renewer.stop()
    locks.detach_run_leases(bridge, VM_A, "run-1")   # a point handed back by a later task
    assert renewer.errors == []
    with pytest.raises(HostOperationError) as busy:
        locks.take_run_leases(bridge, VM_B, "run-1", serialization_key=KEY, seconds=600)
    assert busy.value.category == "busy"
