"""scripts/setup.sh and scripts/ansible-test.sh keep ansible-test's state in the project, never in the user's ~/.ansible.

ansible-test has no option or variable for its state directory (``~/.ansible/test``: pip bootstrap cache, sanity
virtual environments, SSH keys); the wrapper runs it with HOME=.build/home, which setup.sh prepares. Both run here
with HOME pointed at an empty directory standing for the user's home, which must stay empty of ``.ansible``.
tests/quality/test_sanity.py runs the full offline sanity through the wrapper.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from collection_copy import ROOT, copy_collection

pytestmark = [pytest.mark.quality, pytest.mark.slow]

ANSIBLE_TEST_HOME = ROOT / ".build" / "home"


def _user_env(fake_home):
    """The environment with HOME replaced; pip keeps the real user's configuration and cache (index, wheels)."""
    env = dict(os.environ)
    real_home = Path(os.path.expanduser("~"))
    env.setdefault("XDG_CONFIG_HOME", str(real_home / ".config"))
    env.setdefault("XDG_CACHE_HOME", str(real_home / ".cache"))
    env["HOME"] = str(fake_home)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def test_setup_prepares_the_ansible_test_home_inside_the_project(tmp_path):
    fake_home = tmp_path / "home"
    fake_home.mkdir()
    env = _user_env(fake_home)
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh")], env=env, capture_output=True, text=True,
                          timeout=1800, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (fake_home / ".ansible").exists(), sorted(str(p) for p in fake_home.rglob("*"))
    bootstraps = list((ANSIBLE_TEST_HOME / ".ansible" / "test" / "cache").glob("get_pip_*.py"))
    assert bootstraps, "setup.sh put no pip bootstrap into %s" % ANSIBLE_TEST_HOME
    for bootstrap in bootstraps:
        assert bootstrap.read_bytes() == (ROOT / "tests" / "quality" / "get_pip_offline.py").read_bytes()
    user_pip_conf = Path(env["XDG_CONFIG_HOME"]) / "pip" / "pip.conf"
    if user_pip_conf.is_file():
        assert (ANSIBLE_TEST_HOME / ".config" / "pip" / "pip.conf").resolve() == user_pip_conf.resolve()


def test_ansible_test_runs_with_the_project_home(tmp_path):
    """A sanity test that needs ansible-test's own virtual environment runs, and the user's home stays untouched."""
    fake_home = tmp_path / "home"
    fake_home.mkdir()
    collection = copy_collection(tmp_path / "src")
    env = _user_env(fake_home)
    env.pop("ANSIBLE_COLLECTIONS_PATH", None)
    env.pop("PYTHONPATH", None)
    python = "%d.%d" % sys.version_info[:2]
    proc = subprocess.run([str(ROOT / "scripts" / "ansible-test.sh"), "sanity", "--test", "shebang", "--python", python,
                           "--requirements", "--color", "no"], cwd=collection, env=env, capture_output=True, text=True,
                          timeout=1800, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Running sanity test \"shebang\"" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert not (fake_home / ".ansible").exists(), sorted(str(p) for p in fake_home.rglob("*"))
    assert list((ANSIBLE_TEST_HOME / ".ansible" / "test" / "venv").glob("sanity*")), \
        "ansible-test made no virtual environment in %s" % ANSIBLE_TEST_HOME
