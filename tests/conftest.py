"""Shared pytest setup: make the collection importable as ``ansible_collections.hyperv.backup``.

``scripts/setup.sh`` links the checkout into ``.build/collections``; this repeats the link so a plain
``pytest`` from a checkout works too, and exports the paths so that playbooks run by the tests find
the collection and the virtual environment's Python.
"""
import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# ansible-test units runs these tests from a collection tree (<dir>/ansible_collections/hyperv/backup) with
# ANSIBLE_COLLECTIONS_PATH=<dir> and its own import hooks; its pytest workers read that variable, so it stays.
UNDER_ANSIBLE_TEST = (len(ROOT.parents) > 2 and ROOT.parents[1].name == "ansible_collections"
                      and os.environ.get("ANSIBLE_COLLECTIONS_PATH") == str(ROOT.parents[2]))
COLLECTIONS = ROOT.parents[2] if UNDER_ANSIBLE_TEST else ROOT / ".build" / "collections"
_link = COLLECTIONS / "ansible_collections" / "hyperv" / "backup"
if not _link.exists():
    _link.parent.mkdir(parents=True, exist_ok=True)
    try:
        _link.symlink_to(ROOT)
    except FileExistsError:
        pass
if str(COLLECTIONS) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS))
os.environ["ANSIBLE_COLLECTIONS_PATH"] = str(COLLECTIONS)
os.environ["ANSIBLE_COLLECTIONS_SCAN_SYS_PATH"] = "false"
# Each proxy remembers what it saw of every repository (repository_memory.py); tests keep that memory out of ~/.local/state.
if not os.environ.get("HYPERV_BACKUP_STATE_DIR"):
    os.environ["HYPERV_BACKUP_STATE_DIR"] = tempfile.mkdtemp(prefix="hyperv-backup-state-")
    # removed when this test process ends (one per xdist worker), or every run would leave a directory in /tmp
    atexit.register(shutil.rmtree, os.environ["HYPERV_BACKUP_STATE_DIR"], True)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(COLLECTIONS), os.environ.get("PYTHONPATH")) if p)
_venv_bin = str(Path(sys.executable).parent)
if _venv_bin not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = _venv_bin + os.pathsep + os.environ.get("PATH", "")


# pytest.ini's markers: ansible-test units runs pytest with its own ini file (and --strict-markers)
MARKERS = {
    "integration": "runs real playbooks against lab hosts",
    "slow": "takes more than a few seconds",
    "quality": "ansible-test sanity, ansible-lint, molecule",
    "reliability": "fault injection against the lab host and the repository",
}


def give_subprocesses_the_whole_ansible(config):
    """ansible-test units runs module and module_utils tests with a PYTHONPATH whose ``ansible`` package holds only
    module_utils (so that they cannot import controller code). This process keeps that view (its sys.path is set);
    the ansible-playbook runs some unit tests start get the installed ansible-core. Under xdist the controller leaves
    the variable alone, so that its workers start with ansible-test's view too."""
    if not UNDER_ANSIBLE_TEST or (getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput")):
        return
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and not _partial_ansible(p))


def _partial_ansible(path):
    return os.path.isfile(os.path.join(path, "ansible", "__init__.py")) and not os.path.isdir(os.path.join(path, "ansible", "cli"))


# --- the frozen guard (tests/frozen_guard.py): markers, and its totals at the end of the run ----------------------
# The integration and reliability suites check every backup against the disk at its recovery point after each
# test. Here: the markers it reads, and the run's verdict on the guard itself -- a run whose tests made backups
# through the lab and of which the guard compared none has checked nothing, and fails.

_GUARD_TOTALS = {}


def pytest_configure(config):
    give_subprocesses_the_whole_ansible(config)
    declared = set(line.split(":", 1)[0].split("(", 1)[0].strip() for line in config.getini("markers"))
    for name, description in MARKERS.items():
        if name not in declared:
            config.addinivalue_line("markers", "%s: %s" % (name, description))
    config.addinivalue_line("markers", "frozen_guard_off(reason): the test damages repositories on purpose; the frozen "
                                       "guard leaves its repositories alone (say why)")
    config.addinivalue_line("markers", "frozen_guard(passphrase=None): how the frozen guard opens the test's encrypted repositories")


def _add_totals(totals):
    for name, count in (totals or {}).items():
        _GUARD_TOTALS[name] = _GUARD_TOTALS.get(name, 0) + int(count)


@pytest.fixture(autouse=True)
def leave_unguarded_repositories_to_their_tests(request):
    """A unit or quality test's repositories are not the guard's business: with pytest-xdist such tests share a worker
    (and its temporary directory) with the guarded suites, so after each one its own tmp_path is set aside."""
    guarded = any(os.sep + suite + os.sep in str(request.node.fspath) for suite in ("integration", "reliability"))
    # taken before the test (the test asked for it anyway), so that it is still there at this fixture's teardown
    own = None if guarded or "tmp_path" not in request.fixturenames else request.getfixturevalue("tmp_path")
    yield
    guard = sys.modules.get("frozen_guard")
    if guard is not None and own is not None:
        guard.process_guard().ignore(str(own))


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """xdist: a worker's guard totals (sent in its workeroutput) join the run's."""
    _add_totals(getattr(node, "workeroutput", {}).get("frozen_guard"))


def pytest_sessionfinish(session):
    guard = sys.modules.get("frozen_guard")
    totals = guard.process_totals() if guard is not None else None
    if hasattr(session.config, "workerinput"):          # an xdist worker: the controller judges
        if totals is not None:
            session.config.workeroutput["frozen_guard"] = totals
        return
    _add_totals(totals)
    if not _GUARD_TOTALS:
        return
    if _GUARD_TOTALS.get("unmatched") and not _GUARD_TOTALS.get("checked"):
        _GUARD_TOTALS["nothing_checked"] = 1
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    if not _GUARD_TOTALS:
        return
    line = ("frozen guard: %(checked)d backup(s), %(disks)d disk(s) equal to the disk at their recovery point; "
            "%(unmatched)d backup(s) of a recovery point without a frozen copy, %(synthetic)d naming no recovery point"
            % dict({"checked": 0, "disks": 0, "unmatched": 0, "synthetic": 0}, **_GUARD_TOTALS))
    if _GUARD_TOTALS.get("nothing_checked"):
        line += ": the guard checked NOTHING although backups of recovery points were made -- a failure of the guard"
    terminalreporter.write_line(line, red=bool(_GUARD_TOTALS.get("nothing_checked")))
