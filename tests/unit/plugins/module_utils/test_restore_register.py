"""Restore with register (issue 11, point 9): the configuration stored with the backup, disks delivered to a HOST
path (path map or SMB upload), import_vm with Windows paths and controller slots."""
import base64
import os

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.backup import restore_engine
from ansible_collections.hyperv.backup.plugins.module_utils.backup.backup_engine import (
    CONFIGURATION_ATTACHMENT, load_configuration, split_configuration,
)
from ansible_collections.hyperv.backup.plugins.module_utils.errors import HyperVBackupError
from ansible_collections.hyperv.backup.plugins.module_utils.host.disk_access import map_path
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import vm_configuration as vmc
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import vm_import
from ansible_collections.hyperv.backup.plugins.module_utils.repository import repository_prune
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vdisk import open_disk

from fake_wmi_bridge import FakeWmiBridge, config_bytes

CHUNK = 64 * 1024
DISKS = [("SCSI", 0, 0, "D:\\VMs\\web01\\system.vhdx"), ("SCSI", 0, 1, "D:\\VMs\\web01\\data.vhdx")]


class FakeSession:
    """A host session whose import_vm is the real one over a FakeWmiBridge; the host's E:\\ is a local directory."""

    def __init__(self, bridge, local_e):
        self.host = bridge.host
        self.bridge = bridge
        self.local_e = local_e
        self.runs = []

    def path_map(self):
        return {"E:\\": self.local_e}

    def run(self, operation, **params):
        self.runs.append((operation, params))
        assert operation == "import_vm"
        for disk in params["disk_paths"]:
            local = map_path(disk["path"], self.path_map())
            with open(local, "rb") as handle:               # what the host sees at that Windows path
                self.bridge.put_file(disk["path"], handle.read(16))
        return vm_import.import_vm(self.bridge, **params)


def _capture(kind, monkeypatch):
    source = FakeWmiBridge("2022")
    vm, vssd = source.add_vm("web01", DISKS)
    if kind == "rct":
        snap = source.add_recovery_snapshot(vm, "hyperv.backup:r1", DISKS)
        configuration = vmc.get_vm_configuration(source, vm["Name"], recovery_point_id=snap["InstanceID"])
        source.convert_to_reference_point(snap)         # the files are gone from the host after the backup
        return configuration
    mount = "C:\\ProgramData\\hyperv.backup\\vss\\w1\\m0"
    source.put_file(mount + "\\VMs\\web01\\" + vssd["ConfigurationFile"], config_bytes("web01", DISKS))
    monkeypatch.setattr(vmc, "_describe_vss_point", lambda b, p: {"mounts": [{"volume": "D:\\", "mount": mount}]})
    return vmc.get_vm_configuration(source, vm["Name"], recovery_point_id="vss:w1:set")


def _backup(repo, configuration, passphrase_note=""):
    """A committed backup of two small disks with the captured configuration stored the way backup_engine does."""
    record_configuration, files = split_configuration(configuration)
    metadata = {"configuration": record_configuration, "note": passphrase_note}
    session = repo.begin_backup("vm-1", "web01", "hv01", "rct", "full", metadata=metadata)
    contents = {}
    with session:
        if files is not None:
            session.attach(CONFIGURATION_ATTACHMENT, files)
        for index, (kind, number, location, path) in enumerate(DISKS):
            key = "%s%d-%d" % (kind.lower(), number, location)
            writer = session.add_disk(key, 2 * CHUNK, source_path=path, metadata={
                "controller_type": kind, "controller_number": number, "controller_location": location,
                "logical_sector_size": 512, "file_name": path.rsplit("\\", 1)[-1]})
            data = bytes([index + 1]) * CHUNK
            writer.put_chunk(0, data)
            writer.put_chunk(1, bytes(CHUNK))
            contents[key] = data + bytes(CHUNK)
        record = session.commit()
    return record, contents


@pytest.fixture
def repo(tmp_path):
    return Repository.init(str(tmp_path / "repo"), passphrase="secret", chunk_size=CHUNK)


def test_the_record_keeps_no_file_content_and_the_backup_object_has_it(repo, monkeypatch):
    configuration = _capture("rct", monkeypatch)
    record, _contents = _backup(repo, configuration)
    stored = repo.get_backup(record.backup_id).metadata["configuration"]
    assert stored["files_stored_in"] == CONFIGURATION_ATTACHMENT
    assert all("content" not in f for f in stored["files"]) and stored["files"][0]["length"] > 0
    loaded = load_configuration(repo, repo.get_backup(record.backup_id))
    assert sorted(f["name"] for f in loaded["files"]) == sorted(f["name"] for f in configuration["files"])
    assert [base64.b64decode(f["content"]) for f in loaded["files"]] == [base64.b64decode(f["content"]) for f in configuration["files"]]
    # encrypted like the rest: the plain configuration text is nowhere in the repository's files
    plain = base64.b64decode([f for f in configuration["files"] if f["name"].endswith(".vmcx")][0]["content"])
    for root, _dirs, names in os.walk(repo.location):
        for name in names:
            with open(os.path.join(root, name), "rb") as handle:
                assert plain[:40] not in handle.read()


def test_prune_deletes_the_configuration_object_with_the_backup(repo, monkeypatch):
    record, _contents = _backup(repo, _capture("rct", monkeypatch))
    assert repo.read_attachment(record.backup_id, CONFIGURATION_ATTACHMENT) is not None
    repository_prune.delete_backup(repo, record)
    assert repo.read_attachment(record.backup_id, CONFIGURATION_ATTACHMENT) is None


