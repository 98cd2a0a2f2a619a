"""The restore engine (restore_engine.py): equal content, verification, no overwrite, no escape, selection."""
import os
import subprocess

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_admin

from ansible_collections.hyperv.backup.plugins.module_utils.backup import restore_engine
from ansible_collections.hyperv.backup.plugins.module_utils.backup.backup_engine import run_backup
from ansible_collections.hyperv.backup.plugins.module_utils.host.connection import HostSession
from ansible_collections.hyperv.backup.plugins.module_utils.host.disk_access import map_path
from ansible_collections.hyperv.backup.plugins.module_utils.errors import HyperVBackupError, RepositoryError
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import LabLayout
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository
from ansible_collections.hyperv.backup.plugins.module_utils.backup.restore_engine import run_restore, safe_target
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vdisk import open_disk

MiB = 1024 * 1024
CHUNK = 64 * 1024


def flat(path):
    with open_disk(path) as disk:
        return disk.read(0, disk.virtual_size)


@pytest.fixture
def backed_up(tmp_path):
    """Two backups of a lab VM (guest writes between them) and the VM's disk content at each."""
    directory = str(tmp_path / "lab")
    layout = LabLayout(directory, "h19")
    lab_admin.ensure_host(layout, era="2019")
    lab_admin.ensure_vm(layout, {"name": "vm", "disks": [{"size": 3 * MiB, "fill": {"seed": 2, "percent": 60}}]})
    repo = Repository.init(str(tmp_path / "repo"), chunk_size=CHUNK)
    params = dict(transport="lab", host="h19", lab_directory=directory, vm="vm")
    states, ids = [], []
    with HostSession.from_module_params(params) as session:
        for seed in (7, 8):
            lab_admin.churn(layout, "vm", seed=seed, writes=3, write_size=8192)
            ids.append(run_backup(session, repo, params)["backup_id"])
            # The host reports Windows paths; the lab's path map gives the file behind one.
            windows_path = session.run("get_vms", names=["vm"])[0]["disks"][0]["path"]
            states.append(flat(map_path(windows_path, session.path_map())))
    return repo, ids, states, tmp_path


@pytest.mark.parametrize("fmt", ["vhdx", "vhd", "raw"])
def test_each_backup_restores_to_the_disk_at_that_point(backed_up, fmt):
    repo, ids, states, tmp_path = backed_up
    assert states[0] != states[1]
    for backup_id, state in zip(ids, states):
        dest = str(tmp_path / ("out-%s-%s" % (fmt, backup_id)))
        result = run_restore(repo, {"backup_id": backup_id, "destination": dest, "format": fmt})
        disk = result["disks"][0]
        assert disk["path"] == os.path.join(dest, "vm_disk0." + fmt) and disk["verified"]
        assert disk["manifest_hash"] == disk["restored_hash"]
        content = flat(disk["path"]) if fmt != "raw" else open(disk["path"], "rb").read()
        assert content == state
        if fmt == "vhd":    # qemu-img, the independent reader, sees the same disk (vpc is its name for VHD)
            oracle = str(tmp_path / ("oracle-%s.raw" % backup_id))
            subprocess.run(["qemu-img", "convert", "-f", "vpc", "-O", "raw", disk["path"], oracle], check=True,
                           capture_output=True)
            with open(oracle, "rb") as handle:
                assert handle.read() == state
        assert not [n for n in os.listdir(dest) if n.endswith(restore_engine.TEMP_SUFFIX)]
    if fmt == "vhdx":       # valid for other tools too
        subprocess.run(["qemu-img", "check", "-f", "vhdx", disk["path"]], check=True, capture_output=True)


