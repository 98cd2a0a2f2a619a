"""The export's parts (export/nbd_plugin.py, export/nbd_export.py) without nbdkit, plus nbdkit's refusals.

The plugin's reads and extents are compared with the repository's DiskReader; the module side's process checks,
state sweeping, disk and name choice, the command line and environment nbdkit gets, and the private copy of the
module_utils from an AnsiballZ-like zip. tests/integration/test_backup_export.py serves real exports.
"""
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import zipfile

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.backup.backup_engine import run_backup
from ansible_collections.hyperv.backup.plugins.module_utils.errors import HyperVBackupError, RepositoryError
from ansible_collections.hyperv.backup.plugins.module_utils.export import nbd_export, nbd_plugin
from ansible_collections.hyperv.backup.plugins.module_utils.host.connection import HostSession
from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_admin
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import LabLayout
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository

MiB = 1024 * 1024
CHUNK = 64 * 1024


@pytest.fixture(scope="module")
def backup(tmp_path_factory):
    """(repo, backup_id) of a two-disk lab VM; half of disk 1 is zeros (filled in 1 MiB pieces), so it has zero chunks."""
    tmp_path = tmp_path_factory.mktemp("export")
    directory = str(tmp_path / "lab")
    layout = LabLayout(directory, "h19")
    lab_admin.ensure_host(layout, era="2019")
    disks = [{"size": 3 * MiB + 4096, "fill": {"seed": 2, "percent": 60}}, {"size": 4 * MiB, "fill": {"seed": 3, "percent": 50}}]
    lab_admin.ensure_vm(layout, {"name": "vm", "disks": disks})
    repo = Repository.init(str(tmp_path / "repo"), chunk_size=CHUNK)
    params = dict(transport="lab", host="h19", lab_directory=directory, vm="vm")
    with HostSession.from_module_params(params) as session:
        backup_id = run_backup(session, repo, params)["backup_id"]
    return repo, backup_id


def test_reads_equal_the_disk_reader_across_chunks_and_at_the_tail(backup):
    repo, backup_id = backup
    disk = nbd_plugin.ExportedDisk(repo, backup_id, "scsi0-0", cached_chunks=3)
    reader = repo.open_disk_reader(backup_id, "scsi0-0")
    assert disk.size == 3 * MiB + 4096 == reader.virtual_size
    whole = reader.read(0, reader.virtual_size)
    rng = random.Random(5)
    for _read in range(200):
        offset = rng.randrange(0, disk.size)
        length = rng.randrange(0, min(disk.size - offset, 3 * CHUNK) + 1)
        assert disk.pread(offset, length) == whole[offset:offset + length]
    assert disk.pread(disk.size - 512, 512) == whole[-512:]        # the last chunk is short (4096 bytes)
    assert len(disk._cache) <= 3
    with pytest.raises(RepositoryError, match="outside disk"):
        disk.pread(disk.size - 100, 200)


def test_extents_mark_exactly_the_zero_chunks_and_merge_runs(backup):
    repo, backup_id = backup
    disk = nbd_plugin.ExportedDisk(repo, backup_id, "scsi0-1")
    runs = disk.extents(0, disk.size)
    assert runs[0][0] == 0 and sum(length for _start, length, _zero in runs) == disk.size
    assert all(a[2] != b[2] for a, b in zip(runs, runs[1:]))          # neighbours differ: merged
    assert any(zero for _s, _l, zero in runs) and any(not zero for _s, _l, zero in runs)
    for start, length, zero in runs:
        for index in range(start // CHUNK, (start + length) // CHUNK):
            assert (disk.manifest.chunk_id(index) is None) == zero
            if zero:
                assert disk.pread(index * CHUNK, CHUNK) == bytes(CHUNK)
    # a request inside one chunk gets one run clipped to it
    assert disk.extents(CHUNK + 10, 100) == [(CHUNK + 10, 100, disk.manifest.chunk_id(1) is None)]


def test_settings_file_is_removed_even_when_unreadable(tmp_path):
    good = tmp_path / "settings.json"
    good.write_text(json.dumps({"passphrase": "x"}))
    assert nbd_plugin.read_settings(str(good)) == {"passphrase": "x"} and not good.exists()
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError):
        nbd_plugin.read_settings(str(bad))
    assert not bad.exists()


def test_module_packages_go_before_the_system_packages_only_for_the_same_python(monkeypatch, tmp_path):
    site = tmp_path / "site-packages"
    site.mkdir()
    path = ["/usr/lib/python3.11", "/usr/lib/python3.11/lib-dynload", "/usr/local/lib/python3.11/dist-packages",
            "/usr/lib/python3/dist-packages"]
    monkeypatch.setattr(sys, "path", list(path))
    nbd_plugin.add_python_paths({"python_version": list(sys.version_info[:2]), "python_paths": [str(site), "/no/such/dir"]})
    assert sys.path == path[:2] + [str(site)] + path[2:]
    monkeypatch.setattr(sys, "path", list(path))
    nbd_plugin.add_python_paths({"python_version": [2, 7], "python_paths": [str(site)]})
    assert sys.path == path


