"""Issue 16 point 5: what ansible-doc shows for every module is there and is true.

Static, for every file under plugins/modules: DOCUMENTATION has ``attributes`` (check_mode, diff_mode, platform)
and ``seealso`` naming modules that exist. Dynamic: every module's main code paths run in this process against a
lab host and a local repository (the modules' main() with patched arguments, exit_json recorded), and every key a
module returns -- at the top level, and inside each value whose RETURN entry documents its keys with ``contains``
-- must be documented in RETURN. ``diff`` may only be returned by a module whose diff_mode support is not ``none``.
"""
import importlib
import os
import socket
from pathlib import Path

import pytest
import yaml
from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args

from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_admin
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import LabLayout

MODULES_DIR = Path(__file__).resolve().parents[4] / "plugins" / "modules"
MODULE_NAMES = sorted(p.stem for p in MODULES_DIR.glob("*.py") if p.stem != "__init__")
# Keys Ansible documents once for every module (Common Return Values); `diff` is checked against diff_mode.
COMMON_KEYS = {"changed", "failed", "msg", "warnings", "deprecations", "invocation"}
MiB = 1024 * 1024


def _module(name):
    return importlib.import_module("ansible_collections.hyperv.backup.plugins.modules." + name)


def _doc(name, part="DOCUMENTATION"):
    return yaml.safe_load(getattr(_module(name), part)) or {}


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_attributes_and_seealso(name):
    doc = _doc(name)
    attributes = doc.get("attributes") or {}
    missing = [a for a in ("check_mode", "diff_mode", "platform") if a not in attributes]
    assert not missing, "%s: DOCUMENTATION has no attributes %s" % (name, ", ".join(missing))
    for attribute in ("check_mode", "diff_mode"):
        support = attributes[attribute].get("support")
        assert support in ("full", "partial", "none"), "%s: attributes.%s.support is %r" % (name, attribute, support)
        if support == "partial":
            assert attributes[attribute].get("details"), "%s: partial %s support must say what is left out" % (name, attribute)
    assert attributes["platform"].get("platforms"), "%s: attributes.platform names no platforms" % name
    seealso = doc.get("seealso") or []
    assert seealso, "%s: DOCUMENTATION has no seealso" % name
    for entry in seealso:
        if "module" in entry:
            target = entry["module"]
            assert target.startswith("hyperv.backup.") and target.split(".")[-1] in MODULE_NAMES, (name, target)
        else:
            assert "example.invalid" not in str(entry.get("link", "")), "%s: seealso links to a placeholder" % name


# --- every returned key documented --------------------------------------------------------------------------------

class _Exit(Exception):
    pass


class _Fail(Exception):
    pass