def test_latest_and_point_in_time_selection(backed_up):
    repo, ids, _states, _tmp = backed_up
    first, second = [repo.get_backup(i) for i in ids]
    assert restore_engine.select_backup(repo, vm="vm").backup_id == ids[1]
    assert restore_engine.select_backup(repo, vm="vm", point_in_time=first.created.isoformat()).backup_id == ids[0]
    assert restore_engine.select_backup(repo, vm=first.vm_id, point_in_time=second.created.isoformat()).backup_id == ids[1]
    with pytest.raises(RepositoryError, match="at or before 2000-01-01"):
        restore_engine.select_backup(repo, vm="vm", point_in_time="2000-01-01")
    with pytest.raises(RepositoryError, match="not other"):
        restore_engine.select_backup(repo, vm="other", backup_id=ids[0])


def test_existing_files_are_kept_unless_force(backed_up):
    repo, ids, states, tmp_path = backed_up
    dest = tmp_path / "out"
    dest.mkdir()
    existing = dest / "vm_disk0.raw"
    existing.write_bytes(b"precious")
    with pytest.raises(HyperVBackupError, match="force: true"):
        run_restore(repo, {"vm": "vm", "destination": str(dest), "format": "raw"})
    assert existing.read_bytes() == b"precious"
    planned = run_restore(repo, {"vm": "vm", "destination": str(dest), "format": "raw", "force": True}, check_mode=True)
    assert planned["planned"][0]["replaces_existing"] and existing.read_bytes() == b"precious"
    run_restore(repo, {"vm": "vm", "destination": str(dest), "format": "raw", "force": True})
    assert existing.read_bytes() == states[1]


@pytest.mark.parametrize("name", ["../x.vhdx", "a/b.vhdx", "..", "", ".hidden", "x\\..\\y"])
def test_names_that_escape_are_refused(tmp_path, name):
    with pytest.raises(HyperVBackupError, match="not allowed"):
        safe_target(str(tmp_path), name)


def test_a_mismatch_fails_and_removes_the_file(backed_up, monkeypatch):
    repo, ids, _states, tmp_path = backed_up
    real_write = restore_engine._write_raw

    def corrupting_write(path, repo_, manifest, progress, **options):
        real_write(path, repo_, manifest, progress, **options)
        with open(path, "r+b") as handle:       # one flipped byte in the second chunk
            handle.seek(CHUNK + 100)
            byte = handle.read(1)
            handle.seek(CHUNK + 100)
            handle.write(bytes([byte[0] ^ 0xFF]))

    monkeypatch.setattr(restore_engine, "_write_raw", corrupting_write)
    dest = tmp_path / "bad"
    with pytest.raises(HyperVBackupError, match="does not match backup .*first at offset 65536") as err:
        run_restore(repo, {"backup_id": ids[0], "destination": str(dest), "format": "raw"})
    assert err.value.extra["mismatches"][0]["offset"] == CHUNK
    assert os.listdir(str(dest)) == []


def test_register_needs_a_session_and_vhdx(backed_up):
    repo, _ids, _states, tmp_path = backed_up
    with pytest.raises(HyperVBackupError, match="connection options"):
        run_restore(repo, {"vm": "vm", "destination": str(tmp_path / "r"), "register": True})


def test_vhd_output_refuses_4096_byte_sectors(tmp_path):
    class FakeReader:
        virtual_size = 4 * MiB

    with pytest.raises(HyperVBackupError, match="512-byte sectors"):
        restore_engine._write_virtual_disk(str(tmp_path / "x.vhd"), "vhd", FakeReader(), None, 4096)
    assert not (tmp_path / "x.vhd").exists()


# --- issue 12, point 3: disk_names are checked before anything is written ---------------------------------------

@pytest.fixture
def two_disks(tmp_path):
    """One backup of a lab VM with two disks (scsi0-0 vm_disk0, scsi0-1 vm_disk1) and each disk's content."""
    directory = str(tmp_path / "lab")
    layout = LabLayout(directory, "h19")
    lab_admin.ensure_host(layout, era="2019")
    lab_admin.ensure_vm(layout, {"name": "vm", "disks": [{"size": 2 * MiB, "fill": {"seed": 3, "percent": 50}},
                                                         {"size": 2 * MiB, "fill": {"seed": 4, "percent": 50}}]})
    repo = Repository.init(str(tmp_path / "repo"), chunk_size=CHUNK)
    params = dict(transport="lab", host="h19", lab_directory=directory, vm="vm")
    with HostSession.from_module_params(params) as session:
        backup_id = run_backup(session, repo, params)["backup_id"]
        disks = session.run("get_vms", names=["vm"])[0]["disks"]
        states = [flat(map_path(d["path"], session.path_map())) for d in disks]
    record = repo.get_backup(backup_id)
    assert [d["disk_key"] for d in record.disks] == ["scsi0-0", "scsi0-1"]
    return repo, backup_id, states, tmp_path


