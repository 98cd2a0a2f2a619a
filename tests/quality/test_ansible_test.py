"""ansible-test units and ansible-test integration on the collection, as collection CI runs them next to sanity.

Both run on a copy of the checkout (collection_copy.py: ansible-test wants ansible_collections/hyperv/backup and no
symbolic links), with the project's Python (``--python X.Y``, the origin environment, no containers): the unit tests
under tests/unit, and the targets under tests/integration/targets, each standalone (setup_lab makes its lab host and
repository in ansible-test's output directory). The pytest harness runs the same unit tests and targets; these tests
prove that ansible-test, which knows nothing of tests/conftest.py's setup or the harness's play, runs them too.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from collection_copy import ROOT, copy_collection

pytestmark = [pytest.mark.quality, pytest.mark.slow]

# the project's wrapper: ansible-test's state (~/.ansible/test) stays in .build/home, as for sanity (test_sanity.py)
ANSIBLE_TEST = str(ROOT / "scripts" / "ansible-test.sh")
PYTHON = "%d.%d" % sys.version_info[:2]
TARGETS = ROOT / "tests" / "integration" / "targets"


def run_ansible_test(args, cwd, timeout):
    """Run ansible-test without the checkout's collection path (it sets its own) or the pytest run's lab settings."""
    env = dict((k, v) for k, v in os.environ.items()
               if k not in ("ANSIBLE_COLLECTIONS_PATH", "PYTHONPATH") and not k.startswith(("HYPERV_LAB_", "HYPERV_TRANSPORT", "HYPERV_HOST")))
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    proc = subprocess.run([ANSIBLE_TEST] + args + ["--python", PYTHON, "--color", "no"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
    return proc.returncode, proc.stdout + proc.stderr


# pytest runs every unit test already (tests/unit); here ansible-test runs the module tests and a slice of the
# module_utils tests, enough to prove its own collection layout, import rules and requirements work, without running
# the 1,300 unit tests a second time in CI (they took 40 minutes under ansible-test on a loaded machine).
UNIT_TARGETS = ["tests/unit/plugins/modules/", "tests/unit/plugins/module_utils/test_chunk_index.py",
                "tests/unit/plugins/module_utils/test_paged_changes.py", "tests/unit/plugins/module_utils/test_script_bridge.py",
                "tests/unit/plugins/module_utils/test_repository_copy.py"]


def test_ansible_test_units(tmp_path):
    collection = copy_collection(tmp_path)
    rc, out = run_ansible_test(["units"] + UNIT_TARGETS, cwd=collection, timeout=3600)
    assert rc == 0, out[-30000:]
    # both unit test directories ran, and their tests passed (not just collected)
    assert "Unit test modules with Python %s" % PYTHON in out and "Unit test module_utils with Python %s" % PYTHON in out, out[-5000:]


def test_ansible_test_integration(tmp_path):
    collection = copy_collection(tmp_path)
    rc, out = run_ansible_test(["integration"], cwd=collection, timeout=3600)
    assert rc == 0, out[-30000:]
    ran = sorted(line.split()[1] for line in out.splitlines() if line.startswith("Running ") and line.endswith(" integration test role"))
    assert ran == standalone_targets(), out[-5000:]


def standalone_targets():
    """The targets ansible-test runs by itself: all but the setup_ dependencies and disabled ones."""
    names = []
    for target in sorted(p for p in TARGETS.iterdir() if (p / "tasks" / "main.yml").is_file()):
        aliases = read_aliases(target)
        if not target.name.startswith("setup_") and not aliases & {"disabled", "unsupported", "unstable"}:
            names.append(target.name)
    return names


def read_aliases(target):
    path = target / "aliases"
    lines = path.read_text().splitlines() if path.is_file() else []
    return set(line.split("#", 1)[0].strip() for line in lines) - {""}


@pytest.mark.parametrize("target", [p.name for p in sorted(TARGETS.iterdir()) if (p / "tasks" / "main.yml").is_file()])
def test_every_target_is_standalone(target):
    """ansible-test runs a target as a role by its name, with no harness around it: each target has aliases, gets
    its lab from setup_lab and sets the module defaults itself, and no collection role shadows its name."""
    directory = TARGETS / target
    assert (directory / "aliases").is_file(), "%s has no aliases file" % target
    assert "context/controller" in read_aliases(directory), "%s: the lab host runs on the controller (context/controller)" % target
    assert not (ROOT / "roles" / target).exists(), "target %s is shadowed by the collection role of that name" % target
    if target.startswith("setup_"):
        return
    meta = yaml.safe_load((directory / "meta" / "main.yml").read_text())
    assert "setup_lab" in meta["dependencies"], "%s does not depend on setup_lab" % target
    main = yaml.safe_load((directory / "tasks" / "main.yml").read_text())
    assert any("group/hyperv.backup.hyperv" in (task.get("module_defaults") or {}) for task in main), \
        "%s/tasks/main.yml sets no module_defaults for group/hyperv.backup.hyperv" % target


def test_unit_requirements_cover_the_runtime_requirements():
    """ansible-test --requirements installs tests/unit/requirements.txt on its own (it cannot include -r files)."""
    def names(path):
        out = set()
        for line in Path(path).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line and not line.startswith("-"):
                out.add(line.split(";")[0].split("[")[0].split("=")[0].split(">")[0].split("<")[0].split("~")[0].strip().lower())
        return out
    missing = names(ROOT / "requirements.txt") - {"ansible-core"} - names(ROOT / "tests" / "unit" / "requirements.txt")
    assert not missing, "add %s to tests/unit/requirements.txt" % ", ".join(sorted(missing))
