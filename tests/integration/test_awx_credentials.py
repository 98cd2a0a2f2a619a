"""Issue 16 point 3: the AWX custom credential types in extensions/awx/credential_types, as AWX uses them.

* Each file follows AWX's rules for a custom credential type (awx/main/fields.py: CredentialTypeInputField and
  CredentialTypeInjectorField): the field keys AWX accepts, injector kinds and names, no reserved variable, and
  templates that render with only the fields defined (StrictUndefined). Every variable injected is one that an option
  of the collection falls back to.
* ``inject()`` renders the injectors as AWX does (awx/main/models/credential CredentialType.inject_credential): the
  sandboxed Jinja2 environment, a namespace holding only the fields given a non-empty value, and every env injector
  set, also when its field was left empty. The tests run with exactly that environment, so they break when a file
  changes in a way that stops the modules from getting what they need.
* ansible-runner runs playbooks/backup.yml against a lab host with the injected environment and an inventory
  without secrets: the backup into an encrypted repository works with the injected passphrase and fails clearly
  with a wrong one. The lab host does not check a password, so the account goes to a WinRM endpoint on localhost:
  it receives exactly the injected account, and a wrong password fails with the modules' authentication message.
* The awx-credentials.yml example of docs/awx.md passes ``ansible-playbook --syntax-check`` and uses only
  options of the awx.awx modules it calls.
"""
import base64
import http.server
import json
import re
import subprocess
import sys
import threading

import ansible_runner
import pytest
import yaml
from jinja2 import StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ansible_collections.hyperv.backup.plugins.module_utils.host.connection import connection_argument_spec
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_options import repository_argument_spec

from workflow_helpers import PLAYBOOKS, ROOT, ansible_env, run_playbook, tool

pytestmark = pytest.mark.integration

TYPES_DIR = ROOT / "extensions" / "awx" / "credential_types"
TYPE_FILES = sorted(p.name for p in TYPES_DIR.glob("*.yml"))
PASSPHRASE = "correct horse battery staple"
ACCOUNT = {"username": "EXAMPLE\\svc-hvbackup", "password": "Hv-Backup-Secret-7", "auth": "basic"}

# awx/main/fields.py, CredentialTypeInputField.schema: the keys a field may have
FIELD_KEYS = {"id", "label", "type", "format", "choices", "help_text", "multiline", "secret", "ask_at_runtime", "default"}
# awx/main/constants.py ENV_BLOCKLIST (and every ANSIBLE_* name): AWX refuses to inject these
ENV_BLOCKLIST = {"VIRTUAL_ENV", "PATH", "PYTHONPATH", "JOB_ID", "INVENTORY_ID", "INVENTORY_SOURCE_ID", "INVENTORY_UPDATE_ID",
                 "AD_HOC_COMMAND_ID", "REST_API_URL", "REST_API_TOKEN", "MAX_EVENT_RES", "CALLBACK_QUEUE", "CALLBACK_CONNECTION",
                 "CACHE", "JOB_CALLBACK_DEBUG", "INVENTORY_HOSTVARS", "AWX_HOST", "PROJECT_REVISION", "SUPERVISOR_CONFIG_PATH"}
NAME = re.compile(r"^[a-zA-Z_]+[a-zA-Z0-9_]*$")
# awx.awx 24 (awx_collection/plugins/modules/credential_type.py, credential.py): the modules' own options
AWX_OPTIONS = {
    "credential_type": {"name", "new_name", "description", "kind", "inputs", "injectors", "state"},
    "credential": {"name", "new_name", "copy_from", "description", "organization", "credential_type", "inputs",
                   "update_secrets", "user", "team", "state"},
}


def load_type(name):
    return yaml.safe_load((TYPES_DIR / name).read_text())


