"""Lab hosts of the Windows Server 2008 R2 era: VM disks are dynamic .vhd files, checkpoints .avhd children."""
import ntpath
import os
import shutil
import subprocess

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_admin
from ansible_collections.hyperv.backup.plugins.module_utils.errors import HyperVBackupError
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import wmi
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vdisk import disk_info, open_disk
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vhd import VhdImage

from test_lab_helpers import TAG, GuestModel, MiB, build_host, read_all

DISK = 24 * MiB + 512 * 8        # not a multiple of VHD's 2 MiB block
needs_qemu = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed")


def vm_disks(transport, vm_id):
    return transport.run("get_vms", {"ids": [vm_id]})[0]["disks"]


def qemu_reads(path, tmp_path):
    raw = tmp_path / "qemu.raw"
    subprocess.run(["qemu-img", "convert", "-f", "vpc", "-O", "raw", path, str(raw)], check=True)
    return raw.read_bytes()


def test_2008r2_disks_are_dynamic_vhd_and_newer_eras_vhdx(tmp_path):
    _layout, old, old_ids = build_host(tmp_path / "old", era="2008r2", disks=2, size=DISK)
    _layout, new, new_ids = build_host(tmp_path / "new", era="2012r2", size=DISK)
    for disk in vm_disks(old, old_ids["web01"]):
        # v1's Msvm_VirtualHardDiskInfo has no block size and no disk id: the file itself has the 2 MiB blocks, and
        # the id is the stable substitute of issue 11 point 5 (VirtualDiskId is empty before 2012 R2).
        assert (disk["format"], disk["type"], disk["virtual_size"], disk["block_size"]) == ("vhd", "dynamic", DISK, None)
        assert disk_info(old.local(disk["path"]))["block_size"] == 2 * MiB
        assert disk["disk_id"] == wmi.substitute_disk_id(disk["path"])
        assert disk["path"].endswith(".vhd") and disk["windows_path"].endswith(".vhd")
        assert disk["logical_sector_size"] == 512 and os.stat(old.local(disk["path"])).st_mode & 0o077 == 0
        image = VhdImage(old.local(disk["path"]))
        try:
            assert image.unique_id.int != 0 and image.creator == b"win "
        finally:
            image.close()
    disk = vm_disks(new, new_ids["web01"])[0]
    assert (disk["format"], disk["block_size"]) == ("vhdx", 32 * MiB) and disk["path"].endswith(".vhdx")


@needs_qemu
def test_churn_checkpoint_and_merge_on_vhd(tmp_path):
    layout, transport, ids = build_host(tmp_path / "lab", era="2008r2",
                                        vms=({"name": "old01", "disks": [{"size": DISK, "fill": {"seed": 3, "percent": 20}}]},))
    vm_id = ids["old01"]
    base = vm_disks(transport, vm_id)[0]["path"]
    model = GuestModel(DISK)
    model.data[:] = read_all(base, transport)
    assert model.data != bytearray(DISK)                      # the fill wrote real data
    model.apply(lab_admin.churn(layout, "old01", seed=1, writes=12, write_size=12 * 1024))
    assert read_all(base, transport) == bytes(model.data)

    # A host-VSS point is a shadow copy of the volume: the frozen file is the disk under the exposed shadow copy,
    # and the VM keeps writing to its own disk (no checkpoint child).
    point = transport.run("create_recovery_point", {"vm_id": vm_id, "method": "vss", "consistency": "application", "tag": TAG})
    frozen = point["disks"][0]
    assert frozen["format"] == "vhd" and frozen["live_path"] == base and frozen["path"] != base
    assert vm_disks(transport, vm_id)[0]["path"] == base
    at_point = bytes(model.data)
    model.apply(lab_admin.churn(layout, "old01", seed=2, writes=12, write_size=4096))
    assert read_all(frozen["path"], transport) == at_point     # the point in time does not move
    assert read_all(base, transport) == bytes(model.data)
    transport.run("remove_recovery_point", {"vm_id": vm_id, "id": point["id"]})
    assert not os.path.exists(transport.local(frozen["path"]))

    # A checkpoint on 2008 R2: an .avhd child beside the base, merged back when it is removed.
    lab_admin.ensure_vm(layout, {"name": "old01", "checkpoints": ["user"]})
    child = vm_disks(transport, vm_id)[0]
    assert child["path"].endswith(".avhd") and ntpath.dirname(child["path"]) == ntpath.dirname(base)
    assert (child["format"], child["type"], child["parent_chain"]) == ("vhd", "differencing", [base])
    assert disk_info(transport.local(child["path"]))["parent_path"] == transport.local(base)
    at_checkpoint = bytes(model.data)
    model.apply(lab_admin.churn(layout, "old01", seed=3, writes=12, write_size=4096))
    with open_disk(transport.local(child["path"])) as disk:
        assert disk.chain == [transport.local(child["path"]), transport.local(base)] and disk.read(0, DISK) == bytes(model.data)
    assert read_all(base, transport) == at_checkpoint         # the frozen parent is untouched

    assert lab_admin.remove_standard_checkpoint(layout, "old01", "user") is True
    assert not os.path.exists(transport.local(child["path"])) and vm_disks(transport, vm_id)[0]["path"] == base
    assert read_all(base, transport) == bytes(model.data)
    assert qemu_reads(transport.local(base), tmp_path) == bytes(model.data)   # the merged VHD is what qemu reads too


