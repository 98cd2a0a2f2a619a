"""Reading a host's disks over SMB, against a real Samba server (smbd on 127.0.0.1, started by the test).

A real Hyper-V host reports Windows paths (``C:\\Hyper-V\\<vm id>\\...``) that do not exist on the proxy; with
``smb_access`` the backup reads them through the host's administrative share ``\\\\host\\C$``. Here smbd
serves a share named ``C$`` whose ``Hyper-V\\<vm id>`` folders link to the lab VMs' folders (inside the share), and the lab
session is wrapped so that it has no path map, as a real host has none (the lab's own reported paths are Windows
paths already; the test maps them to lab files with LabTransport.local only to compare contents). The disk read is a differencing ``.avhdx`` over
its base (the recovery point), so the parent is found over SMB too.
"""
import ntpath
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_admin
from ansible_collections.hyperv.backup.plugins.module_utils.backup.backup_engine import CopyOptions, run_backup
from ansible_collections.hyperv.backup.plugins.module_utils.host.connection import HostSession
from ansible_collections.hyperv.backup.plugins.module_utils.host.disk_access import DiskLocation, open_source_disk, unc_path
from ansible_collections.hyperv.backup.plugins.module_utils.errors import HyperVBackupError
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_host import LabTransport
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import LabLayout
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository
from ansible_collections.hyperv.backup.plugins.module_utils.backup.restore_engine import run_restore
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vdisk import open_disk

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
# smbd serves a user as that unix user: the one running the test, so no uid switch is needed and it works as root
# (CI) or not. Its password lives only in the tdbsam file under tmp.
USER = pwd.getpwuid(os.geteuid()).pw_name
PASSWORD = "Smb-test-Passw0rd"
SMBD = shutil.which("smbd") or "/usr/sbin/smbd"
PDBEDIT = shutil.which("pdbedit") or "/usr/bin/pdbedit"

