"""The run report opens in a real browser (headless Chromium) and shows its history chart.

Two runs are reported through the hyperv_backup_report module by ansible-playbook, with one older run
known only from the catalogue; the second run's page must render an SVG chart with one data point per
run carrying the right values, and its screenshot must show the chart's bars (not a blank page).
"""
import html.parser
import subprocess
import textwrap

import pytest

from workflow_helpers import chromium_command, colour_counts, load_json, run_playbook

pytestmark = pytest.mark.integration

PLAYBOOK = textwrap.dedent("""\
    - name: Report two backup runs
      hosts: localhost
      gather_facts: false
      tasks:
        - name: Report the first run
          hyperv.backup.hyperv_backup_report:
            directory: "{{ report_dir }}"
            run_id: run-1
            catalog:
              - {backup_id: b0, vm_name: web01, created: "2026-01-01T22:00:00Z", stored_bytes: 300000000,
                 duration_seconds: 600, metadata: {run_id: run-0}}
            results:
              - {host: hv01, vm: web01, status: success, backup_type: full, method: rct, virtual_size: 1073741824,
                 bytes_read: 500000000, bytes_stored: 200000000, started: "2026-01-02T22:00:00Z",
                 finished: "2026-01-02T22:05:00Z"}
              - {host: hv02, vm: sql01, status: success, backup_type: full, method: vss, bytes_stored: 100000000,
                 started: "2026-01-02T22:00:00Z", finished: "2026-01-02T22:04:00Z"}
        - name: Report the second run
          hyperv.backup.hyperv_backup_report:
            directory: "{{ report_dir }}"
            run_id: run-2
            title: "Nightly <backup>"
            results:
              - {host: hv01, vm: web01, status: success, backup_type: incremental, method: rct,
                 bytes_stored: 50000000, started: "2026-01-03T22:00:00Z", finished: "2026-01-03T22:01:00Z"}
              - {host: hv02, vm: sql01, status: failed, backup_type: incremental, error: "integration service down",
                 started: "2026-01-03T22:00:00Z", finished: "2026-01-03T22:00:30Z"}
          register: second
        - name: The module reports the failed VM without failing itself
          ansible.builtin.assert:
            that:
              - second.status == 'failed'
              - second.problems | map(attribute='vm') | list == ['sql01']
    """)


class _ChartParser(html.parser.HTMLParser):
    """Collects the chart's data points and the VM rows from the DOM Chromium dumps."""

    def __init__(self):
        super().__init__()
        self.in_chart = False
        self.points, self.bars, self.vm_rows, self.svg_seen = [], [], [], False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "svg" and attrs.get("id") == "history-chart":
            self.in_chart = self.svg_seen = True
        elif self.in_chart and tag == "circle" and attrs.get("class") == "point":
            self.points.append(attrs)
        elif self.in_chart and tag == "rect" and attrs.get("class") == "bar":
            self.bars.append(attrs)
        elif tag == "tr" and attrs.get("class") == "vm":
            self.vm_rows.append(attrs)

    def handle_endtag(self, tag):
        if tag == "svg":
            self.in_chart = False


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("report")
    playbook = base / "report.yml"
    playbook.write_text(PLAYBOOK)
    proc = run_playbook(playbook, extra_vars={"report_dir": str(base / "reports")})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return base / "reports"


def test_json_report_has_history_and_problems(report_dir):
    doc = load_json(report_dir / "run-2.json")
    assert doc["status"] == "failed"
    assert [r["run_id"] for r in doc["history"]] == ["run-0", "run-1", "run-2"]
    assert doc["history"][1]["bytes_stored"] == 300000000
    assert load_json(report_dir / "latest.json")["run_id"] == "run-2"


def test_page_renders_chart_in_chromium(report_dir, tmp_path):
    page = report_dir / "run-2.html"
    dom = subprocess.run(chromium_command(tmp_path / "profile") + ["--dump-dom", page.as_uri()],
                         check=False, capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-3000:]
    parsed = _ChartParser()
    parsed.feed(dom.stdout)
    assert parsed.svg_seen, dom.stdout[:2000]
    assert [p["data-run"] for p in parsed.points] == ["run-0", "run-1", "run-2"]
    assert [int(p["data-bytes-stored"]) for p in parsed.points] == [300000000, 300000000, 50000000]
    assert [float(p["data-duration"]) for p in parsed.points] == [600.0, 300.0, 60.0]
    assert len(parsed.bars) == 3
    assert sorted((r["data-vm"], r["data-status"]) for r in parsed.vm_rows) == [("sql01", "failed"), ("web01", "success")]
    assert "Nightly &lt;backup&gt;" in dom.stdout


def test_screenshot_is_not_blank(report_dir, tmp_path):
    shot = tmp_path / "page.png"
    proc = subprocess.run(chromium_command(tmp_path / "profile") + [
        "--screenshot=%s" % shot, "--window-size=1200,900", (report_dir / "run-2.html").as_uri()],
        check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-3000:]
    counts = colour_counts(shot)
    total = sum(counts.values())
    assert total == 1200 * 900
    background = max(counts.values())
    assert background < total * 0.97, "the page is almost one colour: %r" % sorted(counts.items(), key=lambda kv: -kv[1])[:5]
    # The bars of successful runs are drawn in #1f6fb2; the chart is visible when they are.
    assert counts.get((0x1F, 0x6F, 0xB2), 0) > 500
