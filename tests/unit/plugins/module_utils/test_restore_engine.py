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


def test_a_symlink_escape_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(str(outside / "target.vhdx"), str(dest / "disk.vhdx"))
    with pytest.raises(HyperVBackupError, match="escape"):
        safe_target(str(dest), "disk.vhdx")


def test_a_mismatch_fails_and_removes_the_file(backed_up, monkeypatch):
    repo, ids, _states, tmp_path = backed_up
    real_write = restore_engine._write_raw

    def corrupting_write(path, repo_, manifest, progress):
        real_write(path, repo_, manifest, progress)
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