@pytest.fixture
def recorded(monkeypatch):
    """{module name: [result, ...]} of every exit_json; fail_json raises _Fail with its arguments."""
    results = {}

    def exit_json(self, **kwargs):
        results.setdefault(_running[0], []).append(kwargs)      # the module whose main() run() called
        raise _Exit(kwargs)

    def fail_json(self, **kwargs):
        raise _Fail(kwargs)

    monkeypatch.setattr(basic.AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", fail_json)
    return results


_running = [None]


def run(name, **args):
    """Run module ``name`` with ``args``; returns its result (fails the test with the module's message on failure)."""
    _running[0] = name
    with patch_module_args(args):
        try:
            _module(name).main()
        except _Exit as done:
            return done.args[0]
        except _Fail as failed:
            pytest.fail("%s %r failed: %s" % (name, args, failed.args[0].get("msg")))
    pytest.fail("%s did not exit" % name)
    return None


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _undocumented(value, documented, path):
    """Keys of ``value`` (a result or a returned dict / list of dicts) that ``documented`` (RETURN entries) lacks."""
    out = []
    items = value if isinstance(value, list) else [value]
    for item in items:
        if not isinstance(item, dict):
            continue
        for key, sub in item.items():
            if key not in documented:
                out.append(path + key)
                continue
            contains = (documented[key] or {}).get("contains")
            if contains and sub is not None:
                out.extend(_undocumented(sub, contains, path + key + "."))
    return out


def _check_documented(results):
    problems = []
    for name, runs in sorted(results.items()):
        documented = _doc(name, "RETURN")
        diff_support = _doc(name)["attributes"]["diff_mode"]["support"]
        for result in runs:
            keys = dict((k, v) for k, v in result.items() if k not in COMMON_KEYS and not (k == "diff" and diff_support != "none"))
            problems.extend("%s returns %s" % (name, key) for key in _undocumented(keys, documented, ""))
    return sorted(set(problems))


def test_every_returned_key_is_documented(recorded, tmp_path, monkeypatch):
    """Runs each module's main paths (check mode and real, every state that works without S3) on a lab host."""
    monkeypatch.delenv("HYPERV_BACKUP_RUN_ID", raising=False)
    monkeypatch.delenv("JOB_ID", raising=False)
    monkeypatch.delenv("HYPERV_BACKUP_REPOSITORY_PASSPHRASE", raising=False)
    lab = {"lab_directory": str(tmp_path / "lab"), "host": "hv1"}
    host = dict(lab, transport="lab")
    repo = {"repository": str(tmp_path / "repo")}
    # the key states on a repository of their own: every open of an encrypted repository costs a scrypt derivation
    keyed = {"repository": str(tmp_path / "keyed"), "repository_passphrase": "first passphrase"}
    check = {"_ansible_check_mode": True}
    diff = {"_ansible_diff": True}

    # the lab: create (check, real), change, guest writes, grow a disk, checkpoint and apply it, move, remove
    vms = [{"name": "web01", "checkpoints": ["before"], "disks": [{"size": 4 * MiB, "fill": {"seed": 1, "percent": 50}}]},
           {"name": "db01", "disks": [{"size": 2 * MiB}]}]
    run("hyperv_lab", era="2019", vms=vms, **dict(lab, **check, **diff))
    run("hyperv_lab", era="2019", vms=vms, services={"vss": "Stopped"}, **dict(lab, **diff))
    run("hyperv_lab", era="2019", vms=vms, **lab)
    run("hyperv_lab", churn=[{"vm": "web01", "seed": 2, "writes": 4}], **dict(lab, **diff))
    run("hyperv_lab", apply_checkpoint={"vm": "web01", "checkpoint": "before"}, **lab)
    run("hyperv_lab", resize_disk={"vm": "db01", "size": 3 * MiB}, **lab)
    run("hyperv_lab", lab_directory=lab["lab_directory"], host="hv2", era="2022")
    run("hyperv_lab", migrate_to={"vm": "db01", "host": "hv2"}, **dict(lab, **diff))
    lab_admin.ensure_vm(LabLayout(lab["lab_directory"], "hv1"), {"name": "web01", "state": "Running"})

    # the host
    run("hyperv_host_info", **host)
    run("hyperv_vss_ensure", enable_backup_integration=True, **dict(host, **check, **diff))
    run("hyperv_vss_ensure", enable_backup_integration=True, **dict(host, **diff))

    # recovery points: every state
    run("hyperv_recovery_point", vm="web01", **dict(host, **check))
    point = run("hyperv_recovery_point", vm="web01", run_id="docs-1", **host)["recovery_point"]
    run("hyperv_recovery_point", vm="web01", state="changes", id=point["id"], **host)
    run("hyperv_recovery_point", vm="web01", state="reference_point", id=point["id"], **dict(host, **check))
    run("hyperv_recovery_point", vm="web01", state="reference_point", id=point["id"], **host)
    vss_point = run("hyperv_recovery_point", vm="web01", method="vss", run_id="docs-2", **host)["recovery_point"]
    run("hyperv_recovery_point", vm="web01", state="absent", id=vss_point["id"], **dict(host, **check))
    run("hyperv_recovery_point", vm="web01", state="absent", id=vss_point["id"], **host)
    run("hyperv_recovery_point", vm="web01", state="cleaned", run_id="docs-3", **host)

    # the repository: create, back up (check, full, incremental), list, verify, restore, prune, keys
    run("hyperv_backup_repository", chunk_size=65536, **dict(repo, **check, **diff))
    run("hyperv_backup_repository", chunk_size=65536, **dict(repo, **diff))
    run("hyperv_backup", vm="web01", **dict(host, **repo, **check))
    full = run("hyperv_backup", vm="web01", run_id="docs-4", **dict(host, **repo))
    run("hyperv_lab", churn=[{"vm": "web01", "seed": 3, "writes": 4}], **lab)
    run("hyperv_backup", vm="web01", run_id="docs-5", **dict(host, **repo))
    catalog = run("hyperv_backup_info", **repo)["backups"]
    run("hyperv_backup_info", vm_name="web01", include_in_progress=True, **repo)
    run("hyperv_backup_repository", state="verified", **repo)
    run("hyperv_backup_info", backup_id=full["backup_id"], **repo)        # a listing after a verify: with its status
    run("hyperv_restore", vm="web01", destination=str(tmp_path / "restore"), **dict(repo, **check))
    run("hyperv_restore", backup_id=full["backup_id"], destination=str(tmp_path / "restore"), **repo)
    # file restore (the lab disk has no partition table: an empty listing) and an NBD export (check mode)
    run("hyperv_file_restore", backup_id=full["backup_id"], **repo)
    export = dict(repo, backup_id=full["backup_id"], port=_free_port(), state_dir=str(tmp_path / "exports"))
    run("hyperv_backup_export", **dict(export, **check))
    run("hyperv_backup_export", state="absent", **export)
    run("hyperv_backup_repository", state="pruned", keep_last=1, **dict(repo, **check, **diff))
    run("hyperv_backup_repository", state="pruned", keep_last=1, **dict(repo, **diff))
    second_copy = {"repository": str(tmp_path / "copy")}     # issue 15: a second copy (plain, like its source)
    run("hyperv_backup_repository", copy_keys_from=repo, **dict(second_copy, **check))
    run("hyperv_backup_repository", copy_keys_from=repo, **second_copy)
    run("hyperv_backup_copy", target=second_copy, **dict(repo, **check))
    run("hyperv_backup_copy", target=second_copy, latest_per_vm=True, **repo)
    second = "second passphrase"
    run("hyperv_backup_repository", chunk_size=65536, **keyed)
    run("hyperv_backup_repository", state="key_slot_added", new_repository_passphrase=second, **dict(keyed, **check, **diff))
    run("hyperv_backup_repository", state="key_slot_added", new_repository_passphrase=second, **dict(keyed, **diff))
    run("hyperv_backup_repository", state="key_exported", key_file=str(tmp_path / "keys.json"), **dict(keyed, **diff))
    run("hyperv_backup_repository", state="passphrase_changed", new_repository_passphrase="third passphrase",
        **dict(keyed, **check, **diff))
    run("hyperv_backup_repository", state="key_slot_removed", key_slot_label="recovery", **dict(keyed, **check, **diff))
    run("hyperv_backup_repository", state="key_slot_removed", key_slot_label="recovery", **dict(keyed, **diff))
    os.rename(os.path.join(keyed["repository"], "config"), str(tmp_path / "config.moved"))
    run("hyperv_backup_repository", state="key_imported", key_file=str(tmp_path / "keys.json"), **dict(keyed, **diff))
    run("hyperv_backup_report", directory=str(tmp_path / "reports"), run_id="docs-5", catalog=catalog,
        results=[{"host": "hv1", "vm": "web01", "status": "success", "backup_type": "incremental"},
                 {"host": "hv1", "vm": "db01", "status": "failed", "error": "no such VM"}])
    run("hyperv_backup_report", directory=str(tmp_path / "reports"), run_id="docs-6", results=[], **check)

    run("hyperv_lab", state="absent", **dict(lab, **check, **diff))
    run("hyperv_lab", state="absent", **dict(lab, **diff))

    problems = _check_documented(recorded)
    assert not problems, "keys returned but not in RETURN:\n" + "\n".join(problems)
    assert set(recorded) == set(MODULE_NAMES), "modules not run here (add their main paths): %s" % sorted(set(MODULE_NAMES) - set(recorded))