@pytest.mark.parametrize("names", [{"scsi0-0": "vm_disk1.vhdx"}, {"scsi0-0": "VM_Disk1.raw"},
                                   {"scsi0-0": "same.vhdx", "SCSI 0:1": "SAME.img"}])
def test_two_disks_mapped_to_one_file_are_refused_before_writing(two_disks, names):
    repo, backup_id, _states, tmp_path = two_disks
    dest = tmp_path / "collide"
    with pytest.raises(HyperVBackupError, match="same file") as err:
        run_restore(repo, {"backup_id": backup_id, "destination": str(dest), "format": "raw", "disk_names": names})
    assert "scsi0-0" in str(err.value) and "scsi0-1" in str(err.value) and err.value.hint
    assert not dest.exists() or os.listdir(str(dest)) == []
    with pytest.raises(HyperVBackupError, match="same file"):       # check mode plans nothing impossible either
        run_restore(repo, {"backup_id": backup_id, "destination": str(dest), "format": "raw", "disk_names": names},
                    check_mode=True)


@pytest.mark.parametrize("key", ["scsi0-7", "ide0-0", "vm_disk0", "nonsense"])
def test_a_disk_names_key_that_names_no_disk_is_refused(two_disks, key):
    repo, backup_id, _states, tmp_path = two_disks
    dest = tmp_path / "unknown"
    with pytest.raises(HyperVBackupError, match="names no disk") as err:
        run_restore(repo, {"backup_id": backup_id, "destination": str(dest), "format": "raw", "disk_names": {key: "x.raw"}})
    assert "scsi0-0" in err.value.hint and "scsi0-1" in err.value.hint
    assert not dest.exists() or os.listdir(str(dest)) == []


@pytest.mark.parametrize("key", ["scsi0-1", "SCSI 0:1", "scsi 0:1", "Scsi0-1", " SCSI 0:1 "])
def test_disk_names_accept_the_exclude_disks_spellings(two_disks, key):
    repo, backup_id, states, tmp_path = two_disks
    dest = tmp_path / "spelled"
    result = run_restore(repo, {"backup_id": backup_id, "destination": str(dest), "format": "raw",
                                "disk_names": {key: "data.vhdx"}})
    paths = dict((d["disk_key"], d["path"]) for d in result["disks"])
    assert paths == {"scsi0-0": str(dest / "vm_disk0.raw"), "scsi0-1": str(dest / "data.raw")}
    for key_, state in zip(("scsi0-0", "scsi0-1"), states):
        with open(paths[key_], "rb") as handle:
            assert handle.read() == state


def test_one_disk_named_twice_is_refused(two_disks):
    repo, backup_id, _states, tmp_path = two_disks
    with pytest.raises(HyperVBackupError, match="more than once"):
        run_restore(repo, {"backup_id": backup_id, "destination": str(tmp_path / "twice"), "format": "raw",
                           "disk_names": {"scsi0-1": "a.raw", "SCSI 0:1": "b.raw"}})


def test_swapping_the_default_names_is_allowed(two_disks):
    repo, backup_id, states, tmp_path = two_disks
    dest = tmp_path / "swap"
    result = run_restore(repo, {"backup_id": backup_id, "destination": str(dest), "format": "raw",
                                "disk_names": {"scsi0-0": "vm_disk1.raw", "scsi0-1": "vm_disk0.raw"}})
    assert [d["path"] for d in result["disks"]] == [str(dest / "vm_disk1.raw"), str(dest / "vm_disk0.raw")]
    assert (dest / "vm_disk1.raw").read_bytes() == states[0] and (dest / "vm_disk0.raw").read_bytes() == states[1]


