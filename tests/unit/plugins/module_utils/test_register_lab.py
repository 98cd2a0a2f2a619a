"""Backup -> restore with register against the lab host's WMI emulation (LabBridge), per era.

The session here runs the operations through ``run_operation`` over a LabBridge and exposes its path map, as
HostSession does for transport lab. The configuration is captured with the recovery point, the point is then
converted (RCT) or removed (VSS), and the restore registers the VM from the configuration stored in the backup,
with the disks delivered to a Windows folder of the host (through the lab's path map) and attached by slot.
"""
import os
import random

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.backup.backup_engine import CopyOptions, run_backup
from ansible_collections.hyperv.backup.plugins.module_utils.backup.restore_engine import run_restore
from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError
from ansible_collections.hyperv.backup.plugins.module_utils.host.disk_access import map_path
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv.host_operations import run_operation
from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_admin
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import LabLayout
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vdisk import open_disk

lab_bridge = pytest.importorskip("ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_bridge")

MiB = 1024 * 1024


class BridgeSession:
    def __init__(self, bridge):
        self.bridge = bridge
        self.host = bridge.host
        self.calls = []

    def run(self, operation, **params):
        self.calls.append(operation)
        return run_operation(self.bridge, operation, params)

    def path_map(self):
        return self.bridge.path_map


def _content(bridge, path):
    local = path if os.path.exists(path) else map_path(path, bridge.path_map)
    with open_disk(local) as disk:
        return disk.read(0, disk.virtual_size)


def _setup(tmp_path, era, generation=2, disks=1):
    layout = LabLayout(str(tmp_path / "lab"), "hv-" + era)
    lab_admin.ensure_host(layout, era=era, services={"vss": "Running"})
    lab_admin.ensure_vm(layout, {"name": "vm1", "generation": generation,
                                 "disks": [{"size": 2 * MiB, "fill": {"seed": i + 1, "percent": 60}} for i in range(disks)]})
    bridge = lab_bridge.LabBridge(str(tmp_path / "lab"), "hv-" + era)
    return bridge, BridgeSession(bridge), Repository.init(str(tmp_path / "repo"), chunk_size=64 * 1024)


@pytest.mark.parametrize("era", ["2016", "2022", "2012r2"])
def test_backup_then_register_a_restore_after_the_point_is_gone(tmp_path, era):
    bridge, session, repo = _setup(tmp_path, era)
    before = dict((d["controller_location"], _content(bridge, d["path"]))
                  for d in [v for v in session.run("get_vms") if v["name"] == "vm1"][0]["disks"])
    backup = run_backup(session, repo, {"vm": "vm1"}, options=CopyOptions(path_map=bridge.path_map))
    assert backup["method"] == ("vss" if era == "2012r2" else "rct")
    assert not [p for p in session.run("get_recovery_points", vm_id=backup["vm_id"]) if p["id"] == backup["recovery_point_id"]]
    stored = repo.get_backup(backup["backup_id"]).metadata["configuration"]
    assert stored["files_stored_in"] == "configuration" and stored["files"]
    result = run_restore(repo, {"backup_id": backup["backup_id"], "destination": "C:\\Restores\\vm1", "register": True,
                                "new_name": "vm1-restored", "generate_new_id": True}, session=session)
    assert result["delivery"] == "path_map" and result["registered_vm"]["name"] == "vm1-restored"
    registered = [v for v in session.run("get_vms") if v["name"] == "vm1-restored"][0]
    assert registered["id"] != backup["vm_id"]
    for disk in registered["disks"]:
        assert disk["path"].lower().startswith("c:\\restores\\vm1\\")
        assert _content(bridge, disk["path"]) == before[disk["controller_location"]]


def test_generation_1_disks_return_to_their_ide_and_scsi_slots(tmp_path, monkeypatch):
    bridge, session, repo = _setup(tmp_path, "2022", generation=1, disks=3)
    vm = [v for v in session.run("get_vms") if v["name"] == "vm1"][0]
    before = dict(((d["controller_type"], d["controller_number"], d["controller_location"]), _content(bridge, d["path"]))
                  for d in vm["disks"])
    assert sorted(before) == [("IDE", 0, 0), ("IDE", 0, 1), ("SCSI", 0, 0)]
    backup = run_backup(session, repo, {"vm": "vm1"}, options=CopyOptions(path_map=bridge.path_map))
    real_run = session.run

    def shuffled(operation, **params):      # whatever order the disks arrive in, each goes to its slot
        if operation == "import_vm":
            params["disk_paths"] = list(reversed(params["disk_paths"]))
            random.Random(3).shuffle(params["disk_paths"])
        return real_run(operation, **params)

    monkeypatch.setattr(session, "run", shuffled)
    run_restore(repo, {"backup_id": backup["backup_id"], "host_destination": "C:\\Restores\\g1", "register": True,
                       "new_name": "g1", "generate_new_id": True}, session=session)
    registered = [v for v in real_run("get_vms") if v["name"] == "g1"][0]
    after = dict(((d["controller_type"], d["controller_number"], d["controller_location"]), _content(bridge, d["path"]))
                 for d in registered["disks"])
    assert after == before


def test_2008r2_restores_the_disks_and_fails_with_the_manual_steps(tmp_path):
    bridge, session, repo = _setup(tmp_path, "2008r2")
    backup = run_backup(session, repo, {"vm": "vm1"}, options=CopyOptions(path_map=bridge.path_map))
    assert backup["method"] == "vss"
    with pytest.raises(HostOperationError) as err:
        run_restore(repo, {"backup_id": backup["backup_id"], "destination": "C:\\Restores\\old", "register": True,
                           "format": "vhd"}, session=session)
    assert err.value.category == "unsupported"
    assert "Hyper-V Manager" in str(err.value) and "C:\\Restores\\old\\" in str(err.value)
    restored = [name for name in os.listdir(map_path("C:\\Restores\\old", bridge.path_map)) if name.endswith(".vhd")]
    assert len(restored) == 1
