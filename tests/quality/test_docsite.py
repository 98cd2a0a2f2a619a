"""The collection's docs site (antsibull-docs + Sphinx) builds offline, and its guides are the current docs/*.md.

The site is what ``antsibull-docs sphinx-init --use-current`` sets up for the collection: the module, role and
playbook documentation, docs/docsite/links.yml, and the guides of docs/docsite/extra-docs.yml (docs/docsite/rst/,
generated from docs/*.md by docsite_rst.py). Offline means no intersphinx inventories: the build tolerates only
the warnings about references into docs.ansible.com that intersphinx would resolve, nothing else.
"""
import os
import re
import subprocess
import sys

import pytest

import docsite_rst
from collection_copy import ROOT

pytestmark = [pytest.mark.quality, pytest.mark.slow]

BIN = os.path.dirname(sys.executable)
OWN_LABEL = "ansible_collections.hyperv.backup."


def _run(cmd, cwd, timeout=900):
    env = dict(os.environ)
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def test_guides_are_generated_from_the_current_docs():
    stale = [str(path.relative_to(ROOT)) for path, text in docsite_rst.expected_files().items()
             if not path.is_file() or path.read_text(encoding="utf-8") != text]
    assert not stale, "out of date with docs/*.md: %s -- run: python tests/quality/docsite_rst.py" % ", ".join(stale)
    listed = set(re.findall(r"^\s*- ref: (\S+)", (ROOT / "docs" / "docsite" / "extra-docs.yml").read_text(), re.M))
    assert listed == set(docsite_rst.GUIDES), "docs/docsite/extra-docs.yml lists %s" % sorted(listed)


def test_collection_docs_lint():
    rc, out = _run([os.path.join(BIN, "antsibull-docs"), "lint-collection-docs", "--plugin-docs", "--check-extra-docs-refs",
                    "--validate-collection-refs", "self", str(ROOT)], cwd=ROOT)
    assert rc == 0, out[-20000:]


def test_docsite_builds_offline(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    site.chmod(0o755)       # sphinx-init and antsibull-docs refuse a directory that others may write to
    rc, out = _run([os.path.join(BIN, "antsibull-docs"), "sphinx-init", "--use-current", "--fail-on-error", "--dest-dir", str(site),
                    "--project", "hyperv.backup", "--title", "hyperv.backup", "--html-short-title", "hyperv.backup",
                    "--copyright", "hyperv.backup developers", "hyperv.backup"], cwd=tmp_path)
    assert rc == 0, out
    with open(site / "conf.py", "a", encoding="utf-8") as conf:
        conf.write("\n# built offline (tests/quality/test_docsite.py): no intersphinx inventories are fetched\nintersphinx_mapping = {}\n")
    (site / "rst").mkdir(exist_ok=True)
    (site / "rst").chmod(0o755)
    rc, out = _run([os.path.join(BIN, "antsibull-docs"), "--config-file", "antsibull-docs.cfg", "collection", "--cleanup", "everything",
                    "--fail-on-error", "--use-current", "--dest-dir", "rst", "hyperv.backup"], cwd=site)
    assert rc == 0, out[-20000:]
    rc, out = _run([os.path.join(BIN, "sphinx-build"), "-M", "html", "rst", "build", "-c", ".", "-q"], cwd=site)
    assert rc == 0, out[-20000:]
    problems = [line for line in out.splitlines() if re.search(r"\b(WARNING|ERROR|CRITICAL)\b", line) and not _intersphinx_only(line)]
    assert not problems, "\n".join(problems)
    html = site / "build" / "html" / "collections" / "hyperv" / "backup"
    for page in ["index.html", "hyperv_backup_module.html", "hyperv_backup_role.html", "docsite/repository.html", "docsite/workflow.html"]:
        assert (html / page).is_file(), page
    assert "From this release on, repository formats stay readable by later versions" in (html / "docsite" / "repository.html").read_text()


def _intersphinx_only(line):
    """A reference to a label of the Ansible docs (resolved by intersphinx when online), not to one of ours."""
    match = re.search(r"undefined label: '([^']+)'", line)
    return bool(match) and not match.group(1).startswith(OWN_LABEL)