def inject(credential_type, inputs):
    """(env, extra_vars) that AWX gives a job for a credential of ``credential_type`` with ``inputs``."""
    namespace = {}
    for field, value in inputs.items():
        if isinstance(value, bool) or len(value):       # an empty field is left out of the namespace
            namespace[field] = value
    for field in credential_type["inputs"].get("fields", []):
        if field.get("type") == "boolean" and field["id"] not in inputs:
            namespace[field["id"]] = False
    sandbox = ImmutableSandboxedEnvironment()
    injectors = credential_type.get("injectors") or {}
    env = dict((name, sandbox.from_string(template).render(**namespace)) for name, template in injectors.get("env", {}).items())

    def render(node):
        if isinstance(node, dict):
            return dict((render(k), render(v)) for k, v in node.items())
        if isinstance(node, list):
            return [render(x) for x in node]
        return sandbox.from_string(node).render(**namespace)
    return env, render(injectors.get("extra_vars", {}))


def _variables_the_collection_reads():
    names = set()
    for spec in (connection_argument_spec(), repository_argument_spec()):
        for option in spec.values():
            fallback = option.get("fallback")
            if fallback:
                names.update(fallback[1])
    return names


@pytest.mark.parametrize("name", TYPE_FILES)
def test_credential_type_follows_awx_rules(name):
    credential_type = load_type(name)
    assert set(credential_type) == {"name", "description", "kind", "inputs", "injectors"}, name
    assert credential_type["kind"] == "cloud"       # custom types may be cloud or net
    fields = credential_type["inputs"]["fields"]
    ids = [f["id"] for f in fields]
    assert len(set(ids)) == len(ids) and "tower" not in ids
    for field in fields:
        assert set(field) <= FIELD_KEYS and {"id", "label"} <= set(field), field
        assert NAME.match(field["id"]) and field.get("type", "string") in ("string", "boolean")
        if "default" in field:
            assert isinstance(field["default"], {"string": str, "boolean": bool}[field.get("type", "string")])
            if "choices" in field:
                assert field["default"] in field["choices"]
    assert set(credential_type["inputs"].get("required", [])) <= set(ids)
    injectors = credential_type["injectors"]
    assert set(injectors) <= {"env", "extra_vars", "file"}
    strict = ImmutableSandboxedEnvironment(undefined=StrictUndefined)
    for kind, entries in injectors.items():
        for key, template in entries.items():
            assert NAME.match(key), key
            strict.from_string(template).render(dict((i, "EXAMPLE") for i in ids))     # only fields it defines
    for variable in injectors.get("env", {}):
        assert not variable.startswith("ANSIBLE_") and variable not in ENV_BLOCKLIST, variable
    # each variable is one the modules read, and never set to "" when only the required fields are given
    assert set(injectors.get("env", {})) <= _variables_the_collection_reads()
    required_only = dict((f, "x") for f in credential_type["inputs"].get("required", []))
    env, _extra = inject(credential_type, dict(required_only, **dict((i, "") for i in ids if i not in required_only)))
    assert all(value != "" for value in env.values()), env


