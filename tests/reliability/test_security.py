"""Security properties that need no playbook: TLS defaults, hostile names reaching hosts only as parameters,
owner-only repository files, encryption at rest and opaque chunk names, paths that try to escape.
"""
import base64
import hashlib
import json
import os
import stat

import blake3
import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.host import transport_psrp, transport_winrm
from ansible_collections.hyperv.backup.plugins.module_utils.host.connection import ConnectionSettings, HostSession
from ansible_collections.hyperv.backup.plugins.module_utils.errors import HyperVBackupError, RepositoryError
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv.host_operations import OPERATIONS
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_admin import ensure_host, ensure_vm
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_host import LabTransport
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import LabLayout
from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge import BridgeError, Embedded, Ref
from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge_scripts import SCRIPTS
from ansible_collections.hyperv.backup.plugins.module_utils.host.script_bridge import decode_records
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_bridge import LabBridge
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository
from ansible_collections.hyperv.backup.plugins.module_utils.backup.restore_engine import TEMP_SUFFIX, run_restore

from storage_age import age
from test_repository import CHUNK, FAST_KDF, write_backup
from test_transport_psrp import FakeWorld
from test_transport_winrm import FakeProtocol

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
#
# Every operation runs for real (hyperv/ logic) over the psrp / winrm bridge; the fake client hands each bridge
# script to a relay that decodes its parameters the way the script would and answers from a lab host. What is
# checked is what crossed the wire: the script text is always one of the fixed bridge scripts, the command line
# (winrm) is always the same, and a hostile value that reaches the host does so only inside a parameter value
# (record values and file data are base64; decoded here as the script decodes them).

_SCRIPT_CALLS = dict((script.text, call) for call, script in SCRIPTS.items())


def _record_value(kind, text, embedded):
    if kind == "e":
        return embedded[text]
    return {"s": lambda: text, "i": lambda: int(text), "d": lambda: float(text), "b": lambda: text == "1",
            "n": lambda: None, "r": lambda: Ref(text)}[kind]()


def _decode_typed(lines):
    """{name: value} of the ``w`` / ``a`` records of a Where / Arguments parameter, embedded instances rebuilt."""
    embedded, values = {}, {}
    for record in decode_records(lines or []):
        if record[0] == "E":
            embedded[record[1]] = Embedded(record[2], {}, based_on=record[3] or None)
            continue
        kind, target, name, items = record
        value = [_record_value(k, t, embedded) for k, t in items]
        value = value if kind == "A" else value[0]
        if target.startswith("e"):
            embedded[target[1:]].properties[name] = value
        else:
            values[name] = value
    return values


def _decoded_strings(call, parameters):
    """Every string a bridge script would read out of its parameters (records and file data decoded)."""
    found = []

    def walk(value):
        if isinstance(value, Embedded):
            found.extend([value.class_name, value.based_on or ""])
            walk(value.properties)
        elif isinstance(value, Ref):
            found.append(value.path)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)
        elif isinstance(value, str):
            found.append(value)

    for name, value in parameters.items():
        if name in ("Where", "Arguments"):
            walk(_decode_typed(value))
        elif name == "Data" and call == "write_file":
            text = base64.b64decode(value or "").decode("utf-8", "replace")
            found.append(text)
            try:
                walk(json.loads(text))
            except ValueError:
                pass
        else:
            walk(value)
    return found


class LabRelay(object):
    """Answers bridge scripts from a lab host, as the script would on Windows: JSON document text out."""

    def __init__(self, lab_directory, host):
        self.bridge = LabBridge(lab_directory, host)
        self.sent = []                     # (call, script text, parameters) of every script run

    def answer(self, script_text, parameters):
        call = _SCRIPT_CALLS.get(script_text)
        self.sent.append((call, script_text, dict(parameters)))
        assert call is not None, "a script that is not one of the bridge scripts was sent"
        p = parameters
        try:
            if call == "query":
                result = self.bridge.query(p["Namespace"], p["ClassName"], where=_decode_typed(p["Where"]) or None,
                                           properties=p["Properties"] or None)
            elif call == "associators":
                result = self.bridge.associators(p["Namespace"], p["Path"], p["AssocClass"], p["ResultClass"] or None)
            elif call == "invoke":
                result = self.bridge.invoke(p["Namespace"], p["Path"], p["Method"], _decode_typed(p["Arguments"]) or None)
            elif call == "service":
                result = self.bridge.service(p["Name"], start=bool(p["Start"]))
            elif call in ("vss_writers", "host_environment"):
                result = getattr(self.bridge, call)()
            elif call == "diskshadow":
                result = self.bridge.diskshadow(p["Script"])
            elif call == "read_file":
                data = self.bridge.read_file(p["Path"], p["MaxBytes"])
                result = {"exists": data is not None, "data": base64.b64encode(data or b"").decode("ascii")}
            elif call == "write_file":
                result = self.bridge.write_file(p["Path"], base64.b64decode(p["Data"] or ""), exclusive=bool(p["Exclusive"]))
            elif call in ("remove_file", "list_directory"):
                result = getattr(self.bridge, call)(p["Path"])
            else:
                raise AssertionError("no relay for %s" % call)
        except BridgeError as err:
            return json.dumps({"error": {"code": err.code, "message": err.message, "category": err.category}})
        return json.dumps({"result": result})


