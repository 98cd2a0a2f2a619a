"""The hyperv_backup_schedule role, installed into a scratch root (nothing goes into the real system).

Checks: systemd-analyze verify accepts the generated timer and service; the timer is enabled offline;
a bad OnCalendar is refused with a clear message; the installed wrapper really runs a playbook under
a lock, so a second run started while the first still runs is skipped; the cron variant; idempotence;
removal.
"""
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from workflow_helpers import ansible_env, run_playbook, tool

pytestmark = pytest.mark.integration

NAME = "hvb-test"

# The scheduled playbook used here: records that it ran, with an exported variable, and waits so
# that a second run can try to start while it still holds the lock.
SCHEDULED = textwrap.dedent("""\
    - name: Stand-in for the backup playbook
      hosts: localhost
      gather_facts: false
      tasks:
        - name: Record the run
          ansible.builtin.copy:
            dest: "{{ marker }}"
            content: "{{ lookup('ansible.builtin.env', 'HVB_TEST_GREETING') }} {{ run_label }}\\n"
            mode: "0600"
        - name: Keep the lock for a while
          ansible.builtin.pause:
            seconds: "{{ hold_seconds }}"
    """)


def _apply(tmp_path, root, **overrides):
    settings = {
        "hyperv_backup_schedule_name": NAME,
        "hyperv_backup_schedule_root": str(root),
        "hyperv_backup_schedule_manager": "systemd",
        "hyperv_backup_schedule_playbook": str(tmp_path / "scheduled.yml"),
        "hyperv_backup_schedule_inventory": str(tmp_path / "inventory.ini"),
        "hyperv_backup_schedule_ansible_playbook": tool("ansible-playbook"),
        "hyperv_backup_schedule_lock_file": str(tmp_path / "run.lock"),
        "hyperv_backup_schedule_environment": {"HVB_TEST_GREETING": "hello world"},
        "hyperv_backup_schedule_extra_vars": {"marker": str(tmp_path / "ran.txt"), "run_label": "it's scheduled",
                                              "hold_seconds": 4},
        "hyperv_backup_schedule_timeout_seconds": 600,
    }
    settings.update(overrides)
    play = tmp_path / "apply.yml"
    play.write_text(textwrap.dedent("""\
        - name: Apply the schedule role
          hosts: localhost
          gather_facts: false
          roles:
            - role: hyperv.backup.hyperv_backup_schedule
        """))
    return run_playbook(play, extra_vars=settings)


@pytest.fixture()
def project(tmp_path):
    (tmp_path / "scheduled.yml").write_text(SCHEDULED)
    (tmp_path / "inventory.ini").write_text("localhost ansible_connection=local ansible_python_interpreter=%s\n"
                                            % sys.executable)
    return tmp_path


def _verify_root(root):
    """Give the scratch root the distribution's units so systemd-analyze can resolve timers.target etc."""
    target = root / "usr" / "lib" / "systemd" / "system"
    if not target.exists():
        shutil.copytree("/usr/lib/systemd/system", target, symlinks=True)
    if not (root / "lib").exists():
        (root / "lib").symlink_to("usr/lib")


def _systemd_analyze_verify(root):
    units = root / "etc" / "systemd" / "system"
    return subprocess.run(["systemd-analyze", "verify", "--root=%s" % root, str(units / (NAME + ".timer")),
                           str(units / (NAME + ".service"))], check=False, capture_output=True, text=True, timeout=120)


def test_systemd_timer_installs_verifies_and_runs_under_a_lock(project):
    root = project / "root"
    proc = _apply(project, root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    units = root / "etc" / "systemd" / "system"
    timer = (units / (NAME + ".timer")).read_text()
    service = (units / (NAME + ".service")).read_text()
    assert "OnCalendar=*-*-* 22:00:00" in timer and "Unit=%s.service" % NAME in timer
    assert "ExecStart=/usr/local/libexec/hyperv-backup/%s.sh" % NAME in service
    assert (units / "timers.target.wants" / (NAME + ".timer")).is_symlink()

    _verify_root(root)
    verified = _systemd_analyze_verify(root)
    assert verified.returncode == 0, verified.stdout + verified.stderr

    # The check can fail: without the script that ExecStart names, verify refuses the service.
    script = root / "usr" / "local" / "libexec" / "hyperv-backup" / (NAME + ".sh")
    saved = script.read_bytes()
    script.unlink()
    assert _systemd_analyze_verify(root).returncode != 0
    script.write_bytes(saved)
    script.chmod(0o755)

    # Idempotent: a second application changes nothing.
    again = _apply(project, root)
    assert again.returncode == 0 and "changed=0" in again.stdout, again.stdout

    # The wrapper runs the playbook; a second run while the first holds the lock is skipped.
    first = subprocess.Popen([str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ansible_env())
    deadline = time.time() + 60
    while not (project / "ran.txt").exists() and time.time() < deadline and first.poll() is None:
        time.sleep(0.2)
    second = subprocess.run([str(script)], check=False, capture_output=True, text=True, env=ansible_env(), timeout=60)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, out + err
    assert second.returncode == 75, second.stdout + second.stderr
    assert "another run holds" in second.stderr and "skipped" in second.stderr
    assert (project / "ran.txt").read_text() == "hello world it's scheduled\n"


def test_bad_calendar_is_refused(project):
    proc = _apply(project, project / "root", hyperv_backup_schedule_on_calendar="every full moon")
    assert proc.returncode != 0
    assert "is not a systemd calendar expression" in proc.stdout
    assert not (project / "root" / "etc" / "systemd" / "system" / (NAME + ".timer")).exists()
    assert not (project / "root" / "usr" / "local" / "libexec" / "hyperv-backup" / (NAME + ".sh")).exists()


def test_bad_settings_are_refused(project):
    proc = _apply(project, project / "root", hyperv_backup_schedule_playbook="relative/backup.yml")
    assert proc.returncode != 0 and "must be absolute paths" in proc.stdout
    proc = _apply(project, project / "root", hyperv_backup_schedule_manager="launchd")
    assert proc.returncode != 0 and "hyperv_backup_schedule_manager" in proc.stdout


def test_cron_variant_and_removal(project):
    root = project / "root"
    proc = _apply(project, root, hyperv_backup_schedule_manager="cron", hyperv_backup_schedule_cron_schedule="15 1 * * 1-5")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cron = (root / "etc" / "cron.d" / NAME).read_text()
    entry = [line for line in cron.splitlines() if line and not line.startswith("#") and "=" not in line]
    assert entry == ["15 1 * * 1-5 root /usr/local/libexec/hyperv-backup/%s.sh >> /var/log/%s.log 2>&1" % (NAME, NAME)]
    assert not (root / "etc" / "systemd").exists()

    removed = _apply(project, root, hyperv_backup_schedule_manager="cron", hyperv_backup_schedule_state="absent")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert not (root / "etc" / "cron.d" / NAME).exists()
    assert not (root / "usr" / "local" / "libexec" / "hyperv-backup" / (NAME + ".sh")).exists()
