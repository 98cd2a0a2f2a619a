"""Security properties that need no playbook: TLS defaults, hostile names reaching hosts only as parameters,
owner-only repository files, encryption at rest and opaque chunk names, paths that try to escape.
"""
import hashlib
import os
import stat

import blake3
import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.host import transport_psrp, transport_winrm
from ansible_collections.hyperv.backup.plugins.module_utils.host.connection import ConnectionSettings, HostSession
from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError, HyperVBackupError, RepositoryError
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv.host_operations import OPERATIONS
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_admin import ensure_host, ensure_vm
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_host import LabTransport
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import LabLayout
from ansible_collections.hyperv.backup.plugins.module_utils.host.powershell_scripts import SCRIPTS
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository
from ansible_collections.hyperv.backup.plugins.module_utils.backup.restore_engine import run_restore

from test_repository import CHUNK, FAST_KDF, write_backup
from test_transport_psrp import FakeWorld
from test_transport_winrm import FakeProtocol, decode_payload

pytestmark = pytest.mark.reliability

# Names that would do harm if pasted into PowerShell text: quotes of every kind (PowerShell also treats
# the typographic ones as quotes), subexpressions, variables, escapes, statement separators, comments,
# here-strings, redirection and a newline.
HOSTILE_NAMES = [
    "web'01", 'web"01', "web\u2019s vm", "db\u201c01\u201d", "$(Stop-Computer -Force)", "${env:USERNAME}", "$null",
    "vm`$x`n", "a; Remove-Item -Recurse C:\\ #", "x | Out-File C:\\evil.txt", "a & calc.exe", "@'\nhere\n'@",
    "<#comment#>", "name with\nnewline", "-Force", "--% stop parsing", "\u0000nul",
]


# --- TLS and certificate validation ---------------------------------------------------------------------

def _default_settings(**extra):
    return ConnectionSettings(host="hv01.example.com", username="u", password="p", **extra)


def test_psrp_uses_https_and_validates_certificates_by_default(fault_ledger):
    from pypsrp.wsman import WSMan
    options = transport_psrp.wsman_options(_default_settings())
    assert options["ssl"] is True and options["port"] == 5986 and options["cert_validation"] is True
    transport = WSMan(**options).transport                   # the real client, as the module would build it
    assert transport.endpoint.startswith("https://") and transport.cert_validation is True
    assert transport._build_session().verify not in (False, None)   # pylint: disable=protected-access  # what requests will do
    fault_ledger.record("TLS defaults (psrp)", "https:5986 with certificate validation", data_lost=0)


def test_winrm_uses_https_and_validates_certificates_by_default(fault_ledger):
    import winrm.protocol
    protocol = winrm.protocol.Protocol(**transport_winrm.protocol_options(_default_settings()))
    assert protocol.transport.endpoint == "https://hv01.example.com:5986/wsman"
    assert protocol.transport.server_cert_validation == "validate"
    assert protocol.transport.build_session().verify not in (False, None)
    fault_ledger.record("TLS defaults (winrm)", "https:5986 with certificate validation", data_lost=0)


def test_validation_is_off_only_when_asked_and_basic_over_http_is_refused():
    assert transport_psrp.wsman_options(_default_settings(cert_validation="ignore"))["cert_validation"] is False
    assert transport_psrp.wsman_options(_default_settings(ca_cert="/etc/pki/ca.pem"))["cert_validation"] == "/etc/pki/ca.pem"
    with pytest.raises(HyperVBackupError, match="basic"):
        _default_settings(protocol="http", auth="basic")


# --- hostile names reach the host only as parameters ---------------------------------------------------------

def _string_calls():
    """(operation, params) for every operation parameter that carries a user or host supplied string."""
    calls = []
    for name, operation in sorted(OPERATIONS.items()):
        base = {}
        for param, (kind, required) in operation.params.items():
            if required:
                base[param] = {str: "x", int: 1, list: ["x"], dict: {"k": "v"}, bool: False}[kind]
        for param, (kind, _required) in operation.params.items():
            if kind in (str, list):
                for hostile in HOSTILE_NAMES:
                    calls.append((name, dict(base, **{param: [hostile] if kind is list else hostile}), hostile))
    return calls


def _carries(value, hostile):
    """True if ``hostile`` is one of the (nested) values, unchanged."""
    if isinstance(value, dict):
        return any(_carries(v, hostile) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_carries(v, hostile) for v in value)
    return value == hostile


def _run_ignoring_result(session, operation, params):
    """Run; the fake host's answer does not fit every operation, and only what was sent matters here."""
    try:
        session.run(operation, **params)
    except HostOperationError as err:
        assert err.category == "failed" and "JSON" in str(err) or "result" in str(err), err


def _psrp_session(monkeypatch, world):
    for name, cls in world.classes.items():
        monkeypatch.setattr(transport_psrp, name, cls)
    monkeypatch.setattr(transport_psrp, "HAS_PYPSRP", True)
    return HostSession(ConnectionSettings(host="hv01", username="u", password="p", transport="psrp"))


