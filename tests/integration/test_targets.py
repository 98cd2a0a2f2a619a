"""Every integration target (tests/integration/targets/<name>/tasks/main.yml) run as a real playbook.

Targets are discovered when the tests are collected, so a new directory is picked up without
editing this file. ``targets/<name>/aliases`` may list ``slow`` (marks the test slow) and
``disabled`` (skips it), one per line, like ansible-test aliases.
"""
from pathlib import Path

import pytest

TARGETS_DIR = Path(__file__).resolve().parent / "targets"


def read_aliases(target_dir):
    path = target_dir / "aliases"
    if not path.is_file():
        return set()
    return set(line.split("#", 1)[0].strip() for line in path.read_text().splitlines()) - {""}


def discover_targets():
    params = []
    for main in sorted(TARGETS_DIR.glob("*/tasks/main.yml")):
        target_dir = main.parent.parent
        aliases = read_aliases(target_dir)
        marks = [pytest.mark.integration]
        if "slow" in aliases:
            marks.append(pytest.mark.slow)
        if "disabled" in aliases:
            marks.append(pytest.mark.skip(reason="target %s is disabled in its aliases file" % target_dir.name))
        params.append(pytest.param(target_dir.name, marks=marks, id=target_dir.name))
    return params


def test_discovery_finds_every_target():
    names = [p.id for p in discover_targets()]
    on_disk = sorted(d.name for d in TARGETS_DIR.iterdir() if (d / "tasks" / "main.yml").is_file())
    assert names == on_disk and "hyperv_host_info" in names


def test_aliases_are_parsed(tmp_path):
    (tmp_path / "aliases").write_text("slow  # takes a minute\n\ndisabled\n")
    assert read_aliases(tmp_path) == {"slow", "disabled"}
    assert read_aliases(tmp_path / "missing") == set()


@pytest.mark.integration
def test_a_failing_play_fails_with_its_output(ansible_playbook):
    result = ansible_playbook([{"name": "fail on purpose", "ansible.builtin.fail": {"msg": "marker-1234"}}])
    assert result.rc != 0 and "marker-1234" in result.output


@pytest.mark.parametrize("target", discover_targets())
def test_target(target, run_target):
    run_target(target)