@pytest.fixture
def relay_lab(tmp_path):
    lab = str(tmp_path / "lab")
    layout = LabLayout(lab, "hv01")
    ensure_host(layout)
    _changed, vm = ensure_vm(layout, {"name": "web01", "disks": [{"size": 1 << 20}]})
    return lab, vm["id"]


REAL_VALUES = {"method": "rct", "consistency": "application_or_crash", "tag": "security-test"}


def _string_calls(vm_id):
    """(operation, params, hostile) for every operation parameter that carries a user or host supplied string.
    Required values not under test name a real VM, so that the operation gets as far as it can."""
    calls = []
    for name, operation in sorted(OPERATIONS.items()):
        base = {}
        for param, (kind, required) in operation.params.items():
            if required:
                value = {str: "x", int: 1, list: ["x"], dict: {"k": "v"}, bool: False}[kind]
                base[param] = dict(REAL_VALUES, vm_id=vm_id).get(param, value)
        for param, (kind, _required) in operation.params.items():
            if kind in (str, list):
                for hostile in HOSTILE_NAMES:
                    calls.append((name, dict(base, **{param: [hostile] if kind is list else hostile}), hostile))
    return calls


def _run_ignoring_result(session, operation, params):
    """Run; many hostile values name nothing on the host, and only what was sent matters here."""
    try:
        return session.run(operation, **params)
    except HyperVBackupError as err:
        assert str(err), err
    return None


def _discard(lab, operation, result):
    """Remove a recovery point a call created, so that the VM's lease does not make the next call 'busy'."""
    if operation == "create_recovery_point" and isinstance(result, dict) and result.get("id"):
        LabTransport(lab, "hv01").run("remove_recovery_point", {"vm_id": result["vm_id"], "id": result["id"]})


def _check_sent(sent, hostile):
    """What the scripts of one operation received; True when the hostile value reached the host."""
    carried = False
    for call, script_text, parameters in sent:
        assert call is not None and script_text == SCRIPTS[call].text   # the script text is the fixed one, whatever the input
        carried = carried or any(hostile in text for text in _decoded_strings(call, parameters))
    return carried


def _check_coverage(carried_by_param, calls):
    # A value need not reach the host (refused or matched locally), but most do: the check must see them travel.
    assert sum(carried_by_param.values()) > 100, carried_by_param
    # (get_vms matches names and ids locally, in Python: they never travel.)
    for operation, param in [("create_recovery_point", "tag"), ("get_service", "name"), ("start_service", "name"),
                             ("get_disk_changes", "path"), ("get_recovery_points", "vm_id")]:
        assert carried_by_param.get((operation, param), 0) > 0, (operation, param, carried_by_param)


def _psrp_session(monkeypatch, relay):
    world = FakeWorld(output=[])

    class RelayPowerShell(world.classes["PowerShell"]):
        def invoke(self):
            return [relay.answer(world.scripts[-1], world.parameters[-1])]

    classes = dict(world.classes, PowerShell=RelayPowerShell)
    for name, cls in classes.items():
        monkeypatch.setattr(transport_psrp, name, cls)
    monkeypatch.setattr(transport_psrp, "HAS_PYPSRP", True)
    return HostSession(ConnectionSettings(host="hv01", username="u", password="p", transport="psrp"))


def test_psrp_sends_hostile_values_only_as_parameters(monkeypatch, relay_lab, fault_ledger):
    lab, vm_id = relay_lab
    relay = LabRelay(lab, "hv01")
    session = _psrp_session(monkeypatch, relay)
    calls = _string_calls(vm_id)
    assert len(calls) > 100
    carried = {}
    for operation, params, hostile in calls:
        del relay.sent[:]
        result = _run_ignoring_result(session, operation, params)
        param = [k for k, v in params.items() if v in (hostile, [hostile])][0]
        carried[(operation, param)] = carried.get((operation, param), 0) + _check_sent(relay.sent, hostile)
        _discard(lab, operation, result)
    _check_coverage(carried, calls)
    fault_ledger.record("hostile names/paths sent over psrp", "script text constant; value only in parameters",
                        injected=len(calls), data_lost=0)