def test_psrp_sends_hostile_values_only_as_parameters(monkeypatch, fault_ledger):
    calls = _string_calls()
    assert len(calls) > 100
    world = FakeWorld(output=["{}"])
    session = _psrp_session(monkeypatch, world)
    for operation, params, hostile in calls:
        _run_ignoring_result(session, operation, params)
        script, sent = world.scripts[-1], world.parameters[-1]
        assert script == SCRIPTS[operation].text              # the script text is the fixed one, whatever the input
        assert _carries(sent, hostile), (operation, sent)
    fault_ledger.record("hostile names/paths sent over psrp", "script text constant; value only in parameters",
                        injected=len(calls), data_lost=0)


def test_winrm_sends_hostile_values_only_in_the_stdin_payload(monkeypatch, fault_ledger):
    calls = _string_calls()
    monkeypatch.setattr(transport_winrm, "Protocol", FakeProtocol)
    monkeypatch.setattr(transport_winrm, "HAS_WINRM", True)
    monkeypatch.setattr(FakeProtocol, "instances", [])
    monkeypatch.setattr(FakeProtocol, "reply", (b"{}", b"", 0))
    monkeypatch.setattr(FakeProtocol, "failure", None)
    session = HostSession(ConnectionSettings(host="hv01", username="u", password="p", transport="winrm"))
    command_lines = set()
    for operation, params, hostile in calls:
        _run_ignoring_result(session, operation, params)
        proto = FakeProtocol.instances[-1]
        _shell, command, arguments = proto.commands[-1]
        command_lines.add((command, tuple(arguments)))
        request = decode_payload(proto.inputs[-1][2])
        assert request["script"] == SCRIPTS[operation].text
        assert _carries(request["parameters"], hostile), (operation, request["parameters"])
    # one fixed command line (the bootstrap) whatever the operation and values: nothing is built from input
    assert len(command_lines) == 1
    fault_ledger.record("hostile names/paths sent over winrm", "fixed command line; value only in the stdin JSON",
                        injected=len(calls), data_lost=0)


def test_scripts_never_evaluate_text():
    """No operation script turns a string into code (Invoke-Expression, ScriptBlock::Create, Add-Type -TypeDefinition)."""
    for name, script in SCRIPTS.items():
        lowered = script.text.lower()
        for forbidden in ("invoke-expression", "iex ", "[scriptblock]::create", "-typedefinition", "new-object -comobject"):
            assert forbidden not in lowered, "%s uses %s" % (name, forbidden)


def test_hostile_vm_names_round_trip_through_the_lab(tmp_path, fault_ledger):
    lab = str(tmp_path / "lab")
    layout = LabLayout(lab, "hv1")
    ensure_host(layout)
    names = [n for n in HOSTILE_NAMES if "\u0000" not in n]
    for name in names:
        ensure_vm(layout, {"name": name, "disks": [{"size": 1 << 20}]})
    host = LabTransport(lab, "hv1")
    for name in names:
        vms = host.run("get_vms", {"names": [name]})
        assert [vm["name"] for vm in vms] == [name]
    assert sorted(vm["name"] for vm in host.run("get_vms", {})) == sorted(names)
    fault_ledger.record("hostile VM names through the lab host", "each found by its exact name, nothing else matched",
                        injected=len(names), data_lost=0)


# --- repository at rest ---------------------------------------------------------------------------------------

MARKER = b"HYPERV-BACKUP-PLAINTEXT-MARKER-7731"


