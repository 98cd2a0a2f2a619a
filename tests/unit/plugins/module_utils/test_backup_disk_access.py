"""Reaching a host's disk files (disk_access.py): path_map, UNC paths, SMB pread, the read rate limit."""
import io
import os

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.host import disk_access
from ansible_collections.hyperv.backup.plugins.module_utils.errors import HyperVBackupError


def test_map_path_longest_prefix_case_insensitive():
    mapping = {"C:\\ClusterStorage": "/mnt/cs", "c:\\clusterstorage\\Volume1": "/mnt/v1"}
    assert disk_access.map_path("C:\\ClusterStorage\\Volume1\\web\\a.vhdx", mapping) == "/mnt/v1/web/a.vhdx"
    assert disk_access.map_path("C:\\ClusterStorage\\Volume2\\b.vhdx", mapping) == "/mnt/cs/Volume2/b.vhdx"
    assert disk_access.map_path("C:\\ClusterStorageX\\b.vhdx", mapping) is None
    assert disk_access.map_path("D:\\b.vhdx", mapping) is None


def test_map_path_refuses_dot_dot():
    with pytest.raises(HyperVBackupError, match="'..'"):
        disk_access.map_path("C:\\VMs\\..\\Windows\\x", {"C:\\VMs": "/mnt/vms"})


def test_unc_path():
    assert disk_access.unc_path("C:\\VMs\\a.vhdx", "hv01") == "\\\\hv01\\C$\\VMs\\a.vhdx"
    assert disk_access.unc_path("\\\\fs\\share\\a.vhdx", "hv01") == "\\\\fs\\share\\a.vhdx"
    with pytest.raises(HyperVBackupError, match="path_map"):
        disk_access.unc_path("relative\\a.vhdx", "hv01")


def test_locate_disk_prefers_map_then_local_then_smb(tmp_path):
    local = tmp_path / "a.vhdx"
    local.write_bytes(b"x")
    reported = {"path": str(local), "windows_path": "C:\\VMs\\a.vhdx"}
    assert disk_access.locate_disk(reported, "hv01").to_dict() == {"access": "local", "path": str(local), "windows_path": "C:\\VMs\\a.vhdx"}
    mapped = disk_access.locate_disk(reported, "hv01", path_map={"C:\\VMs": "/mnt/vms"})
    assert mapped.path == "/mnt/vms/a.vhdx"
    remote = {"path": "C:\\VMs\\b.vhdx"}
    assert disk_access.locate_disk(remote, "hv01", smb=True).path == "\\\\hv01\\C$\\VMs\\b.vhdx"
    with pytest.raises(HyperVBackupError, match="not readable on this proxy"):
        disk_access.locate_disk(remote, "hv01")


class FakeSmbClient:
    """Stands in for smbclient: open_file returns a BytesIO over the 'remote' content and records the call."""

    def __init__(self, files):
        self.files = files
        self.calls = []

    def open_file(self, path, mode="r", username=None, password=None, share_access=None, port=445):
        self.calls.append((path, mode, username, password, share_access, port))
        if path not in self.files:
            raise OSError(2, "No such file")
        return io.BytesIO(self.files[path])


def test_smb_file_pread_semantics_and_credentials():
    data = os.urandom(100000)
    client = FakeSmbClient({"\\\\hv01\\C$\\a.vhdx": data})
    with disk_access.SmbFile("\\\\hv01\\C$\\a.vhdx", "admin", "pw", client=client) as handle:
        assert handle.size == len(data)
        assert handle.pread(10, 5) == data[5:15]
        assert handle.pread(10, 99995) == data[99995:]          # short only at the end
        assert handle.pread(4096, 0) == data[:4096]             # no shared position between calls
    assert client.calls == [("\\\\hv01\\C$\\a.vhdx", "rb", "admin", "pw", "rwd", 445)]


def test_smb_open_failure_is_explained():
    with pytest.raises(HyperVBackupError, match="TCP 445"):
        disk_access.SmbFile("\\\\hv01\\C$\\missing.vhdx", client=FakeSmbClient({}))


def test_smb_parents_are_looked_for_on_the_same_host_share():
    child = "\\\\hv01\\C$\\VMs\\web01\\Virtual Hard Disks\\web01_ABC.avhdx"
    hints = [("relative", ".\\web01.vhdx"), ("volume", "\\\\?\\Volume{1234}\\VMs\\web01.vhdx"),
             ("absolute", "D:\\Base\\web01.vhdx")]
    assert disk_access.SmbOpener.parent_candidates(child, hints) == [
        "\\\\hv01\\C$\\VMs\\web01\\Virtual Hard Disks\\web01.vhdx",    # relative, beside the child
        "\\\\hv01\\D$\\Base\\web01.vhdx",                                 # absolute, on the same host's D$
    ]
    assert disk_access.SmbOpener.identity("\\\\HV01\\c$\\A\\..\\B.vhdx") == disk_access.SmbOpener.identity(
        "\\\\hv01\\C$\\b.vhdx")


class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.slept = []

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def test_rate_limiter_caps_the_rate():
    clock = FakeClock()
    limiter = disk_access.RateLimiter(1000, clock=clock.clock, sleep=clock.sleep)
    for _attempt in range(10):
        limiter.acquire(500)
    # 5000 bytes at 1000 B/s take 5 s (the bucket starts empty)
    assert clock.now == pytest.approx(5.0)
    assert limiter.waited_seconds == pytest.approx(5.0)


def test_rate_limiter_off_never_sleeps():
    clock = FakeClock()
    limiter = disk_access.RateLimiter(None, clock=clock.clock, sleep=clock.sleep)
    limiter.acquire(10 ** 12)
    assert clock.slept == []