class RelayProtocol(FakeProtocol):
    """FakeProtocol whose powershell.exe runs the bridge script read from stdin against the relay."""

    relay = None

    def run_command(self, shell_id, command, arguments=()):
        self.pending = []
        return super(RelayProtocol, self).run_command(shell_id, command, arguments)

    def send_command_input(self, shell_id, command_id, stdin_input, end=False):
        self.pending.append(stdin_input)
        super(RelayProtocol, self).send_command_input(shell_id, command_id, stdin_input, end=end)

    def get_command_output(self, shell_id, command_id):
        payload = "".join(self.pending)
        script, parameters = transport_winrm.decode_request(payload)
        RelayProtocol.payloads.append(payload)
        return (RelayProtocol.relay.answer(script, parameters) + "\r\n").encode("utf-8"), b"", 0


def test_winrm_sends_hostile_values_only_in_the_stdin_payload(monkeypatch, relay_lab, fault_ledger):
    lab, vm_id = relay_lab
    relay = LabRelay(lab, "hv01")
    monkeypatch.setattr(transport_winrm, "Protocol", RelayProtocol)
    monkeypatch.setattr(transport_winrm, "HAS_WINRM", True)
    monkeypatch.setattr(FakeProtocol, "instances", [])
    monkeypatch.setattr(FakeProtocol, "failure", None)
    monkeypatch.setattr(RelayProtocol, "relay", relay, raising=False)
    monkeypatch.setattr(RelayProtocol, "payloads", [], raising=False)
    session = HostSession(ConnectionSettings(host="hv01", username="u", password="p", transport="winrm"))
    calls = _string_calls(vm_id)
    carried = {}
    for operation, params, hostile in calls:
        del relay.sent[:]
        del RelayProtocol.payloads[:]
        result = _run_ignoring_result(session, operation, params)
        for payload in RelayProtocol.payloads:
            assert hostile not in payload                      # the stdin text carries it only base64-encoded
        param = [k for k, v in params.items() if v in (hostile, [hostile])][0]
        carried[(operation, param)] = carried.get((operation, param), 0) + _check_sent(relay.sent, hostile)
        _discard(lab, operation, result)
    _check_coverage(carried, calls)
    # one fixed command line (the bootstrap) whatever the operation and values: nothing is built from input
    command_lines = set((command, tuple(arguments)) for proto in FakeProtocol.instances for _s, command, arguments in proto.commands)
    assert len(command_lines) == 1
    (command, arguments), = command_lines
    assert command == "powershell.exe" and base64.b64decode(arguments[-1]).decode("utf-16-le") == transport_winrm.BOOTSTRAP
    fault_ledger.record("hostile names/paths sent over winrm", "fixed command line; value only in the stdin records",
                        injected=len(calls), data_lost=0)


def test_scripts_never_evaluate_text():
    """No bridge script turns a string into code (Invoke-Expression, ScriptBlock::Create, Add-Type -TypeDefinition)."""
    for name, script in SCRIPTS.items():
        lowered = script.text.lower()
        for forbidden in ("invoke-expression", "iex ", "[scriptblock]::create", "-typedefinition", "new-object -comobject"):
            assert forbidden not in lowered, "%s uses %s" % (name, forbidden)
    # The winrm bootstrap turns exactly one text into code: the script record of stdin (a fixed bridge script,
    # checked above); the values are splatted as parameters, never pasted into it.
    lowered = transport_winrm.BOOTSTRAP.lower()
    assert lowered.count("::create(") == 1 and "[scriptblock]::create($hvscript)" in lowered
    assert "& $hvblock @hvparameters" in lowered
    for forbidden in ("invoke-expression", "iex ", "-typedefinition", "new-object -comobject"):
        assert forbidden not in lowered


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
    age(repo.store, "chunks/", 3600)             # old enough for GC (storage time), so GC writes and deletes too
    repo.prune(RetentionPolicy(keep_last=1))
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
    link = destination / "web01_disk0.vhdx"
    os.symlink(str(target_outside), str(link))
    names = {record.disks[0]["disk_key"]: "web01_disk0.vhdx"}
    with pytest.raises(HyperVBackupError, match="exists"):          # a link is something at the name: force needed
        run_restore(repo, {"backup_id": record.backup_id, "destination": str(destination), "disk_names": names})
    # with force the link itself is replaced by the restored file (issue 12, point 9), never written through
    run_restore(repo, {"backup_id": record.backup_id, "destination": str(destination), "force": True, "disk_names": names})
    assert target_outside.read_bytes() == b"precious"
    assert not os.path.islink(str(link)) and os.path.getsize(str(link)) > len(b"precious")
    fault_ledger.record("restore target is a symlink to a file outside", "refused without force; with force the link is "
                        "replaced; the outside file untouched", data_lost=0)


def test_restore_does_not_follow_a_symlink_at_the_temporary_name(one_backup, tmp_path, fault_ledger):
    repo, record = one_backup
    destination = tmp_path / "restore"
    destination.mkdir()
    outside = tmp_path / "elsewhere" / "stolen.vhdx"
    outside.parent.mkdir()
    disk_key = record.disks[0]["disk_key"]
    planted = destination / ("web01_disk0.vhdx" + TEMP_SUFFIX)
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