def _marked_image(chunks=6):
    return b"".join((MARKER * (CHUNK // len(MARKER) + 1))[:CHUNK - 8] + index.to_bytes(8, "big") for index in range(chunks))


def _all_files(root):
    for directory, dirs, files in os.walk(root):
        yield directory, True
        for name in files:
            yield os.path.join(directory, name), False


def test_local_repository_is_owner_only_after_backups_prune_and_gc(tmp_path):
    from ansible_collections.hyperv.backup.plugins.module_utils.repository.retention import RetentionPolicy
    root = tmp_path / "nested" / "repo"
    repo = Repository.init(str(root), chunk_size=CHUNK)
    for number in range(3):
        write_backup(repo, _marked_image(3) + bytes([number]) * 10, vm_id="vm-1", vm_name="alpha")
    repo.verify()
    repo.prune(RetentionPolicy(keep_last=1), grace_seconds=0)
    loose = [(path, oct(stat.S_IMODE(os.stat(path).st_mode))) for path, is_dir in _all_files(root)
             if stat.S_IMODE(os.stat(path).st_mode) & 0o077]
    assert not loose, loose
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700


def test_encrypted_repository_reveals_nothing_without_the_passphrase(tmp_path, fault_ledger):
    root = tmp_path / "repo"
    repo = Repository.init(str(root), passphrase="correct horse", chunk_size=CHUNK, scrypt_params=FAST_KDF)
    data = _marked_image()
    write_backup(repo, data, vm_id="vm-secret-id", vm_name="payroll-db")
    plain_ids = set()
    for index in range(len(data) // CHUNK):
        piece = data[index * CHUNK:(index + 1) * CHUNK]
        plain_ids.update([blake3.blake3(piece).hexdigest(), hashlib.sha256(piece).hexdigest()])
    names = []
    for path, is_dir in _all_files(root):
        names.append(os.path.basename(path))
        if is_dir:
            continue
        with open(path, "rb") as handle:
            blob = handle.read()
        for needle in (MARKER, MARKER[:16], b"payroll-db", b"vm-secret-id", b"C:\\VMs"):
            assert needle not in blob, "%r readable in %s" % (needle, path)
    assert not plain_ids & set(names), "a chunk is named by the unkeyed hash of its plaintext"
    with pytest.raises(RepositoryError, match="encrypted|passphrase"):
        Repository.open(str(root))
    with pytest.raises(RepositoryError, match="[Ww]rong passphrase"):
        Repository.open(str(root), passphrase="Correct horse")
    fault_ledger.record("encrypted repository read without / with a wrong passphrase", "refused; no plaintext, name or "
                        "plaintext hash visible in any file", injected=2, data_lost=0)


# --- paths that try to escape ---------------------------------------------------------------------------------

@pytest.fixture
def one_backup(tmp_path):
    repo = Repository.init(str(tmp_path / "repo"), chunk_size=CHUNK)
    record = write_backup(repo, _marked_image(2), vm_id="vm-1", vm_name="web01")
    return repo, record


@pytest.mark.parametrize("name", ["../escaped", "..", "/etc/cron.d/evil", "sub/dir", "..\\..\\evil", "C:\\Windows\\evil"])
def test_restore_file_names_cannot_leave_the_destination(one_backup, tmp_path, name, fault_ledger):
    repo, record = one_backup
    destination = tmp_path / "restore"
    disk_key = record.disks[0]["disk_key"]
    with pytest.raises(HyperVBackupError, match="not allowed|escape"):
        run_restore(repo, {"backup_id": record.backup_id, "destination": str(destination), "disk_names": {disk_key: name}})
    outside = [p for p, _d in _all_files(tmp_path) if p.endswith((".vhdx", ".partial")) and "restore" not in p]
    assert not outside
    fault_ledger.record("restore file name escaping the destination (../, absolute, separators)", "refused", data_lost=0)


def test_restore_does_not_follow_a_symlink_named_like_the_disk(one_backup, tmp_path, fault_ledger):
    repo, record = one_backup
    destination = tmp_path / "restore"
    destination.mkdir()
    target_outside = tmp_path / "outside.vhdx"
    target_outside.write_bytes(b"precious")
    os.symlink(str(target_outside), str(destination / "web01_disk0.vhdx"))
    with pytest.raises(HyperVBackupError, match="escape|exists"):
        run_restore(repo, {"backup_id": record.backup_id, "destination": str(destination), "force": True,
                           "disk_names": {record.disks[0]["disk_key"]: "web01_disk0.vhdx"}})
    assert target_outside.read_bytes() == b"precious"
    fault_ledger.record("restore target is a symlink to a file outside", "refused; the outside file untouched", data_lost=0)


def test_restore_does_not_follow_a_symlink_at_the_temporary_name(one_backup, tmp_path, fault_ledger):
    repo, record = one_backup
    destination = tmp_path / "restore"
    destination.mkdir()
    outside = tmp_path / "elsewhere" / "stolen.vhdx"
    outside.parent.mkdir()
    disk_key = record.disks[0]["disk_key"]
    planted = destination / "web01_disk0.vhdx.partial"
    os.symlink(str(outside), str(planted))     # dangling: os.path.exists() says False
    try:
        run_restore(repo, {"backup_id": record.backup_id, "destination": str(destination),
                           "disk_names": {disk_key: "web01_disk0.vhdx"}})
    except (HyperVBackupError, OSError):
        pass
    assert not outside.exists(), "restore wrote the disk outside the destination through a symlink"
    fault_ledger.record("dangling symlink planted at the restore's temporary name", "not followed", data_lost=0)


@pytest.mark.parametrize("backup_id", ["../config", "../../../../../../etc/passwd", "..", "a/../../config"])
def test_backup_ids_cannot_name_files_outside_the_backups(one_backup, backup_id):
    repo, _record = one_backup
    asked = []
    real_get = repo.store.get

    def recording_get(key):
        asked.append(key)
        return real_get(key)
    repo.store.get = recording_get
    with pytest.raises(RepositoryError):
        repo.get_backup(backup_id)
    escaping = [k for k in asked if os.path.normpath(k).startswith("..") or not os.path.normpath(k).startswith("backups/")]
    assert not escaping, "the store was asked for %s" % escaping


def test_backup_ids_with_paths_are_refused_through_the_modules_api(one_backup, tmp_path, fault_ledger):
    """Whatever the store does, a backup id with a path never restores anything."""
    repo, _record = one_backup
    for backup_id in ["../config", "../../../../../../etc/passwd", "a/../../config"]:
        with pytest.raises(RepositoryError):
            run_restore(repo, {"backup_id": backup_id, "destination": str(tmp_path / "restore")})
    assert not (tmp_path / "restore").exists()
    fault_ledger.record("backup id with a path (../, absolute) given to restore", "refused (RepositoryError)", injected=3,
                        data_lost=0)
