"""Unit tests of the run report: validation, summary, history merge, HTML escaping and files written."""
import json

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.backup import report as rpt


def _vm(vm, status="success", host="hv01", started="2026-01-01T22:00:00Z", finished="2026-01-01T22:01:30Z", **extra):
    entry = {"host": host, "vm": vm, "status": status, "started": started, "finished": finished,
             "bytes_read": 1000, "bytes_stored": 400, "virtual_size": 4096}
    entry.update(extra)
    return entry


def test_summary_status_and_durations():
    doc = rpt.build_report("r1", [_vm("a"), _vm("b", status="failed", error="boom"), _vm("c", status="skipped")])
    assert doc["status"] == "failed"
    assert doc["summary"]["succeeded"] == 1 and doc["summary"]["failed"] == 1 and doc["summary"]["skipped"] == 1
    assert doc["summary"]["bytes_stored"] == 1200
    assert [p["vm"] for p in doc["problems"]] == ["b", "c"]
    assert doc["vms"][0]["duration_seconds"] == 90.0
    assert doc["started"] == "2026-01-01T22:00:00.000Z" and doc["finished"] == "2026-01-01T22:01:30.000Z"
    assert doc["history"][-1]["run_id"] == "r1" and doc["history"][-1]["failed"] == 2


def test_all_success_is_successful_and_offsets_become_utc():
    doc = rpt.build_report("r2", [_vm("a", started="2026-01-01T23:00:00+01:00", finished="2026-01-01T22:00:10")])
    assert doc["status"] == "successful"
    assert doc["vms"][0]["started"] == "2026-01-01T22:00:00.000Z"
    assert doc["vms"][0]["duration_seconds"] == 10.0


@pytest.mark.parametrize("bad, words", [
    ({"vm": "a", "status": "success"}, "no host"),
    ({"host": "h", "vm": "a", "status": "done"}, "status 'done'"),
    ({"host": "h", "vm": "a", "status": "success", "colour": 1}, "unknown key(s): colour"),
    ({"host": "h", "vm": "a", "status": "success", "bytes_read": -1}, "must not be negative"),
    ({"host": "h", "vm": "a", "status": "success", "started": "yesterday"}, "not an ISO 8601 time"),
    ({"host": "h", "vm": "a", "status": "success", "started": "2026-01-02T00:00:00Z",
      "finished": "2026-01-01T00:00:00Z"}, "finished"),
])
def test_bad_results_are_refused_with_a_reason(bad, words):
    with pytest.raises(rpt.ReportError) as err:
        rpt.build_report("r", [bad])
    assert words in str(err.value)


def test_bad_run_id_is_refused():
    with pytest.raises(rpt.ReportError, match="not usable as a file name"):
        rpt.build_report("../etc/passwd", [])


def test_history_from_catalog_groups_by_run():
    backups = [
        {"backup_id": "1", "vm_name": "a", "created": "2026-01-01T22:00:00Z", "stored_bytes": 100, "duration_seconds": 30,
         "metadata": {"run_id": "n1"}},
        {"backup_id": "2", "vm_name": "b", "created": "2026-01-01T22:00:20Z", "stored_bytes": 50, "duration_seconds": 60,
         "metadata": {"run_id": "n1"}},
        {"backup_id": "3", "vm_name": "a", "created": "2026-01-02T22:00:00Z", "bytes_stored": 7},
    ]
    history = rpt.history_from_catalog(backups)
    assert [h["run_id"] for h in history] == ["n1", "2026-01-02"]
    assert history[0]["bytes_stored"] == 150 and history[0]["vms"] == 2
    assert history[0]["duration_seconds"] == 80.0


def test_merge_history_later_source_wins_and_sorts():
    merged = rpt.merge_history([{"run_id": "b", "started": "2026-01-02T00:00:00Z", "bytes_stored": 1}],
                               [{"run_id": "a", "started": "2026-01-01T00:00:00Z"},
                                {"run_id": "b", "started": "2026-01-02T00:00:00Z", "bytes_stored": 9}])
    assert [(h["run_id"], h["bytes_stored"]) for h in merged] == [("a", 0), ("b", 9)]


def test_html_escapes_names_and_has_chart_points():
    doc = rpt.build_report("r3", [_vm("<script>x</script>", status="failed", error="a & b")],
                           history=[{"run_id": "old", "started": "2025-12-31T22:00:00Z", "bytes_stored": 10,
                                     "duration_seconds": 5}])
    page = rpt.render_html(doc)
    assert "<script>" not in page
    assert "&lt;script&gt;x&lt;/script&gt;" in page and "a &amp; b" in page
    assert page.count('class="point"') == 2
    assert 'data-run="old"' in page and 'data-run="r3"' in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_write_report_files_and_history_from_reports(tmp_path):
    first = rpt.build_report("r1", [_vm("a")])
    paths = rpt.write_report(str(tmp_path), first)
    assert json.loads(open(paths["json"]).read())["run_id"] == "r1"
    assert open(paths["latest_html"]).read() == open(paths["html"]).read()
    history = rpt.merge_history(rpt.history_from_reports(str(tmp_path)))
    assert [h["run_id"] for h in history] == ["r1"]
    second = rpt.build_report("r2", [_vm("a", started="2026-01-02T22:00:00Z", finished="2026-01-02T22:00:05Z")],
                              history=history)
    assert [h["run_id"] for h in second["history"]] == ["r1", "r2"]


def test_write_report_into_unwritable_place_says_so(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(rpt.ReportError, match="Cannot create the report directory"):
        rpt.write_report(str(blocker / "sub"), rpt.build_report("r", []))


def test_combine_history_uses_the_catalogue_only_before_the_reports():
    catalog = rpt.history_from_catalog([
        {"backup_id": "1", "vm_name": "a", "created": "2026-01-01T22:00:00Z", "stored_bytes": 5},
        {"backup_id": "2", "vm_name": "a", "created": "2026-01-02T22:00:01Z", "stored_bytes": 6},
        {"backup_id": "3", "vm_name": "a", "created": "2026-01-03T22:00:01Z", "stored_bytes": 7},
    ])
    reports = [{"run_id": "r2", "started": "2026-01-02T22:00:00Z", "bytes_stored": 6, "duration_seconds": 3}]
    combined = rpt.combine_history(catalog, reports, run_started="2026-01-03T22:00:00Z")
    # The day-groups of 01-02 (reported as r2) and 01-03 (the current run) are not counted twice.
    assert [h["run_id"] for h in combined] == ["2026-01-01", "r2"]
    assert [h["run_id"] for h in rpt.combine_history(catalog, [])] == ["2026-01-01", "2026-01-02", "2026-01-03"]
    assert [h["run_id"] for h in rpt.combine_history(catalog, [], run_started="2026-01-02T00:00:00Z")] == ["2026-01-01"]
