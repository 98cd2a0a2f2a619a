"""The run report shows the run's second copy (issue 15): what was copied where, and a failed copy fails the run."""
import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.backup import report as rpt

from test_report import _vm

COPIED = {"changed": True, "copied": [{"backup_id": "20261201T010000Z-0123456789ab"}], "present": ["x"], "skipped": [],
          "same_keys": False, "bytes_uploaded": 5 * 1024 * 1024, "chunks_uploaded": 5, "verify": {"ok": True},
          "target": {"location": "s3://offsite/hyperv <b>"}}


def test_report_shows_the_second_copy():
    doc = rpt.build_report("r1", [_vm("a")], copy=COPIED)
    assert doc["status"] == "successful"
    assert doc["copy"] == {"status": "success", "target": "s3://offsite/hyperv <b>", "copied": 1, "present": 1, "skipped": 0,
                           "backup_ids": ["20261201T010000Z-0123456789ab"], "same_keys": False, "bytes_uploaded": 5242880,
                           "chunks_uploaded": 5, "verified": True, "error": None}
    page = rpt.render_html(doc)
    assert 'id="copy" data-status="success"' in page and "Copied 1 backup(s) to s3://offsite/hyperv &lt;b&gt;" in page
    assert "verified there" in page


def test_a_failed_copy_fails_the_run_and_no_copy_shows_nothing():
    doc = rpt.build_report("r2", [_vm("a")], copy={"failed": True, "msg": "S3 PutObject failed: AccessDenied"})
    assert doc["status"] == "failed" and doc["copy"]["status"] == "failed"
    assert "The copy to the second repository failed: S3 PutObject failed: AccessDenied" in rpt.render_html(doc)
    for nothing in (None, {}, {"skipped": True, "changed": False}):
        doc = rpt.build_report("r3", [_vm("a")], copy=nothing)
        assert doc["copy"] is None and doc["status"] == "successful" and 'id="copy"' not in rpt.render_html(doc)
    with pytest.raises(rpt.ReportError):
        rpt.build_report("r4", [_vm("a")], copy=["not", "a", "result"])