@pytest.mark.parametrize("kind", ["rct", "vss"])
def test_register_after_the_point_is_gone_through_the_hosts_path_map(repo, tmp_path, monkeypatch, kind):
    record, contents = _backup(repo, _capture(kind, monkeypatch))
    local_e = tmp_path / "host-E"
    local_e.mkdir()
    target = FakeWmiBridge("2022")
    session = FakeSession(target, str(local_e))
    result = restore_engine.run_restore(repo, {"backup_id": record.backup_id, "host_destination": "E:\\Restore\\web01",
                                               "register": True, "new_name": "web01-restored", "generate_new_id": True},
                                        session=session)
    assert result["delivery"] == "path_map" and result["host_destination"] == "E:\\Restore\\web01"
    for disk in result["disks"]:
        assert disk["path"] == os.path.join(str(local_e), "Restore", "web01", disk["host_path"].rsplit("\\", 1)[-1])
        with open_disk(disk["path"]) as restored:
            assert restored.read(0, restored.virtual_size) == contents[disk["disk_key"]]
    operation, params = session.runs[0]
    assert sorted((d["controller_type"], d["controller_location"], d["path"]) for d in params["disk_paths"]) == [
        ("SCSI", 0, "E:\\Restore\\web01\\system.vhdx"), ("SCSI", 1, "E:\\Restore\\web01\\data.vhdx")]
    vm = result["registered_vm"]
    assert vm["name"] == "web01-restored" and vm["state"] == "Off"
    assert vm["configuration_path"].startswith("E:\\Restore\\web01\\Virtual Machines\\")
    assert sorted((d["controller_location"], d["path"]) for d in vm["disks"]) == [
        (0, "E:\\Restore\\web01\\system.vhdx"), (1, "E:\\Restore\\web01\\data.vhdx")]


def test_a_windows_destination_means_a_host_folder(repo, tmp_path, monkeypatch):
    record, _contents = _backup(repo, _capture("rct", monkeypatch))
    local_e = tmp_path / "host-E"
    local_e.mkdir()
    session = FakeSession(FakeWmiBridge("2022"), str(local_e))
    planned = restore_engine.run_restore(repo, {"backup_id": record.backup_id, "destination": "E:\\Restores\\vm1",
                                                "register": True}, session=session, check_mode=True)
    assert planned["host_destination"] == "E:\\Restores\\vm1" and planned["delivery"] == "path_map"
    assert [p["host_path"] for p in planned["planned"]] == ["E:\\Restores\\vm1\\system.vhdx", "E:\\Restores\\vm1\\data.vhdx"]
    assert not os.path.exists(str(local_e / "Restores")) and not session.runs


class FakeUploader:
    def __init__(self):
        self.uploads = []
        self.remote = set()

    def exists(self, windows_path):
        return windows_path in self.remote

    def upload_file(self, local, windows_path, replace=False):
        assert os.path.getsize(local) > 0
        self.uploads.append((local, windows_path, replace))
        return "\\\\hv01\\E$" + windows_path[2:]


def test_smb_delivery_uploads_verified_files_and_refuses_to_overwrite(repo, tmp_path, monkeypatch):
    record, _contents = _backup(repo, _capture("rct", monkeypatch))
    uploader = FakeUploader()
    params = {"backup_id": record.backup_id, "destination": str(tmp_path / "staging"), "host_destination": "E:\\R",
              "smb_access": True}
    result = restore_engine.run_restore(repo, params, uploader=uploader)
    assert result["delivery"] == "smb" and all(d["verified"] for d in result["disks"])
    assert [u[1] for u in uploader.uploads] == ["E:\\R\\system.vhdx", "E:\\R\\data.vhdx"]
    assert result["disks"][0]["uploaded_to"] == "\\\\hv01\\E$\\R\\system.vhdx"
    uploader.remote.add("E:\\R\\system.vhdx")
    with pytest.raises(HyperVBackupError, match="E:\\\\R\\\\system.vhdx already exists"):
        restore_engine.run_restore(repo, dict(params, destination=str(tmp_path / "staging2")), uploader=uploader)


def test_register_needs_a_host_path(repo, tmp_path, monkeypatch):
    record, _contents = _backup(repo, _capture("rct", monkeypatch))
    with pytest.raises(HyperVBackupError, match="host_destination"):
        restore_engine.run_restore(repo, {"backup_id": record.backup_id, "destination": str(tmp_path / "x"), "register": True},
                                   session=FakeSession(FakeWmiBridge("2022"), str(tmp_path / "host-E")))
    with pytest.raises(HyperVBackupError, match="not reachable"):
        restore_engine.run_restore(repo, {"backup_id": record.backup_id, "host_destination": "F:\\x"})


def test_a_lab_destination_under_the_map_is_registered_at_its_windows_path(repo, tmp_path, monkeypatch):
    record, _contents = _backup(repo, _capture("rct", monkeypatch))
    local_e = tmp_path / "host-E"
    local_e.mkdir()
    session = FakeSession(FakeWmiBridge("2022"), str(local_e))
    result = restore_engine.run_restore(repo, {"backup_id": record.backup_id, "destination": str(local_e / "restored"),
                                               "register": True, "generate_new_id": True}, session=session)
    assert result["host_destination"] == "E:\\restored"
    assert [d["host_path"] for d in result["disks"]] == ["E:\\restored\\system.vhdx", "E:\\restored\\data.vhdx"]
    assert result["registered_vm"]["name"] == "web01"