# --- issue 12, point 9: a symlink at the target name is replaced, never followed ---------------------------------

@pytest.mark.parametrize("fmt", ["raw", "vhdx"])
def test_force_replaces_a_symlink_at_the_target_and_keeps_the_file_it_points_to(backed_up, fmt):
    repo, ids, states, tmp_path = backed_up
    dest = tmp_path / "linked"
    dest.mkdir()
    other = dest / "other-vm.vhdx"              # another file of the destination
    other.write_bytes(b"precious")
    os.symlink("other-vm.vhdx", str(dest / ("vm_disk0." + fmt)))
    with pytest.raises(HyperVBackupError, match="force: true"):     # a link is something at the name
        run_restore(repo, {"backup_id": ids[1], "destination": str(dest), "format": fmt})
    result = run_restore(repo, {"backup_id": ids[1], "destination": str(dest), "format": fmt, "force": True})
    target = dest / ("vm_disk0." + fmt)
    assert other.read_bytes() == b"precious"
    assert not os.path.islink(str(target)) and result["disks"][0]["path"] == str(target)
    assert (target.read_bytes() if fmt == "raw" else flat(str(target))) == states[1]
    assert sorted(os.listdir(str(dest))) == sorted(["other-vm.vhdx", target.name])


def test_a_symlink_pointing_outside_is_replaced_not_followed(backed_up):
    repo, ids, states, tmp_path = backed_up
    dest = tmp_path / "linked-out"
    dest.mkdir()
    outside = tmp_path / "outside.raw"
    outside.write_bytes(b"precious")
    os.symlink(str(outside), str(dest / "vm_disk0.raw"))
    run_restore(repo, {"backup_id": ids[1], "destination": str(dest), "format": "raw", "force": True})
    assert outside.read_bytes() == b"precious"
    assert not os.path.islink(str(dest / "vm_disk0.raw")) and (dest / "vm_disk0.raw").read_bytes() == states[1]


def test_a_dangling_symlink_at_the_target_needs_force(backed_up):
    repo, ids, _states, tmp_path = backed_up
    dest = tmp_path / "dangling"
    dest.mkdir()
    os.symlink(str(tmp_path / "nowhere.raw"), str(dest / "vm_disk0.raw"))
    with pytest.raises(HyperVBackupError, match="force: true"):
        run_restore(repo, {"backup_id": ids[1], "destination": str(dest), "format": "raw"})
    assert os.path.islink(str(dest / "vm_disk0.raw")) and not (tmp_path / "nowhere.raw").exists()


@pytest.mark.parametrize("fmt", ["raw", "vhdx", "vhd"])
def test_a_symlink_at_the_temporary_name_is_not_followed(backed_up, fmt):
    repo, ids, states, tmp_path = backed_up
    dest = tmp_path / "planted"
    dest.mkdir()
    outside = tmp_path / "stolen"
    os.symlink(str(outside), str(dest / ("vm_disk0." + fmt + restore_engine.TEMP_SUFFIX)))    # dangling
    result = run_restore(repo, {"backup_id": ids[1], "destination": str(dest), "format": fmt})
    assert not os.path.lexists(str(outside))
    assert result["disks"][0]["verified"] and os.listdir(str(dest)) == ["vm_disk0." + fmt]
    target = str(dest / ("vm_disk0." + fmt))
    assert not os.path.islink(target) and (open(target, "rb").read() if fmt == "raw" else flat(target)) == states[1]


def test_safe_target_does_not_resolve_the_file_name(tmp_path):
    """A link at the name stays the target (replaced later, never followed); only the destination is resolved."""
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(str(real), str(tmp_path / "dest"))
    os.symlink(str(tmp_path / "elsewhere.vhdx"), str(real / "disk.vhdx"))
    assert safe_target(str(tmp_path / "dest"), "disk.vhdx") == os.path.join(os.path.realpath(str(real)), "disk.vhdx")
