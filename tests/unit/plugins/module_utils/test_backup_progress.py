"""Progress file of long copies (progress.py)."""
from ansible_collections.hyperv.backup.plugins.module_utils.backup.progress import ProgressReporter, read_progress


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_lines_at_most_once_per_interval_and_a_final_line(tmp_path):
    clock = Clock()
    path = tmp_path / "sub" / "backup.progress"
    progress = ProgressReporter(str(path), total_bytes=1000, clock=clock)
    progress.set_phase("copying")
    for _update in range(10):                 # ten updates within the same second: no new line
        clock.now += 0.05
        progress.advance(50)
    clock.now += 1.0
    progress.advance(500)               # a second later: one line
    progress.finish()
    lines = read_progress(str(path))
    # the phase line, nothing during the next half second, one line a second later, the final line
    assert [line["phase"] for line in lines] == ["copying", "copying", "done"]
    assert [line["done_bytes"] for line in lines] == [0, 1000, 1000]
    assert lines[-1]["percent"] == 100.0 and lines[1]["percent"] == 100.0 and lines[0]["percent"] == 0.0
    assert lines[-1]["bytes_per_second"] == int(1000 / (clock.now - 100.0))


def test_a_new_run_starts_a_fresh_file(tmp_path):
    path = tmp_path / "p"
    path.write_text('{"old": true}\n')
    ProgressReporter(str(path), total_bytes=10).finish()
    lines = read_progress(str(path))
    assert len(lines) == 1 and "old" not in lines[0]


def test_without_a_path_it_only_counts():
    progress = ProgressReporter(None, total_bytes=10)
    progress.advance(4)
    assert progress.snapshot()["percent"] == 40.0 and progress.lines_written == 0