def test_command_line_names_files_only_and_environment_has_a_system_path(tmp_path):
    command = nbd_export.nbdkit_command("/usr/bin/nbdkit", str(tmp_path), "127.0.0.1", 10809,
                                        tls={"psk_file": "/etc/keys.psk", "certificates": None})
    assert "--foreground" not in command and "--readonly" in command and "--tls=require" in command
    assert command[-3:] == ["python", str(tmp_path / "export_plugin.py"), "settings=%s" % (tmp_path / "settings.json")]
    env = nbd_export.nbdkit_environment({"PATH": "/venv/bin:/usr/bin", "VIRTUAL_ENV": "/venv", "PYTHONHOME": "/x",
                                         "PYTHONPATH": "/y", "AWS_PROFILE": "backup", "HOME": "/root"})
    assert env == {"PATH": nbd_export.NBDKIT_PATH, "AWS_PROFILE": "backup", "HOME": "/root"}


def test_urls_and_export_names():
    assert nbd_export.nbd_url("127.0.0.1", 10809, "a-b") == "nbd://127.0.0.1:10809/a-b"
    assert nbd_export.nbd_url("::1", 10810, "x", tls=True) == "nbds://[::1]:10810/x"
    assert nbd_export.check_export_name("20261125T061100Z-1a2b3c4d5e6f-scsi0-0")
    for bad in ("", "../etc", "a b", "-x", "a/b"):
        with pytest.raises(HyperVBackupError, match="not allowed"):
            nbd_export.check_export_name(bad)


def test_disk_is_chosen_like_restore_disk_names(backup):
    repo, backup_id = backup
    record = repo.get_backup(backup_id)
    assert nbd_export.select_disk(record, "SCSI 0:1") == "scsi0-1"
    assert nbd_export.select_disk(record, "scsi0-0") == "scsi0-0"
    with pytest.raises(HyperVBackupError, match="has 2 disks") as err:
        nbd_export.select_disk(record)
    assert "scsi0-0" in err.value.hint and "scsi0-1" in err.value.hint
    with pytest.raises(HyperVBackupError, match="names no disk"):
        nbd_export.select_disk(record, "scsi3-3")


