"""The execution environment definition and the AWX example of docs/awx.md are valid.

* ansible-builder create accepts the EE definition of docs/awx.md (no container engine needed) with the
  collection tarball that `ansible-galaxy collection build` makes from this checkout;
* ansible-builder's own introspection, run on the collection installed from that tarball, finds the
  Python requirements and the bindep packages through meta/execution-environment.yml;
* the AWX job template + schedule example passes `ansible-playbook --syntax-check`. awx.awx is on Galaxy
  only (unreachable here, not on PyPI), so stand-in modules make the names resolve, and every option the
  example uses is checked against the option names of the real awx.awx modules (recorded below from
  awx.awx 24: awx_collection/plugins/modules/*.py).
"""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from workflow_helpers import ROOT, ansible_env, tool

sys.path.insert(0, str(ROOT / "tests" / "quality"))
from collection_copy import copy_collection  # noqa: E402  pylint: disable=wrong-import-position

pytestmark = pytest.mark.integration

AWX_OPTIONS = {
    "execution_environment": {"name", "new_name", "image", "description", "organization", "credential", "pull", "state"},
    "project": {"name", "new_name", "copy_from", "description", "scm_type", "scm_url", "local_path", "scm_branch",
                "scm_refspec", "credential", "scm_clean", "scm_delete_on_update", "scm_track_submodules",
                "scm_update_on_launch", "scm_update_cache_timeout", "allow_override", "timeout", "default_environment",
                "custom_virtualenv", "organization", "state", "wait", "update_project", "interval",
                "signature_validation_credential", "notification_templates_started", "notification_templates_success",
                "notification_templates_error"},
    "job_template": {"name", "new_name", "copy_from", "description", "organization", "job_type", "inventory", "project",
                     "playbook", "credential", "credentials", "labels", "execution_environment", "forks", "limit",
                     "verbosity", "extra_vars", "job_tags", "force_handlers", "skip_tags", "start_at_task", "timeout",
                     "use_fact_cache", "host_config_key", "ask_scm_branch_on_launch", "ask_diff_mode_on_launch",
                     "ask_variables_on_launch", "ask_limit_on_launch", "ask_tags_on_launch", "ask_skip_tags_on_launch",
                     "ask_job_type_on_launch", "ask_verbosity_on_launch", "ask_inventory_on_launch",
                     "ask_credential_on_launch", "ask_execution_environment_on_launch", "ask_forks_on_launch",
                     "ask_instance_groups_on_launch", "ask_job_slice_count_on_launch", "ask_labels_on_launch",
                     "ask_timeout_on_launch", "survey_enabled", "survey_spec", "become_enabled", "diff_mode",
                     "allow_simultaneous", "custom_virtualenv", "job_slice_count", "webhook_service",
                     "webhook_credential", "scm_branch", "instance_groups", "prevent_instance_group_fallback",
                     "notification_templates_started", "notification_templates_success",
                     "notification_templates_error", "state"},
    "schedule": {"rrule", "name", "new_name", "description", "execution_environment", "extra_data", "forks",
                 "instance_groups", "inventory", "job_slice_count", "labels", "credentials", "scm_branch", "timeout",
                 "job_type", "job_tags", "skip_tags", "limit", "diff_mode", "verbosity", "unified_job_template",
                 "organization", "enabled", "state"},
}

STUB_MODULE = '''#!/usr/bin/python
# Stand-in for awx.awx.{name} used only by the syntax check (awx.awx is not installable offline).
DOCUMENTATION = """
module: {name}
short_description: stand-in
"""
'''


def doc_block(name):
    """The fenced code block that follows ``<!-- file: name -->`` in docs/awx.md."""
    text = (ROOT / "docs" / "awx.md").read_text()
    match = re.search(r"<!-- file: %s -->\s*```[a-z]*\n(.*?)```" % re.escape(name), text, re.S)
    assert match, "docs/awx.md has no block for %s" % name
    return match.group(1)


