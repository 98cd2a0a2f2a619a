"""Issue 16 point 9: the schedule role says what failed when systemd-analyze cannot check OnCalendar.

Only a real parse failure ("Failed to parse calendar specification") is reported as "not a systemd calendar
expression"; a systemd-analyze that fails for another reason (here a stand-in that behaves like a systemd older than
235, which has no ``calendar`` command) is reported with its own stderr, and a missing systemd-analyze (a PATH without
it) is reported as missing. In every case nothing is installed.
"""
import os
import stat
import sys
import textwrap
from pathlib import Path

import pytest

from workflow_helpers import run_playbook, tool

pytestmark = pytest.mark.integration

NAME = "hvb-calendar"
APPLY = textwrap.dedent("""\
    - name: Apply the schedule role
      hosts: localhost
      gather_facts: false
      roles:
        - role: hyperv.backup.hyperv_backup_schedule
    """)


@pytest.fixture()
def project(tmp_path):
    (tmp_path / "scheduled.yml").write_text("- name: Stand-in\n  hosts: localhost\n  gather_facts: false\n  tasks: []\n")
    (tmp_path / "inventory.ini").write_text("localhost ansible_connection=local ansible_python_interpreter=%s\n" % sys.executable)
    (tmp_path / "apply.yml").write_text(APPLY)
    return tmp_path


def _apply(project, env=None, **overrides):  # pylint: disable=redefined-outer-name  # project is a pytest fixture
    settings = {"hyperv_backup_schedule_name": NAME, "hyperv_backup_schedule_root": str(project / "root"),
                "hyperv_backup_schedule_manager": "systemd", "hyperv_backup_schedule_playbook": str(project / "scheduled.yml"),
                "hyperv_backup_schedule_inventory": str(project / "inventory.ini"),
                "hyperv_backup_schedule_ansible_playbook": tool("ansible-playbook"),
                "hyperv_backup_schedule_lock_file": str(project / "run.lock"), "hyperv_backup_schedule_enable": False}
    settings.update(overrides)
    return run_playbook(project / "apply.yml", extra_vars=settings, env=env)


def _installed(root):
    return (root / "etc" / "systemd" / "system" / (NAME + ".timer")).exists() or \
        (root / "usr" / "local" / "libexec" / "hyperv-backup" / (NAME + ".sh")).exists()


def _path_without_systemd_analyze(directory):
    """A PATH directory with every command of /usr/bin and /bin but systemd-analyze (the play still needs sh, mkdir, ...)."""
    directory.mkdir()
    for source in (Path("/usr/bin"), Path("/bin")):
        for tool_path in source.iterdir():
            if tool_path.name != "systemd-analyze" and not os.path.lexists(directory / tool_path.name):
                (directory / tool_path.name).symlink_to(tool_path)
    return str(directory)


def test_a_real_parse_failure_names_the_expression(project):  # pylint: disable=redefined-outer-name
    proc = _apply(project, hyperv_backup_schedule_on_calendar="every full moon")
    assert proc.returncode != 0
    assert "is not a systemd calendar expression" in proc.stdout
    assert "Failed to parse calendar specification" in proc.stdout
    assert not _installed(project / "root")


def test_another_systemd_analyze_failure_shows_its_stderr(project):  # pylint: disable=redefined-outer-name
    fake = project / "fakebin"
    fake.mkdir()
    script = fake / "systemd-analyze"
    script.write_text("#!/bin/sh\necho 'Unknown operation calendar.' >&2\nexit 1\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    proc = _apply(project, env={"PATH": str(fake) + os.pathsep + os.environ["PATH"]})
    assert proc.returncode != 0
    assert "is not a systemd calendar expression" not in proc.stdout, proc.stdout[-3000:]
    assert "failed on localhost with rc 1 for a reason other than the expression" in proc.stdout, proc.stdout[-3000:]
    assert "Unknown operation calendar." in proc.stdout
    assert not _installed(project / "root")


def test_a_missing_systemd_analyze_is_named(project, tmp_path):  # pylint: disable=redefined-outer-name
    proc = _apply(project, env={"PATH": _path_without_systemd_analyze(tmp_path / "bin")})
    assert proc.returncode != 0
    assert "is not a systemd calendar expression" not in proc.stdout, proc.stdout[-3000:]
    assert "systemd-analyze could not be run on localhost" in proc.stdout, proc.stdout[-3000:]
    assert not _installed(project / "root")