def test_a_process_counts_as_ours_only_with_the_same_start_time_and_script(tmp_path):
    script = str(tmp_path / "export_plugin.py")
    # the child says it is up before the checks: until then /proc may still show a launcher's command line
    proc = subprocess.Popen([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)", script],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "up"
        state = {"pid": proc.pid, "start_time": nbd_export.process_start_time(proc.pid), "script": script}
        assert nbd_export.is_running(state)
        assert not nbd_export.is_running(dict(state, start_time=state["start_time"] - 1))     # a reused pid
        assert not nbd_export.is_running(dict(state, script=str(tmp_path / "other.py")))
        proc.kill()
        proc.wait()
        assert not nbd_export.is_running(state)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_stale_states_are_swept_and_absent_removes_them(tmp_path):
    state_dir = str(tmp_path / "exports")
    gone = nbd_export.export_dir(state_dir, "127.0.0.1", 10901)
    os.makedirs(gone)
    with open(os.path.join(gone, "state.json"), "w") as handle:
        json.dump({"pid": 2 ** 22 + 7, "start_time": 1, "script": "x", "port": 10901}, handle)
    starting = nbd_export.export_dir(state_dir, "127.0.0.1", 10902)      # no state yet: another run is starting it
    os.makedirs(starting)
    check = nbd_export.absent({"state_dir": state_dir, "port": 10901}, check_mode=True)
    assert check["changed"] and os.path.isdir(gone)
    result = nbd_export.absent({"state_dir": state_dir, "port": 10901})
    assert result["changed"] and result["stopped"] is False and not os.path.exists(gone)
    assert os.listdir(state_dir) == ["127.0.0.1_10902"]
    os.makedirs(gone)                   # stale again: absent on another port sweeps it
    with open(os.path.join(gone, "state.json"), "w") as handle:
        json.dump({"pid": 2 ** 22 + 7, "start_time": 1, "script": "x", "port": 10901}, handle)
    assert nbd_export.absent({"state_dir": state_dir, "port": 10903}) == {
        "changed": False, "url": None, "pid": None, "export_name": None, "address": "127.0.0.1", "port": 10903,
        "backup_id": None, "vm": None, "vm_id": None, "disk_key": None, "virtual_size": None, "tls": None, "stopped": False,
        "stale_removed": ["127.0.0.1_10901"]}
    assert os.listdir(state_dir) == ["127.0.0.1_10902"]
    assert nbd_export.sweep_stale(state_dir) == []


def test_check_mode_starts_nothing(backup, tmp_path):
    repo, backup_id = backup
    params = {"repository": repo.location, "backup_id": backup_id, "disk": "scsi0-0", "port": 10904, "state_dir": str(tmp_path / "s")}
    result = nbd_export.present(repo, params, None, check_mode=True)
    assert result["changed"] and result["pid"] is None and result["url"] == "nbd://127.0.0.1:10904/%s-scsi0-0" % backup_id
    assert not os.path.exists(str(tmp_path / "s"))


def test_tls_needs_keys_or_certificates(backup, tmp_path):
    repo, backup_id = backup
    params = {"repository": repo.location, "backup_id": backup_id, "disk": "scsi0-0", "state_dir": str(tmp_path), "tls": True}
    with pytest.raises(HyperVBackupError, match="tls needs"):
        nbd_export.present(repo, params, "nbdkit", check_mode=True)
    with pytest.raises(HyperVBackupError, match="does not exist"):
        nbd_export.present(repo, dict(params, tls_psk_file=str(tmp_path / "none.psk")), "nbdkit", check_mode=True)


def test_module_utils_are_copied_out_of_an_ansiballz_zip(tmp_path, monkeypatch):
    payload = tmp_path / "ansible_payload.zip"
    with zipfile.ZipFile(str(payload), "w") as archive:
        archive.writestr("ansible_collections/hyperv/backup/plugins/module_utils/export/nbd_plugin.py", "X = 1\n")
        archive.writestr("ansible_collections/hyperv/backup/plugins/module_utils/errors.py", "E = 2\n")
        archive.writestr("ansible/module_utils/basic.py", "B = 3\n")
    monkeypatch.setattr(nbd_export, "__file__", str(payload) + "/ansible_collections/hyperv/backup/plugins/module_utils/export/nbd_export.py")
    lib = nbd_export.copy_module_utils(str(tmp_path / "lib"))
    base = os.path.join(lib, "ansible_collections", "hyperv", "backup", "plugins", "module_utils")
    with open(os.path.join(base, "export", "nbd_plugin.py")) as handle:
        assert handle.read() == "X = 1\n"
    assert os.path.exists(os.path.join(base, "errors.py")) and not os.path.exists(os.path.join(lib, "ansible"))
    for level in ("ansible_collections", "ansible_collections/hyperv", "ansible_collections/hyperv/backup/plugins/module_utils"):
        assert os.path.exists(os.path.join(lib, level, "__init__.py"))       # regular packages: nothing else shadows them


def test_module_utils_are_copied_from_disk_without_caches(tmp_path):
    lib = nbd_export.copy_module_utils(str(tmp_path / "lib"))
    base = os.path.join(lib, "ansible_collections", "hyperv", "backup", "plugins", "module_utils")
    assert os.path.exists(os.path.join(base, "export", "nbd_plugin.py"))
    assert os.path.exists(os.path.join(base, "repository", "disk_reader.py"))
    assert not any("__pycache__" in root for root, _dirs, _files in os.walk(base))


@pytest.mark.skipif(not shutil.which("nbdkit"), reason="nbdkit is not installed (scripts/setup.sh installs it)")
def test_a_port_in_use_fails_with_nbdkits_message_and_leaves_nothing(backup, tmp_path):
    repo, backup_id = backup
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        params = {"repository": repo.location, "backup_id": backup_id, "disk": "scsi0-0", "port": port, "state_dir": str(tmp_path / "s")}
        with pytest.raises(HyperVBackupError, match="could not start the export") as err:
            nbd_export.present(repo, params, "nbdkit")
    assert "Address already in use" in str(err.value)
    assert os.listdir(str(tmp_path / "s")) == []


@pytest.mark.skipif(not shutil.which("nbdkit"), reason="nbdkit is not installed (scripts/setup.sh installs it)")
def test_a_wrong_passphrase_stops_nbdkit_before_it_serves(tmp_path):
    repo = Repository.init(str(tmp_path / "repo"), chunk_size=CHUNK, passphrase="right one")
    params = {"repository": repo.location, "passphrase": "wrong one", "backup_id": "20261125T061100Z-1a2b3c4d5e6f",
              "disk_key": "scsi0-0", "export_name": "x", "python_version": list(sys.version_info[:2]),
              "python_paths": nbd_export.python_paths()}
    directory = str(tmp_path / "export")
    os.makedirs(directory)
    with pytest.raises(HyperVBackupError, match="could not start") as err:
        nbd_export.start_process(shutil.which("nbdkit"), directory, params, "127.0.0.1", 10999)     # fails before binding
    assert "passphrase" in str(err.value).lower() and "wrong one" not in str(err.value)
    assert not os.path.exists(os.path.join(directory, "settings.json"))