def test_ansible_builder_create_accepts_the_ee_definition(tmp_path):
    ee_dir = tmp_path / "ee"
    (ee_dir / "collection").mkdir(parents=True)
    (ee_dir / "execution-environment.yml").write_text(doc_block("execution-environment.yml"))
    collection = copy_collection(tmp_path / "src")
    built = subprocess.run([tool("ansible-galaxy"), "collection", "build", "--output-path", str(ee_dir / "collection"),
                            str(collection)], check=False, capture_output=True, text=True, timeout=300, env=ansible_env())
    assert built.returncode == 0, built.stdout + built.stderr
    tarballs = sorted(p.name for p in (ee_dir / "collection").glob("*.tar.gz"))
    version = yaml.safe_load((ROOT / "galaxy.yml").read_text())["version"]
    assert tarballs == ["hyperv-backup-%s.tar.gz" % version]
    definition = yaml.safe_load((ee_dir / "execution-environment.yml").read_text())
    assert definition["dependencies"]["galaxy"]["collections"][0]["name"].endswith(tarballs[0]), \
        "docs/awx.md names another collection version than galaxy.yml"

    context = tmp_path / "context"
    created = subprocess.run([tool("ansible-builder"), "create", "-f", str(ee_dir / "execution-environment.yml"),
                              "-c", str(context), "--output-filename", "Containerfile"],
                             check=False, capture_output=True, text=True, timeout=300)
    assert created.returncode == 0, created.stdout + created.stderr
    containerfile = (context / "Containerfile").read_text()
    assert "ansible-galaxy collection install" in containerfile
    assert "introspect.py introspect" in containerfile
    assert (context / "_build" / "collection" / tarballs[0]).is_file()

    # What the builder stage of the image will find: install the tarball and run the builder's introspection.
    installed = tmp_path / "collections"
    inst = subprocess.run([tool("ansible-galaxy"), "collection", "install", "--offline", "-p", str(installed),
                           str(ee_dir / "collection" / tarballs[0])], check=False, capture_output=True, text=True, timeout=300,
                          env=ansible_env({"ANSIBLE_COLLECTIONS_PATH": str(installed)}))
    assert inst.returncode == 0, inst.stdout + inst.stderr
    pip_out, bindep_out = tmp_path / "pip.txt", tmp_path / "bindep.txt"
    intro = subprocess.run([sys.executable, str(context / "_build" / "scripts" / "introspect.py"), "introspect",
                            "--write-pip", str(pip_out), "--write-bindep", str(bindep_out), str(installed)],
                           check=False, capture_output=True, text=True, timeout=120)
    assert intro.returncode == 0, intro.stdout + intro.stderr
    pip_lines = pip_out.read_text()
    for package in ("pypsrp", "pywinrm", "blake3", "xxhash", "zstandard", "cryptography", "boto3"):
        assert package in pip_lines, pip_lines
    assert "krb5" in bindep_out.read_text()
    # auth kerberos and credssp need the extras in the image, and the headers of the EE's Python to build them
    for requirement in ("pypsrp[kerberos,credssp]", "pywinrm[kerberos,credssp]"):
        assert requirement in pip_lines.replace(" ", ""), pip_lines
    assert re.search(r"^libkrb5-dev \[.*compile", bindep_out.read_text(), re.M), bindep_out.read_text()
    assert "python3.11-devel" in (context / "_build" / "bindep.txt").read_text()


def test_awx_example_passes_syntax_check_and_uses_real_options(tmp_path):
    playbook = tmp_path / "awx-setup.yml"
    playbook.write_text(doc_block("awx-setup.yml"))
    plays = yaml.safe_load(playbook.read_text())
    used = {}
    for task in plays[0]["tasks"]:
        modules = [k for k in task if k.startswith("awx.awx.")]
        assert len(modules) == 1, task
        used.setdefault(modules[0].split(".")[-1], set()).update(task[modules[0]])
    assert set(used) == set(AWX_OPTIONS)
    for module, options in used.items():
        assert options <= AWX_OPTIONS[module], "%s: unknown option(s) %s" % (module, options - AWX_OPTIONS[module])

    stub = tmp_path / "collections" / "ansible_collections" / "awx" / "awx"
    (stub / "plugins" / "modules").mkdir(parents=True)
    (stub / "meta").mkdir()
    (stub / "meta" / "runtime.yml").write_text(
        "requires_ansible: '>=2.15'\naction_groups:\n  controller: [%s]\n" % ", ".join(sorted(AWX_OPTIONS)))
    (stub / "galaxy.yml").write_text("namespace: awx\nname: awx\nversion: 24.6.1\n")
    for module in AWX_OPTIONS:
        (stub / "plugins" / "modules" / (module + ".py")).write_text(STUB_MODULE.format(name=module))
    paths = "%s:%s" % (tmp_path / "collections", ROOT / ".build" / "collections")
    proc = subprocess.run([tool("ansible-playbook"), "--syntax-check", "-i", "localhost,", str(playbook)],
                          check=False, capture_output=True, text=True, timeout=120, env=ansible_env({"ANSIBLE_COLLECTIONS_PATH": paths}))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_collection_metadata_points_at_existing_files():
    meta = yaml.safe_load((ROOT / "meta" / "execution-environment.yml").read_text())
    for entry in ("python", "system"):
        path = ROOT / meta["dependencies"][entry]
        assert path.is_file() and path.read_text().strip(), path
    assert Path(meta["dependencies"]["python"]).name == "requirements.txt"