def test_each_secret_option_has_a_credential_type():
    injected = set()
    for name in TYPE_FILES:
        injected.update(load_type(name)["injectors"].get("env", {}))
    assert {"HYPERV_USERNAME", "HYPERV_PASSWORD", "HYPERV_AUTH", "HYPERV_BACKUP_REPOSITORY_PASSPHRASE",
            "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= injected


# --- running the playbook as AWX would -------------------------------------------------------------------------------

@pytest.fixture
def clean_environment(monkeypatch):
    """No credential in this process's environment: the runs get only what the injectors set."""
    for name in _variables_the_collection_reads() | {"HYPERV_TRANSPORT", "HYPERV_LAB_DIRECTORY", "AWS_DEFAULT_REGION"}:
        monkeypatch.delenv(name, raising=False)


def _job_env(account, passphrase):
    env = {}
    for name, inputs in (("hyperv_host.yml", account), ("hyperv_repository.yml", {"passphrase": passphrase})):
        injected, extra_vars = inject(load_type(name), inputs)
        assert extra_vars == {}
        env.update(injected)
    return env


def _runner(private, project, playbook, inventory, env, ident):
    private = private / ident        # a private data dir per job, as AWX has
    private.mkdir(parents=True)
    result = ansible_runner.run(private_data_dir=str(private), project_dir=str(project), playbook=playbook,
                                inventory=str(inventory), envvars=ansible_env(env), quiet=True, ident=ident)
    return result, result.stdout.read()


@pytest.mark.frozen_guard(passphrase=PASSPHRASE)
def test_backup_under_ansible_runner_with_the_injected_environment(tmp_path, clean_environment):
    lab = tmp_path / "lab"
    lab_play = tmp_path / "lab.yml"
    lab_play.write_text(json.dumps([{"name": "Lab", "hosts": "localhost", "gather_facts": False, "tasks": [
        {"hyperv.backup.hyperv_lab": {"lab_directory": str(lab), "host": "awx-hv1", "era": "2019", "services": {"vss": "Running"},
                                      "vms": [{"name": "app01", "disks": [{"size": 8 * 1024 * 1024, "fill": {"seed": 4, "percent": 20}}]}]}}]}]))
    built = run_playbook(lab_play, cwd=tmp_path)
    assert built.returncode == 0, built.stdout[-4000:]
    Repository.init(str(tmp_path / "repository"), passphrase=PASSPHRASE, chunk_size=64 * 1024)

    inventory = tmp_path / "inventory.yml"      # as in AWX: no secret in the inventory
    inventory.write_text(yaml.safe_dump({"all": {"children": {"hyperv_hosts": {"hosts": {"awx-hv1": {}}, "vars": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable, "hyperv_backup_proxy": "localhost",
        "hyperv_connection": {"transport": "lab", "host": "{{ inventory_hostname }}", "lab_directory": str(lab)},
        "hyperv_repository": {"repository": str(tmp_path / "repository")},
        "hyperv_backup_report_directory": str(tmp_path / "reports")}}}}}))
    account = dict(ACCOUNT, auth="")                 # the auth field left empty: AWX injects the template's default
    env = _job_env(account, PASSPHRASE)
    assert env == {"HYPERV_USERNAME": ACCOUNT["username"], "HYPERV_PASSWORD": ACCOUNT["password"], "HYPERV_AUTH": "negotiate",
                   "HYPERV_BACKUP_REPOSITORY_PASSPHRASE": PASSPHRASE}

    result, stdout = _runner(tmp_path / "runner", PLAYBOOKS, "backup.yml", inventory, env, "job-1")
    assert result.status == "successful" and result.rc == 0, stdout[-8000:]
    backups = Repository.open(str(tmp_path / "repository"), passphrase=PASSPHRASE).list_backups()
    assert [b.vm_name for b in backups] == ["app01"]
    for secret in (PASSPHRASE, ACCOUNT["password"]):
        assert secret not in stdout

    result, stdout = _runner(tmp_path / "runner", PLAYBOOKS, "backup.yml", inventory, _job_env(account, "not the passphrase"), "job-2")
    assert result.status == "failed"
    assert "wrong passphrase" in stdout.lower() and "not the passphrase" not in stdout, stdout[-6000:]
    assert len(Repository.open(str(tmp_path / "repository"), passphrase=PASSPHRASE).list_backups()) == 1


class _WinRMDoor(http.server.BaseHTTPRequestHandler):
    """A WinRM listener's door: Basic auth checked against ACCOUNT; behind it no WinRM service (HTTP 500)."""
    seen = []

    def do_POST(self):  # noqa: N802 (http.server naming)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        header = self.headers.get("Authorization") or ""
        if header.startswith("Basic "):
            self.seen.append(base64.b64decode(header[6:]).decode("utf-8"))
        expected = "Basic " + base64.b64encode(("%s:%s" % (ACCOUNT["username"], ACCOUNT["password"])).encode()).decode()
        if header == expected:
            self.send_response(500)
        else:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="WSMAN"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def winrm_door():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _WinRMDoor)
    _WinRMDoor.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_injected_account_reaches_the_winrm_listener(tmp_path, clean_environment, winrm_door):
    project = tmp_path / "project"
    project.mkdir()
    (project / "info.yml").write_text(json.dumps([{
        "name": "Read a host", "hosts": "hyperv_hosts", "gather_facts": False,
        "module_defaults": {"group/hyperv.backup.hyperv": "{{ hyperv_connection }}"},
        "tasks": [{"name": "Describe the host", "hyperv.backup.hyperv_host_info": {}, "delegate_to": "localhost"}]}]))
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"hyperv_hosts": {"hosts": {"hv01": {}}, "vars": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
        "hyperv_connection": {"transport": "winrm", "host": "127.0.0.1", "port": winrm_door, "protocol": "http",
                              "message_encryption": "never", "connection_timeout": 5, "read_timeout": 10}}}}}}))

    result, stdout = _runner(tmp_path / "runner", project, "info.yml", inventory, _job_env(ACCOUNT, PASSPHRASE), "job-1")
    assert _WinRMDoor.seen and set(_WinRMDoor.seen) == {"%s:%s" % (ACCOUNT["username"], ACCOUNT["password"])}
    # past the logon: the stand-in has no WinRM service behind its door
    assert result.status == "failed" and "remote call failed" in stdout and "credentials refused" not in stdout, stdout[-4000:]
    assert ACCOUNT["password"] not in stdout

    _WinRMDoor.seen = []
    result, stdout = _runner(tmp_path / "runner", project, "info.yml", inventory,
                             _job_env(dict(ACCOUNT, password="wrong-password"), PASSPHRASE), "job-2")
    assert set(_WinRMDoor.seen) == {"%s:wrong-password" % ACCOUNT["username"]}
    assert result.status == "failed" and "credentials refused" in stdout and "check username/password" in stdout, stdout[-4000:]
    assert "wrong-password" not in stdout