CONFIG = """[global]
  smb ports = {port}
  bind interfaces only = yes
  interfaces = 127.0.0.1
  server role = standalone server
  passdb backend = tdbsam:{state}/passdb.tdb
  private dir = {state}/private
  lock directory = {state}/lock
  state directory = {state}/state
  cache directory = {state}/cache
  pid directory = {state}/pid
  ncalrpc dir = {state}/ncalrpc
  log file = {state}/log.smbd
  map to guest = never
  load printers = no
  printing = bsd
  printcap name = /dev/null
  disable spoolss = yes
  server min protocol = SMB2_10
  unix extensions = no

[C$]
  path = {share}
  read only = yes
  valid users = {user}
"""


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def smb_server(tmp_path_factory):
    """(port, share directory) of a running smbd; the share is served as C$ to USER/PASSWORD."""
    if not os.path.exists(SMBD):
        pytest.skip("Samba's smbd is not installed (scripts/setup.sh installs the Debian package samba)")
    base = tmp_path_factory.mktemp("smb")
    state, share = base / "state", base / "share"
    for sub in ("private", "lock", "state", "cache", "pid", "ncalrpc"):
        (state / sub).mkdir(parents=True)
    share.mkdir()
    port = _free_port()
    conf = base / "smb.conf"
    conf.write_text(CONFIG.format(port=port, state=state, share=share, user=USER))
    added = subprocess.run([PDBEDIT, "-s", str(conf), "-a", "-u", USER, "-t"], input="%s\n%s\n" % (PASSWORD, PASSWORD),
                           capture_output=True, text=True, timeout=60, check=False)
    assert added.returncode == 0, added.stdout + added.stderr
    # Own session: on shutdown smbd signals its whole process group, which must not be pytest's.
    proc = subprocess.Popen([SMBD, "--foreground", "--no-process-group", "-s", str(conf)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail("smbd exited: %s" % proc.stdout.read().decode("utf-8", "replace")[-3000:])
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("smbd did not listen on port %d within 30 s" % port)
    yield port, share
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


class RealHostPaths:
    """A lab session seen as a real host: Windows paths only, and no path map to local files."""

    def __init__(self, session):
        self._session = session
        self.host = "127.0.0.1"

    def __getattr__(self, name):
        return getattr(self._session, name)

    @staticmethod
    def path_map():
        return {}

    def run(self, operation, **params):
        return _windows_paths(self._session.run(operation, **params))


def _windows_paths(value):
    if isinstance(value, list):
        return [_windows_paths(item) for item in value]
    if isinstance(value, dict):
        out = dict((key, _windows_paths(item)) for key, item in value.items())
        if "windows_path" in out and "path" in out and out["windows_path"]:
            out["path"] = out["windows_path"]
        return out
    return value


@pytest.fixture
def lab_vm_on_share(tmp_path, smb_server):
    """A lab host with one VM (8 MiB, half filled) whose folder appears on the share as C:\\Hyper-V\\<vm id>."""
    _port, share = smb_server
    # The lab lives inside the share, so the Hyper-V\<vm> link below stays within it (no "wide links").
    lab = str(share / "labs" / tmp_path.name)
    layout = LabLayout(lab, "hv-smb")
    lab_admin.ensure_host(layout, era="2019")
    # A standard checkpoint first: the VM then writes to an .avhdx over its base, as after any checkpoint.
    lab_admin.ensure_vm(layout, {"name": "smbvm", "disks": [{"size": 8 * MiB, "fill": {"seed": 7, "percent": 50}}],
                                 "checkpoints": ["before-upgrade"]})
    lab_admin.churn(layout, "smbvm", seed=5, writes=3, write_size=MiB)
    params = dict(transport="lab", host="hv-smb", lab_directory=lab, vm="smbvm")
    with HostSession.from_module_params(params) as session:
        disk = session.run("get_vms", names=["smbvm"])[0]["disks"][0]
    # C:\Hyper-V\<vm id>\Virtual Hard Disks\x.vhdx: the VM folder (named by VM id) and the lab folder behind it
    vm_folder = ntpath.dirname(ntpath.dirname(disk["windows_path"]))
    assert ntpath.dirname(vm_folder).lower() == "c:\\hyper-v", disk
    vm_dir = LabTransport(lab, "hv-smb").local(vm_folder)
    (share / "Hyper-V").mkdir(exist_ok=True)
    link = share / "Hyper-V" / ntpath.basename(vm_folder)
    if link.is_symlink():
        link.unlink()
    link.symlink_to(vm_dir, target_is_directory=True)
    return layout, params


def _lab_file(params, windows_path):
    """The lab file behind a Windows path the lab host reported."""
    return LabTransport(params["lab_directory"], params["host"]).local(windows_path)


def _local_content(path):
    """The disk's content read locally through its chain (qemu-img cannot open a VHDX differencing disk:
    "Operation not supported"; our reader is checked against qemu-img on every form it can read in tests/unit)."""
    disk = open_disk(path)
    try:
        return disk.read(0, disk.virtual_size)
    finally:
        disk.close()


def _qemu_raw(path, out):
    subprocess.run(["qemu-img", "convert", "-O", "raw", path, str(out)], check=True, capture_output=True, timeout=60)
    return out.read_bytes()


def test_differencing_disk_reads_over_smb_as_locally(lab_vm_on_share, smb_server, tmp_path):
    port, _share = smb_server
    layout, params = lab_vm_on_share
    with HostSession.from_module_params(params) as session:
        point = session.run("create_recovery_point", vm_id=session.run("get_vms", names=["smbvm"])[0]["id"],
                            method="rct", consistency="application", tag="hyperv.backup:smbtest")
    lab_admin.churn(layout, "smbvm", seed=3, writes=2, write_size=MiB)   # the guest goes on writing to the new child
    frozen = point["disks"][0]
    assert frozen["path"].endswith(".avhdx"), frozen
    local = open_disk(_lab_file(params, frozen["path"]))
    assert len(local.chain) == 2          # the checkpoint's .avhdx over the base .vhdx
    unc = unc_path(frozen["windows_path"], "127.0.0.1")
    remote = open_source_disk(DiskLocation("smb", unc, frozen["windows_path"]), USER, PASSWORD, smb_port=port)
    try:
        assert [os.path.basename(p.replace("\\", "/")) for p in remote.chain] == [os.path.basename(p) for p in local.chain]
        assert remote.virtual_size == local.virtual_size == 8 * MiB
        over_smb = remote.read(0, remote.virtual_size)
        base_unc, base_local = remote.chain[1], local.chain[1]
    finally:
        remote.close()
        local.close()
    assert over_smb == _local_content(_lab_file(params, frozen["path"]))
    assert over_smb != bytes(len(over_smb))
    # The base alone, over SMB, against qemu-img (which reads a VHDX without parents)
    base = open_source_disk(DiskLocation("smb", base_unc, base_unc), USER, PASSWORD, smb_port=port)
    try:
        base_over_smb = base.read(0, base.virtual_size)
    finally:
        base.close()
    assert base_over_smb == _qemu_raw(base_local, tmp_path / "base.raw")
    assert base_over_smb != over_smb      # the checkpoint's child does change the content


def test_backup_over_smb_restores_equal_to_the_disk(lab_vm_on_share, smb_server, tmp_path):
    port, _share = smb_server
    _layout, params = lab_vm_on_share
    repo = Repository.init(str(tmp_path / "repo"))
    with HostSession.from_module_params(params) as session:
        disk_path = session.run("get_vms", names=["smbvm"])[0]["disks"][0]["path"]
        expected = _local_content(_lab_file(params, disk_path))
        # as for a real host: its paths are not checked on the proxy (transport other than lab)
        result = run_backup(RealHostPaths(session), repo, dict(params, transport="psrp"),
                            options=CopyOptions(smb=True, smb_port=port, credentials=(USER, PASSWORD)))
    assert result["type"] == "full"
    assert [d["access"] for d in result["disks"]] == ["smb"], result["disks"]
    restored = run_restore(repo, {"vm": "smbvm", "destination": str(tmp_path / "restored"), "format": "raw"})
    with open(restored["disks"][0]["path"], "rb") as handle:
        assert handle.read() == expected


def test_wrong_password_and_unreachable_share_fail_clearly(lab_vm_on_share, smb_server):
    port, _share = smb_server
    unc = "\\\\127.0.0.1\\C$\\Hyper-V\\smbvm\\missing.vhdx"
    with pytest.raises(HyperVBackupError) as wrong:
        open_source_disk(DiskLocation("smb", unc, "C:\\Hyper-V\\smbvm\\missing.vhdx"), USER, "wrong password",
                         smb_port=port)
    assert "over SMB" in str(wrong.value) and "password" in str(wrong.value)
    with pytest.raises(HyperVBackupError) as unreachable:
        open_source_disk(DiskLocation("smb", unc, "C:\\Hyper-V\\smbvm\\missing.vhdx"), USER, PASSWORD,
                         smb_port=_free_port())
    assert "over SMB" in str(unreachable.value) and "445" in str(unreachable.value)
