"""SMB upload of restored files (host/smb_upload.py) against an smbclient double backed by a directory."""
import os
import types

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HyperVBackupError
from ansible_collections.hyperv.backup.plugins.module_utils.host.smb_upload import SmbUploader


class FakeSmbClient:
    """smbclient's open_file / makedirs / stat / rename / replace / remove / path.exists over a local directory."""

    def __init__(self, root, truncate=False):
        self.root = root
        self.truncate = truncate
        self.logins = []
        self.path = types.SimpleNamespace(exists=lambda unc, **kw: os.path.exists(self._local(unc)))

    def _local(self, unc):
        assert unc.startswith("\\\\hv01\\E$\\"), unc
        return os.path.join(self.root, *unc[len("\\\\hv01\\E$\\"):].split("\\"))

    def makedirs(self, unc, exist_ok=False, **kw):
        self.logins.append(kw)
        os.makedirs(self._local(unc), exist_ok=exist_ok)

    def open_file(self, unc, mode="rb", **kw):
        handle = open(self._local(unc), mode)
        if self.truncate:
            real_write = handle.write
            handle.write = lambda block: real_write(block[:-1])
        return handle

    def stat(self, unc, **kw):
        return os.stat(self._local(unc))

    def rename(self, src, dst, **kw):
        if os.path.exists(self._local(dst)):
            raise OSError("exists")
        os.rename(self._local(src), self._local(dst))

    def replace(self, src, dst, **kw):
        os.replace(self._local(src), self._local(dst))

    def remove(self, unc, **kw):
        os.unlink(self._local(unc))


def test_upload_lands_under_the_final_name_only_when_complete(tmp_path):
    local = tmp_path / "disk.vhdx"
    local.write_bytes(os.urandom(5 * 1024 * 1024 + 7))
    client = FakeSmbClient(str(tmp_path / "share"))
    uploader = SmbUploader("hv01", "admin", "pw", client=client)
    assert uploader.upload_file(str(local), "E:\\Restore\\web01\\disk.vhdx") == "\\\\hv01\\E$\\Restore\\web01\\disk.vhdx"
    assert (tmp_path / "share" / "Restore" / "web01" / "disk.vhdx").read_bytes() == local.read_bytes()
    assert client.logins[0] == {"username": "admin", "password": "pw", "port": 445}
    assert uploader.exists("E:\\Restore\\web01\\disk.vhdx")
    with pytest.raises(HyperVBackupError, match="Cannot write"):
        uploader.upload_file(str(local), "E:\\Restore\\web01\\disk.vhdx")          # no silent overwrite
    uploader.upload_file(str(local), "E:\\Restore\\web01\\disk.vhdx", replace=True)


def test_a_short_transfer_leaves_nothing_under_either_name(tmp_path):
    local = tmp_path / "disk.vhdx"
    local.write_bytes(b"x" * 1000)
    client = FakeSmbClient(str(tmp_path / "share"), truncate=True)
    with pytest.raises(HyperVBackupError, match="remote file has 999 bytes"):
        SmbUploader("hv01", client=client).upload_file(str(local), "E:\\R\\disk.vhdx")
    assert os.listdir(str(tmp_path / "share" / "R")) == []