# --- the docs/awx.md example -----------------------------------------------------------------------------------------

STUB_MODULE = '''#!/usr/bin/python
# Stand-in for awx.awx.{name} used only by the syntax check (awx.awx is not installable offline).
DOCUMENTATION = """
module: {name}
short_description: stand-in
"""
'''


def test_awx_credentials_example_passes_syntax_check(tmp_path):
    text = (ROOT / "docs" / "awx.md").read_text()
    match = re.search(r"<!-- file: awx-credentials.yml -->\s*```yaml\n(.*?)```", text, re.S)
    assert match, "docs/awx.md has no awx-credentials.yml block"
    playbook = tmp_path / "awx-credentials.yml"
    playbook.write_text(match.group(1))
    used = {}
    for task in yaml.safe_load(match.group(1))[0]["tasks"]:
        modules = [k for k in task if k.startswith("awx.awx.")]
        assert len(modules) == 1, task
        used.setdefault(modules[0].split(".")[-1], set()).update(task[modules[0]])
        if "loop" in task:      # the files it registers are the collection's
            assert sorted(item.rsplit("/", 1)[-1] for item in task["loop"]) == TYPE_FILES
    for module, options in used.items():
        assert options <= AWX_OPTIONS[module], "%s: unknown option(s) %s" % (module, options - AWX_OPTIONS[module])
    names = dict((load_type(n)["name"], n) for n in TYPE_FILES)
    for task in yaml.safe_load(match.group(1))[0]["tasks"]:
        if "awx.awx.credential" in task:
            assert task["awx.awx.credential"]["credential_type"] in names
            fields = [f["id"] for f in load_type(names[task["awx.awx.credential"]["credential_type"]])["inputs"]["fields"]]
            assert set(task["awx.awx.credential"]["inputs"]) <= set(fields)
    stub = tmp_path / "collections" / "ansible_collections" / "awx" / "awx"
    (stub / "plugins" / "modules").mkdir(parents=True)
    (stub / "meta").mkdir()
    (stub / "meta" / "runtime.yml").write_text("requires_ansible: '>=2.15'\naction_groups:\n  controller: [%s]\n" % ", ".join(sorted(AWX_OPTIONS)))
    (stub / "galaxy.yml").write_text("namespace: awx\nname: awx\nversion: 24.6.1\n")
    for module in AWX_OPTIONS:
        (stub / "plugins" / "modules" / (module + ".py")).write_text(STUB_MODULE.format(name=module))
    paths = "%s:%s" % (tmp_path / "collections", ROOT / ".build" / "collections")
    proc = subprocess.run([tool("ansible-playbook"), "--syntax-check", "-i", "localhost,", str(playbook)], check=False,
                          capture_output=True, text=True, timeout=120, env=ansible_env({"ANSIBLE_COLLECTIONS_PATH": paths}))
    assert proc.returncode == 0, proc.stdout + proc.stderr
