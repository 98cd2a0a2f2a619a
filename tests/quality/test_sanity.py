"""ansible-test sanity and ansible-lint on the collection, as the issue requires: both clean."""
import os
import subprocess
import sys

import pytest

from collection_copy import ROOT, copy_collection

pytestmark = [pytest.mark.quality, pytest.mark.slow]


def _run(cmd, cwd, timeout, isolated=False):
    """Run a quality tool; ``isolated`` hides the collection link, which ansible-test must not see."""
    env = dict(os.environ)
    if isolated:
        env.pop("ANSIBLE_COLLECTIONS_PATH", None)
        env.pop("PYTHONPATH", None)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def test_ansible_test_sanity(tmp_path):
    collection = copy_collection(tmp_path)
    python = "%d.%d" % sys.version_info[:2]
    # scripts/ansible-test.sh keeps ansible-test's state (pip bootstrap, sanity virtualenvs) in .build/home, not ~/.ansible
    rc, out = _run([str(ROOT / "scripts" / "ansible-test.sh"), "sanity", "--python", python,
                    "--requirements", "--color", "no"], cwd=collection, timeout=2400, isolated=True)
    problems = [line for line in out.splitlines() if line.startswith(("ERROR:", "FATAL:")) or ": error:" in line]
    assert rc == 0, "\n".join(problems[-300:]) or out[-20000:]
    assert sorted(p.name for p in (ROOT / ".build" / "home" / ".ansible" / "test" / "venv").glob("sanity*")), \
        "ansible-test made its sanity virtual environments outside .build/home"


def test_ansible_lint():
    rc, out = _run([os.path.join(os.path.dirname(sys.executable), "ansible-lint"), "--offline", "-q", "--nocolor"],
                   cwd=ROOT, timeout=900)
    assert rc == 0, out[-20000:]
