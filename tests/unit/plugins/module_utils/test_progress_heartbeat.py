"""Issue 16 point 10: a copy whose poller (the role's progress loop) has gone silent stops by itself.

The roles run copies as async jobs, which outlive a cancelled ansible-playbook run; the reporter checks the
heartbeat file the role's loop touches and raises CopyAbandoned once it is older than the allowed silence.
"""
import os

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.backup import progress as progress_mod
from ansible_collections.hyperv.backup.plugins.module_utils.backup.progress import CopyAbandoned, Heartbeat, ProgressReporter


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


def test_a_fresh_heartbeat_lets_the_copy_go_on_and_a_stale_one_stops_it(tmp_path):
    beat = tmp_path / "heartbeat"
    beat.write_text("")
    touched = os.stat(beat).st_mtime
    clock = Clock(touched)
    heartbeat = Heartbeat(str(beat), 60, clock=clock)
    reporter = ProgressReporter(str(tmp_path / "p.jsonl"), total_bytes=100, heartbeat=heartbeat)
    clock.now = touched + 59
    reporter.advance(10)                       # within the allowed silence
    clock.now = touched + 61 + progress_mod.HEARTBEAT_CHECK_SECONDS
    with pytest.raises(CopyAbandoned) as raised:
        reporter.advance(10)
    assert "cancelled or killed" in str(raised.value) and str(beat) in str(raised.value)
    os.utime(beat, (clock.now, clock.now))     # the poller is back: no longer stale
    clock.now += progress_mod.HEARTBEAT_CHECK_SECONDS + 1
    reporter.advance(10)


def test_a_heartbeat_file_not_written_yet_counts_from_the_start_of_the_copy(tmp_path):
    clock = Clock(1000.0)
    heartbeat = Heartbeat(str(tmp_path / "missing"), 30, clock=clock)
    clock.now = 1029.0
    heartbeat.check()
    clock.now = 1031.0 + progress_mod.HEARTBEAT_CHECK_SECONDS
    with pytest.raises(CopyAbandoned):
        heartbeat.check()


def test_the_heartbeat_comes_from_the_environment_only_for_a_copy_with_a_progress_file(tmp_path, monkeypatch):
    monkeypatch.setenv(progress_mod.HEARTBEAT_FILE_ENV, str(tmp_path / "beat"))
    monkeypatch.setenv(progress_mod.HEARTBEAT_SECONDS_ENV, "90")
    assert ProgressReporter(str(tmp_path / "p.jsonl")).heartbeat.seconds == 90
    assert ProgressReporter(None).heartbeat is None
    monkeypatch.setenv(progress_mod.HEARTBEAT_SECONDS_ENV, "soon")
    assert ProgressReporter(str(tmp_path / "q.jsonl")).heartbeat is None
    monkeypatch.delenv(progress_mod.HEARTBEAT_FILE_ENV)
    assert Heartbeat.from_environment() is None
