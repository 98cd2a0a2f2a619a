"""Integration harness: run real ``ansible-playbook`` plays against lab hosts in a per-test directory.

The ``run_target(name)`` fixture (and ``ansible_playbook(tasks)`` for ad-hoc plays) writes a
playbook that runs on localhost with the venv's Python, gives every hyperv.backup module
``transport: lab`` and the test's own ``lab_directory`` through module_defaults, and fails the test
with the play's output when the play fails. Every run has its own directories (lab, repository,
ANSIBLE_HOME, local temp), so pytest-xdist can run targets in parallel.

The frozen guard (tests/frozen_guard.py) runs after every test: the lab keeps each recovery point's frozen disks
(HYPERV_LAB_KEEP_FROZEN, set for each test module) and every backup committed in the session's temporary
directory is restored and compared with them. A test that damages repositories on purpose opts out with
``@pytest.mark.frozen_guard_off(reason)``.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# The guard's autouse fixtures (tests/frozen_guard.py), shared with the reliability suite: pytest uses fixtures imported into a conftest
from frozen_guard import check_backups_against_frozen_copies, keep_frozen_copies  # noqa: F401 pylint: disable=unused-import

TARGETS_DIR = Path(__file__).resolve().parent / "targets"
ANSIBLE_PLAYBOOK = str(Path(sys.executable).parent / "ansible-playbook")
PLAY_TIMEOUT = 900


class PlaybookResult:
    def __init__(self, rc, output, playbook):
        self.rc = rc
        self.output = output
        self.playbook = playbook


def play_for(tasks_or_roles, work_dir, extra_vars=None):
    """The generated play (a list with one play) for ``roles`` (paths) or inline ``tasks``."""
    lab_directory = str(work_dir / "lab")
    play_vars = {"lab_directory": lab_directory, "repository_path": str(work_dir / "repo"),
                 "work_directory": str(work_dir), "ansible_python_interpreter": sys.executable}
    play_vars.update(extra_vars or {})
    play = {"name": "hyperv.backup integration", "hosts": "localhost", "connection": "local", "gather_facts": False,
            "vars": play_vars,
            # transport comes from the environment too, so modules without a transport option (hyperv_lab) work
            "environment": {"HYPERV_TRANSPORT": "lab", "HYPERV_LAB_DIRECTORY": lab_directory},
            "module_defaults": {"group/hyperv.backup.hyperv": {"lab_directory": lab_directory}}}
    play.update(tasks_or_roles)
    return [play]


def run_play(play, work_dir, timeout=PLAY_TIMEOUT):
    """Run ``play`` with ansible-playbook; returns PlaybookResult (never raises on a failed play)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "lab").mkdir(exist_ok=True)
    playbook = work_dir / "playbook.yml"
    # JSON is YAML: no quoting surprises with Windows paths or Jinja
    playbook.write_text(json.dumps(play, indent=1))
    env = dict(os.environ)
    env.update({
        "ANSIBLE_HOME": str(work_dir / "ansible_home"),
        "ANSIBLE_LOCAL_TEMP": str(work_dir / "ansible_tmp"),
        "ANSIBLE_RETRY_FILES_ENABLED": "false",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_STDOUT_CALLBACK": "default",
        "ANSIBLE_CALLBACK_RESULT_FORMAT": "yaml",
        "ANSIBLE_DEPRECATION_WARNINGS": "false",
        "ANSIBLE_LOCALHOST_WARNING": "false",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
        "PATH": str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
    })
    env.pop("HYPERV_HOST", None)
    proc = subprocess.run([ANSIBLE_PLAYBOOK, "-i", "localhost,", str(playbook)], cwd=str(work_dir), env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
    return PlaybookResult(proc.returncode, proc.stdout + proc.stderr, playbook)


@pytest.fixture
def run_target(tmp_path):
    """Run target ``name`` (tests/integration/targets/<name>/tasks/main.yml) as a role; fail the test on failure."""
    def run(name):
        result = run_play(play_for({"roles": [{"role": str(TARGETS_DIR / name)}]}, tmp_path), tmp_path)
        if result.rc != 0:
            pytest.fail("integration target %s failed (rc %d):\n%s" % (name, result.rc, result.output[-30000:]), pytrace=False)
        return result
    return run


@pytest.fixture
def ansible_playbook(tmp_path):
    """Run inline tasks in the harness's play: ``ansible_playbook(tasks=[...], extra_vars={...})``."""
    def run(tasks, extra_vars=None):
        return run_play(play_for({"tasks": tasks}, tmp_path, extra_vars), tmp_path)
    return run