def test_nested_checkpoints_merge_out_of_order(tmp_path):
    """Removing the older checkpoint first defers its merge; the guest's data survives either way."""
    layout, transport, ids = build_host(tmp_path, era="2008r2", size=DISK)
    vm_id = ids["web01"]
    model = GuestModel(DISK).apply(lab_admin.churn(layout, "web01", seed=1, writes=5))
    lab_admin.ensure_vm(layout, {"name": "web01", "checkpoints": ["first"]})
    model.apply(lab_admin.churn(layout, "web01", seed=2, writes=5))
    point = transport.run("create_recovery_point", {"vm_id": vm_id, "method": "vss", "consistency": "application", "tag": TAG})
    at_point = bytes(model.data)
    lab_admin.ensure_vm(layout, {"name": "web01", "checkpoints": ["first", "second"]})
    model.apply(lab_admin.churn(layout, "web01", seed=3, writes=5))
    assert len(vm_disks(transport, vm_id)[0]["parent_chain"]) == 2
    # The host-VSS point froze the chain as it was (the .avhd and its base, under the shadow copy).
    frozen = point["disks"][0]
    assert len(frozen["parent_chain"]) == 1 and read_all(frozen["path"], transport) == at_point
    transport.run("remove_recovery_point", {"vm_id": vm_id, "id": point["id"]})
    # The older checkpoint goes first: its merge waits for the newer one.
    assert lab_admin.remove_standard_checkpoint(layout, "web01", "first") is True
    assert read_all(vm_disks(transport, vm_id)[0]["path"], transport) == bytes(model.data)
    lab_admin.remove_standard_checkpoint(layout, "web01", "second")
    disk = vm_disks(transport, vm_id)[0]
    assert disk["parent_chain"] == [] and disk["path"].endswith("_disk0.vhd")
    assert read_all(disk["path"], transport) == bytes(model.data)
    assert [name for name in os.listdir(os.path.dirname(transport.local(disk["path"]))) if name.endswith(".avhd")] == []


def test_resize_keeps_vhd_and_4k_sectors_are_refused(tmp_path):
    layout, transport, ids = build_host(tmp_path, era="2008r2", size=DISK)
    model = GuestModel(DISK).apply(lab_admin.churn(layout, "web01", seed=9, writes=4))
    assert lab_admin.resize_disk(layout, "web01", size=DISK + 4 * MiB) is True
    disk = vm_disks(transport, ids["web01"])[0]
    assert (disk["format"], disk["virtual_size"], disk["path"].endswith(".vhd")) == ("vhd", DISK + 4 * MiB, True)
    assert read_all(disk["path"], transport) == bytes(model.data) + bytes(4 * MiB)
    with pytest.raises(HyperVBackupError, match="512-byte sectors"):
        lab_admin.ensure_vm(layout, {"name": "big", "disks": [{"size": DISK, "logical_sector_size": 4096}]})


@needs_qemu
def test_fixed_vhd_copied_into_a_2022_host_takes_writes_and_grows_dynamic(tmp_path):
    raw = tmp_path / "fixed.raw"
    raw.write_bytes(b"\x42" * MiB + bytes(3 * MiB))
    image = str(tmp_path / "fixed.vhd")
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed,force_size=on", str(raw), image],
                   check=True)
    layout, transport, ids = build_host(tmp_path / "lab", vms=({"name": "fx", "disks": [{"from_file": image}]},))
    disk = vm_disks(transport, ids["fx"])[0]
    assert (disk["format"], disk["type"], disk["virtual_size"]) == ("vhd", "fixed", 4 * MiB)
    model = GuestModel(4 * MiB)
    model.data[:MiB] = b"\x42" * MiB
    model.apply(lab_admin.churn(layout, "fx", seed=5, writes=8, write_size=8192))
    assert read_all(disk["path"], transport) == bytes(model.data) == qemu_reads(transport.local(disk["path"]), tmp_path)
    # A VHD on 2022: no RCT (not VHDX), so the host-VSS method: a shadow copy, the VM keeps its fixed disk.
    point = transport.run("create_recovery_point", {"vm_id": ids["fx"], "method": "vss", "consistency": "application", "tag": TAG})
    at_point = bytes(model.data)
    assert vm_disks(transport, ids["fx"])[0]["path"] == disk["path"]
    model.apply(lab_admin.churn(layout, "fx", seed=6, writes=8, write_size=4096))
    assert read_all(point["disks"][0]["path"], transport) == at_point
    transport.run("remove_recovery_point", {"vm_id": ids["fx"], "id": point["id"]})
    # A checkpoint of the fixed VHD: an .avhd differencing child, merged back into the fixed file.
    lab_admin.ensure_vm(layout, {"name": "fx", "checkpoints": ["user"]})
    child = vm_disks(transport, ids["fx"])[0]
    assert child["path"].endswith(".avhd") and child["type"] == "differencing"
    model.apply(lab_admin.churn(layout, "fx", seed=7, writes=8, write_size=4096))
    assert lab_admin.remove_standard_checkpoint(layout, "fx", "user") is True
    assert read_all(disk["path"], transport) == bytes(model.data)
    assert lab_admin.resize_disk(layout, "fx", size=6 * MiB) is True
    grown = vm_disks(transport, ids["fx"])[0]
    assert (grown["format"], grown["type"], grown["virtual_size"]) == ("vhd", "dynamic", 6 * MiB)
    assert read_all(grown["path"], transport) == bytes(model.data) + bytes(2 * MiB)
