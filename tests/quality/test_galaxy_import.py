"""The release tarball: ``ansible-galaxy collection build`` leaves out what galaxy.yml's build_ignore says, and
galaxy-importer (what Galaxy and Automation Hub run on an upload) imports it without an error, offline.

galaxy-importer is configured as Galaxy runs it, minus the container: ansible-doc on every module and role,
ansible-lint offline, the changelog check; ansible-test sanity runs in test_sanity.py instead of in a container.
"""
import json
import os
import subprocess
import sys
import tarfile

import pytest
import yaml

from collection_copy import ROOT, copy_collection

pytestmark = [pytest.mark.quality, pytest.mark.slow]

BIN = os.path.dirname(sys.executable)
IMPORTER_CONFIG = """[galaxy-importer]
run_ansible_test = False
run_ansible_doc = True
run_ansible_lint = True
offline_ansible_lint = True
run_flake8 = False
check_changelog = True
check_required_tags = False
require_v1_or_greater = False
log_level_main = INFO
"""
# Files that exist only in a development checkout or CI run: each must stay out of the tarball.
LOCAL_ONLY = ["changelogs/.plugin-cache.yaml", "tests/integration/inventory", "tests/output/junit/x.xml", ".build/x",
              ".venv/x", "scripts/setup.sh", "benchmarks/bench_backup.py", "docs/docsite/build/index.html"]
# Files a user of the collection needs: each must be in it.
SHIPPED = ["MANIFEST.json", "FILES.json", "README.md", "CHANGELOG.rst", "CONTRIBUTING.md", "COPYING", "meta/runtime.yml", "changelogs/changelog.yaml",
           "requirements.txt", "bindep.txt", "docs/repository.md", "docs/docsite/extra-docs.yml", "docs/docsite/links.yml",
           "tests/unit/requirements.txt", "tests/integration/targets/setup_lab/tasks/main.yml"]


# galaxy-importer gives ansible-lint 180 s (loaders/collection.py). On a loaded machine (the suite shares its cores)
# that can run out although the lint is clean: the test then runs the importer's lint command itself, without the limit.
LINT_TIMEOUT = "ERROR: Timeout on call to ansible-lint"
IMPORTER_LINT = ["ansible-lint", "--profile", "production", "--exclude", "tests/integration/", "--exclude", "tests/unit/",
                 "--format=pep8", "--nocolor", "-x", "yaml,var-naming,avoid-dot-notation,import-task-no-when,single-entry-point,use-loop",
                 "--offline"]


def _lint_as_the_importer_does(tarball, work):
    """Errors of galaxy-importer's ansible-lint run on the extracted tarball (findings are warnings on Galaxy too)."""
    root = work / "lint" / "ansible_collections" / "hyperv" / "backup"
    root.mkdir(parents=True)
    with tarfile.open(tarball) as tar:
        tar.extractall(root, filter="data")
    env = _env()
    env["ANSIBLE_COLLECTIONS_PATH"] = str(work / "lint")
    proc = subprocess.run([os.path.join(BIN, IMPORTER_LINT[0])] + IMPORTER_LINT[1:], cwd=root, env=env,
                          capture_output=True, text=True, timeout=1800, check=False)
    return [proc.stderr[-5000:]] if "Traceback (most recent call last):" in proc.stderr else []


def _env():
    env = dict(os.environ)
    env.pop("ANSIBLE_COLLECTIONS_PATH", None)
    env.pop("PYTHONPATH", None)
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")
    return env


@pytest.fixture(scope="module")
def tarball(tmp_path_factory):
    """The collection built from a copy of the checkout, with development leftovers added to that copy."""
    work = tmp_path_factory.mktemp("galaxy_build")
    collection = copy_collection(work / "src")
    for rel in LOCAL_ONLY:
        path = collection / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_text("local only\n")
    proc = subprocess.run([os.path.join(BIN, "ansible-galaxy"), "collection", "build", "--output-path", str(work)],
                          cwd=collection, env=_env(), capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    meta = yaml.safe_load((ROOT / "galaxy.yml").read_text())
    path = work / ("%s-%s-%s.tar.gz" % (meta["namespace"], meta["name"], meta["version"]))
    assert path.is_file(), proc.stdout
    return path


def test_galaxy_yml_has_real_links():
    meta = yaml.safe_load((ROOT / "galaxy.yml").read_text())
    for key in ("repository", "documentation", "homepage", "issues"):
        if key in meta:
            assert meta[key].startswith("https://") and "example" not in meta[key] and ".invalid" not in meta[key], (key, meta[key])


def test_tarball_ships_what_users_need_and_nothing_local(tarball):
    with tarfile.open(tarball) as tar:
        names = set(name[2:] if name.startswith("./") else name for name in tar.getnames())
    leaked = sorted(n for n in names if n in LOCAL_ONLY or n.startswith(("scripts/", "benchmarks/", ".build/", ".venv/", "tests/output/")))
    assert not leaked, "in the tarball although build_ignore leaves them out: %s" % leaked
    missing = [rel for rel in SHIPPED if rel not in names]
    assert not missing, "missing from the tarball: %s" % missing


def test_galaxy_importer_passes(tarball, tmp_path):
    config = tmp_path / "galaxy-importer.cfg"
    config.write_text(IMPORTER_CONFIG)
    env = _env()
    env["GALAXY_IMPORTER_CONFIG"] = str(config)
    env["ANSIBLE_LOCAL_TEMP"] = str(tmp_path / "ansible_tmp")
    proc = subprocess.run([sys.executable, "-m", "galaxy_importer.main", str(tarball)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1800, check=False)
    out = proc.stdout + proc.stderr
    # galaxy-importer exits 0 after some errors (a module whose documentation ansible-doc cannot read): the log says
    errors = [line for line in out.splitlines() if line.startswith(("ERROR:", "CRITICAL:")) or "Traceback" in line]
    if errors == [LINT_TIMEOUT]:
        errors = _lint_as_the_importer_does(tarball, tmp_path)
    assert proc.returncode == 0 and not errors and "Importer processing completed successfully" in out, "\n".join(errors) or out[-20000:]
    result = json.loads((tmp_path / "importer_result.json").read_text())
    contents = {(c["content_type"], c["name"]) for c in result["contents"]}
    assert ("module", "hyperv_backup") in contents and ("role", "hyperv_backup") in contents, sorted(contents)
    # every module's and role's documentation reached the importer (what Galaxy shows)
    # (a module's DOCUMENTATION, a role's README)
    undocumented = [c["content_name"] for c in result["docs_blob"]["contents"]
                    if (c["content_type"] == "module" and not c.get("doc_strings")) or (c["content_type"] == "role" and not c.get("readme_html"))]
    assert not undocumented, "modules or roles without documentation in the import: %s" % undocumented
