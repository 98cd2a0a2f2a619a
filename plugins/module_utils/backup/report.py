# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run reports: one JSON document per backup run and a self-contained HTML page with a history chart.

The ``hyperv_backup`` role collects one result per VM (``VM_RESULT_KEYS``) from every host of a run and
hands them to the ``hyperv_backup_report`` module, which calls ``build_report`` and ``write_report``.
The JSON file is for machines (monitoring, AWX artifacts); the HTML page is for people: a table of the
VMs of the run and an inline SVG chart of the history (bytes stored and duration per run), taken from
the repository catalogue and from the earlier reports in the same directory. The page loads nothing
from the network: no scripts, fonts or images, so it opens from a file share or a mail attachment.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import html
import json
import os
import re
import tempfile

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HyperVBackupError

REPORT_FORMAT = 1
VM_STATUSES = ("success", "failed", "skipped")
# Keys of one VM result; host, vm and status are required, the rest may be null.
VM_RESULT_KEYS = ("host", "vm", "vm_id", "status", "backup_type", "method", "backup_id", "virtual_size",
                  "bytes_read", "bytes_stored", "started", "finished", "duration_seconds",
                  "serialization_key", "error")
HISTORY_KEYS = ("run_id", "started", "bytes_stored", "bytes_read", "duration_seconds", "vms", "failed")
LATEST_JSON = "latest.json"
LATEST_HTML = "index.html"
# How many runs the chart shows; older runs stay in the JSON files.
CHART_RUNS = 60
_RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


class ReportError(HyperVBackupError):
    """A VM result or a history entry is malformed, or the report directory is unusable."""


def parse_time(text, what):
    """Parse an ISO 8601 time (``Z`` or an offset; naive means UTC) into an aware datetime."""
    if text is None or text == "":
        return None
    if isinstance(text, datetime.datetime):
        value = text
    else:
        try:
            value = datetime.datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
        except ValueError:
            raise ReportError("%s is not an ISO 8601 time: %r." % (what, text),
                              hint="Use a time such as 2026-01-31T22:00:05Z.")
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return value.astimezone(datetime.timezone.utc)


def format_time(value):
    """ISO 8601 UTC with a ``Z``, to the millisecond; None stays None."""
    if value is None:
        return None
    # Milliseconds, so that the start of one VM and the end of the one before stay ordered.
    return value.astimezone(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _as_int(value, what):
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ReportError("%s must be a whole number of bytes, got %r." % (what, value))
    if number < 0:
        raise ReportError("%s must not be negative, got %r." % (what, value))
    return number


def _as_seconds(value, what):
    if value is None or value == "":
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ReportError("%s must be a number of seconds, got %r." % (what, value))
    if seconds < 0:
        raise ReportError("%s must not be negative, got %r." % (what, value))
    return round(seconds, 3)


def normalize_vm_result(entry, index=0):
    """Check one VM result and return it with every key of ``VM_RESULT_KEYS`` (times in UTC ``Z`` form)."""
    if not isinstance(entry, dict):
        raise ReportError("VM result #%d is not a mapping: %r." % (index, entry))
    unknown = sorted(set(entry) - set(VM_RESULT_KEYS))
    if unknown:
        raise ReportError("VM result #%d has unknown key(s): %s." % (index, ", ".join(unknown)),
                          hint="Known keys: %s." % ", ".join(VM_RESULT_KEYS))
    for key in ("host", "vm", "status"):
        if not entry.get(key):
            raise ReportError("VM result #%d has no %s." % (index, key), hint="Every result needs host, vm and status.")
    if entry["status"] not in VM_STATUSES:
        raise ReportError("VM result #%d (%s on %s) has status %r." % (index, entry["vm"], entry["host"], entry["status"]),
                          hint="Use one of: %s." % ", ".join(VM_STATUSES))
    what = "VM %s on %s" % (entry["vm"], entry["host"])
    out = dict((key, entry.get(key)) for key in VM_RESULT_KEYS)
    for key in ("virtual_size", "bytes_read", "bytes_stored"):
        out[key] = _as_int(entry.get(key), "%s: %s" % (what, key))
    started = parse_time(entry.get("started"), "%s: started" % what)
    finished = parse_time(entry.get("finished"), "%s: finished" % what)
    if started and finished and finished < started:
        raise ReportError("%s finished (%s) before it started (%s)." % (what, format_time(finished), format_time(started)))
    out["started"] = format_time(started)
    out["finished"] = format_time(finished)
    duration = _as_seconds(entry.get("duration_seconds"), "%s: duration_seconds" % what)
    if duration is None and started and finished:
        duration = round((finished - started).total_seconds(), 3)
    out["duration_seconds"] = duration
    if out["status"] == "failed" and not out["error"]:
        out["error"] = "failed without a message"
    return out


def normalize_copy(copy):
    """The run's second copy (issue 15) from hyperv_backup_copy's registered result, or None when the run made none.

    A result with ``failed`` (the role registers it with ignore_errors) is a failed copy, its ``msg`` the error."""
    if not copy:
        return None
    if not isinstance(copy, dict):
        raise ReportError("copy must be the registered result of hyperv.backup.hyperv_backup_copy, got %s." % type(copy).__name__)
    if copy.get("skipped"):
        return None
    failed = bool(copy.get("failed"))
    copied = copy.get("copied") or []
    return {"status": "failed" if failed else "success",
            "target": str((copy.get("target") or {}).get("location") or copy.get("location") or ""),
            "copied": len(copied), "backup_ids": [str(entry.get("backup_id")) for entry in copied if isinstance(entry, dict)],
            "present": len(copy.get("present") or []), "skipped": len(copy.get("skipped") or []),
            "same_keys": copy.get("same_keys"), "bytes_uploaded": _as_int(copy.get("bytes_uploaded"), "copy bytes_uploaded"),
            "chunks_uploaded": _as_int(copy.get("chunks_uploaded"), "copy chunks_uploaded"),
            "verified": bool((copy.get("verify") or {}).get("ok")), "error": str(copy.get("msg") or "") if failed else None}


def build_report(run_id, results, started=None, finished=None, history=None, title=None, copy=None):
    """Return the report document of one run.

    ``results`` are VM results (see ``normalize_vm_result``); ``history`` are earlier runs as
    ``HISTORY_KEYS`` mappings (``history_from_catalog`` / ``history_from_reports``). The run's own
    entry is added to the history. A run is ``successful`` only when no VM failed or was skipped.
    """
    if not run_id or not _RUN_ID_RE.match(str(run_id)):
        raise ReportError("run_id %r is not usable as a file name." % (run_id,),
                          hint="Use letters, digits, '.', '_', '-' or ':' (e.g. 20260131T220000Z).")
    if not isinstance(results, list):
        raise ReportError("results must be a list of VM results, got %s." % type(results).__name__)
    vms = [normalize_vm_result(entry, i) for i, entry in enumerate(results)]
    vms.sort(key=lambda v: (v["started"] or "", v["host"], v["vm"]))
    starts = [parse_time(v["started"], "started") for v in vms if v["started"]]
    ends = [parse_time(v["finished"], "finished") for v in vms if v["finished"]]
    run_start = parse_time(started, "run started") or (min(starts) if starts else None)
    run_end = parse_time(finished, "run finished") or (max(ends) if ends else None)
    problems = [v for v in vms if v["status"] != "success"]
    summary = {
        "vms": len(vms),
        "succeeded": sum(1 for v in vms if v["status"] == "success"),
        "failed": sum(1 for v in vms if v["status"] == "failed"),
        "skipped": sum(1 for v in vms if v["status"] == "skipped"),
        "hosts": len(set(v["host"] for v in vms)),
        "bytes_read": sum(v["bytes_read"] or 0 for v in vms),
        "bytes_stored": sum(v["bytes_stored"] or 0 for v in vms),
        "virtual_size": sum(v["virtual_size"] or 0 for v in vms),
    }
    duration = round((run_end - run_start).total_seconds(), 3) if run_start and run_end else None
    second_copy = normalize_copy(copy)          # a failed second copy fails the run, as a failed VM does
    own = {"run_id": str(run_id), "started": format_time(run_start), "bytes_stored": summary["bytes_stored"],
           "bytes_read": summary["bytes_read"], "duration_seconds": duration, "vms": summary["vms"],
           "failed": summary["failed"] + summary["skipped"]}
    return {
        "format": REPORT_FORMAT,
        "title": title or "Hyper-V backup run %s" % run_id,
        "run_id": str(run_id),
        "status": "failed" if problems or (second_copy and second_copy["status"] == "failed") else "successful",
        "copy": second_copy,
        "started": format_time(run_start),
        "finished": format_time(run_end),
        "duration_seconds": duration,
        "summary": summary,
        "problems": [{"host": v["host"], "vm": v["vm"], "status": v["status"], "error": v["error"]} for v in problems],
        "vms": vms,
        "history": merge_history(history or [], [own]),
    }


def normalize_history_entry(entry):
    """Check one history entry and return it with every key of ``HISTORY_KEYS``."""
    if not isinstance(entry, dict) or not entry.get("run_id"):
        raise ReportError("history entry %r has no run_id." % (entry,))
    return {
        "run_id": str(entry["run_id"]),
        "started": format_time(parse_time(entry.get("started"), "history %s: started" % entry["run_id"])),
        "bytes_stored": _as_int(entry.get("bytes_stored"), "history %s: bytes_stored" % entry["run_id"]) or 0,
        "bytes_read": _as_int(entry.get("bytes_read"), "history %s: bytes_read" % entry["run_id"]) or 0,
        "duration_seconds": _as_seconds(entry.get("duration_seconds"), "history %s: duration_seconds" % entry["run_id"]),
        "vms": _as_int(entry.get("vms"), "history %s: vms" % entry["run_id"]) or 0,
        "failed": _as_int(entry.get("failed"), "history %s: failed" % entry["run_id"]) or 0,
    }


def merge_history(*sources):
    """Merge history lists by run_id (a later source wins), oldest run first."""
    runs = {}
    for source in sources:
        for entry in source:
            item = normalize_history_entry(entry)
            runs[item["run_id"]] = item
    return sorted(runs.values(), key=lambda r: (r["started"] or "", r["run_id"]))


def combine_history(catalog, reports, run_started=None):
    """History for the chart: the runs of the earlier reports, plus catalogue runs from before them.

    Catalogue backups without a run id are grouped by day, which would count a reported run twice; so from the
    first reported run on (or from the start of the current run when there is no report yet) the reports are
    the only source, except for catalogue runs whose id a report also has (the report wins for those).
    """
    reported = merge_history(reports)
    known = set(r["run_id"] for r in reported)
    starts = [parse_time(r["started"], "history started") for r in reported if r["started"]]
    if run_started:
        starts.append(parse_time(run_started, "run started"))
    cutoff = min(starts) if starts else None
    kept = [c for c in merge_history(catalog)
            if c["run_id"] in known or cutoff is None or (c["started"] and parse_time(c["started"], "started") < cutoff)]
    return merge_history(kept, reported)


def history_from_catalog(backups):
    """Group catalogue backup records into runs.

    A record is a repository ``BackupRecord.as_dict()``: ``run_id`` (or ``metadata.run_id``; records without
    one are grouped by the day of ``created``), ``created``, ``completed``, and in it or in its ``stats``
    ``stored_bytes``, ``bytes_read`` and ``duration_seconds``. A run lasts from its first start to its last end.
    """
    runs = {}
    for record in backups or []:
        if not isinstance(record, dict):
            raise ReportError("catalogue record %r is not a mapping." % (record,))
        metadata = record.get("metadata") or {}
        stats = record.get("stats") or {}
        created = parse_time(record.get("created") or record.get("started"), "catalogue record created")
        run_id = record.get("run_id") or metadata.get("run_id") or (created.strftime("%Y-%m-%d") if created else None)
        if not run_id:
            continue
        run = runs.setdefault(str(run_id), {"run_id": str(run_id), "first": None, "last": None, "bytes_stored": 0,
                                            "bytes_read": 0, "vms": set(), "failed": 0})
        run["bytes_stored"] += _as_int(_first((record, stats, metadata), "bytes_stored", "stored_bytes"), "bytes_stored") or 0
        run["bytes_read"] += _as_int(_first((record, stats, metadata), "bytes_read", "read_bytes"), "bytes_read") or 0
        run["vms"].add(record.get("lineage") or record.get("vm_id") or record.get("vm_name") or record.get("backup_id"))
        duration = _as_seconds(_first((record, stats, metadata), "duration_seconds"), "duration_seconds") or 0
        completed = parse_time(record.get("completed"), "catalogue record completed")
        if created:
            end = max(completed or created, created + datetime.timedelta(seconds=duration))
            run["first"] = created if run["first"] is None else min(run["first"], created)
            run["last"] = end if run["last"] is None else max(run["last"], end)
    out = []
    for run in runs.values():
        span = (run["last"] - run["first"]).total_seconds() if run["first"] else None
        out.append({"run_id": run["run_id"], "started": format_time(run["first"]), "bytes_stored": run["bytes_stored"],
                    "bytes_read": run["bytes_read"], "duration_seconds": span, "vms": len(run["vms"]), "failed": 0})
    return merge_history(out)


def _first(sources, *keys):
    for key in keys:
        for source in sources:
            if source.get(key) is not None:
                return source[key]
    return None


def history_from_reports(directory):
    """The runs the earlier JSON reports in ``directory`` describe, their own and their history (unreadable files are skipped)."""
    out = []
    if not os.path.isdir(directory):
        return out
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".json") or name == LATEST_JSON:
            continue
        try:
            with open(os.path.join(directory, name), "r", encoding="utf-8") as handle:
                document = json.load(handle)
        except (OSError, ValueError):
            continue
        if isinstance(document, dict) and document.get("format") == REPORT_FORMAT and document.get("run_id"):
            # An earlier report carries the history it knew (e.g. from a catalogue since pruned).
            out.extend(h for h in document.get("history") or [] if isinstance(h, dict) and h.get("run_id"))
            out.append({"run_id": document["run_id"], "started": document.get("started"),
                        "bytes_stored": document["summary"].get("bytes_stored"),
                        "bytes_read": document["summary"].get("bytes_read"),
                        "duration_seconds": document.get("duration_seconds"),
                        "vms": document["summary"].get("vms"),
                        "failed": document["summary"].get("failed", 0) + document["summary"].get("skipped", 0)})
    return out


def human_bytes(value):
    """1536 -> '1.5 KiB'; None -> '-'."""
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return ("%d %s" % (size, unit)) if unit == "B" else ("%.1f %s" % (size, unit))
        size /= 1024.0
    return "-"


def human_seconds(value):
    """75.2 -> '1m 15s'; None -> '-'."""
    if value is None:
        return "-"
    seconds = int(round(value))
    if seconds < 60:
        return "%.1fs" % value
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return ("%dh %02dm" % (hours, minutes)) if hours else ("%dm %02ds" % (minutes, seconds))


def render_chart(history, width=960, height=300):
    """An SVG chart: bars of bytes stored per run (left axis) and a line of run durations (right axis).

    Every data point carries ``data-run``, ``data-bytes-stored`` and ``data-duration`` so that tools
    (and the browser test) can read the plotted values back from the DOM.
    """
    runs = history[-CHART_RUNS:]
    esc = html.escape
    left, right, top, bottom = 70, 70, 20, 50
    plot_w, plot_h = width - left - right, height - top - bottom
    max_bytes = max([r["bytes_stored"] for r in runs] + [1])
    max_secs = max([r["duration_seconds"] or 0 for r in runs] + [1])
    step = plot_w / float(max(len(runs), 1))
    parts = ['<svg id="history-chart" class="history-chart" xmlns="http://www.w3.org/2000/svg" role="img" '
             'width="%d" height="%d" viewBox="0 0 %d %d" data-runs="%d">' % (width, height, width, height, len(runs)),
             '<title>Bytes stored and duration per backup run</title>',
             '<rect x="0" y="0" width="%d" height="%d" fill="#ffffff"/>' % (width, height),
             '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#444"/>' % (left, top + plot_h, left + plot_w, top + plot_h),
             '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#444"/>' % (left, top, left, top + plot_h),
             '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#444"/>' % (left + plot_w, top, left + plot_w, top + plot_h),
             '<text x="%d" y="%d" font-size="11" text-anchor="end">%s</text>' % (left - 4, top + 10, esc(human_bytes(max_bytes))),
             '<text x="%d" y="%d" font-size="11" text-anchor="end">0</text>' % (left - 4, top + plot_h),
             '<text x="%d" y="%d" font-size="11">%s</text>' % (left + plot_w + 4, top + 10, esc(human_seconds(max_secs))),
             '<text x="%d" y="%d" font-size="11" fill="#1f6fb2">bytes stored</text>' % (left, height - 8),
             '<text x="%d" y="%d" font-size="11" fill="#c0392b" text-anchor="end">duration</text>' % (left + plot_w, height - 8)]
    line = []
    for i, run in enumerate(runs):
        x = left + step * i + step / 2.0
        bar_h = plot_h * run["bytes_stored"] / float(max_bytes)
        bar_w = max(step * 0.6, 1.0)
        label = "%s: %s stored, %s" % (run["run_id"], human_bytes(run["bytes_stored"]), human_seconds(run["duration_seconds"]))
        parts.append('<rect class="bar" x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s" data-run="%s" '
                     'data-bytes-stored="%d"><title>%s</title></rect>'
                     % (x - bar_w / 2, top + plot_h - bar_h, bar_w, bar_h, "#c0392b" if run["failed"] else "#1f6fb2",
                        esc(run["run_id"], quote=True), run["bytes_stored"], esc(label)))
        if run["duration_seconds"] is not None:
            y = top + plot_h - plot_h * run["duration_seconds"] / float(max_secs)
            line.append((x, y))
            parts.append('<circle class="point" cx="%.1f" cy="%.1f" r="4" fill="#c0392b" data-run="%s" data-duration="%s" '
                         'data-bytes-stored="%d"><title>%s</title></circle>'
                         % (x, y, esc(run["run_id"], quote=True), run["duration_seconds"], run["bytes_stored"], esc(label)))
        if len(runs) <= 12 or i % max(len(runs) // 12, 1) == 0:
            parts.append('<text x="%.1f" y="%d" font-size="10" text-anchor="middle">%s</text>'
                         % (x, top + plot_h + 14, esc((run["started"] or run["run_id"])[:10])))
    if len(line) > 1:
        parts.append('<polyline class="duration-line" fill="none" stroke="#c0392b" stroke-width="2" points="%s"/>'
                     % " ".join("%.1f,%.1f" % p for p in line))
    parts.append("</svg>")
    return "\n".join(parts)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:22px;margin:0 0 4px} .meta{color:#555;margin-bottom:16px}
.status{display:inline-block;padding:2px 10px;border-radius:10px;color:#fff;font-weight:600}
.successful,.success{background:#2e8b57} .failed{background:#c0392b} .skipped{background:#b7950b}
table{border-collapse:collapse;background:#fff;margin:12px 0;min-width:900px}
th,td{border:1px solid #ddd;padding:5px 8px;text-align:left;font-size:13px} th{background:#eee}
td.num{text-align:right;font-variant-numeric:tabular-nums} .error{color:#c0392b}
"""


def render_html(report):
    """The HTML page of a report: summary, problems, per-VM table and the history chart."""
    esc = html.escape
    summary = report["summary"]
    rows = []
    for vm in report["vms"]:
        rows.append(
            '<tr class="vm" data-host="%s" data-vm="%s" data-status="%s"><td>%s</td><td>%s</td>'
            '<td><span class="status %s">%s</span></td><td>%s</td><td>%s</td><td class="num">%s</td><td class="num">%s</td>'
            '<td class="num">%s</td><td>%s</td><td>%s</td><td class="num">%s</td><td class="error">%s</td></tr>'
            % (esc(vm["host"], quote=True), esc(vm["vm"], quote=True), esc(vm["status"], quote=True), esc(vm["host"]),
               esc(vm["vm"]), esc(vm["status"]), esc(vm["status"]), esc(vm["backup_type"] or "-"), esc(vm["method"] or "-"),
               esc(human_bytes(vm["virtual_size"])), esc(human_bytes(vm["bytes_read"])), esc(human_bytes(vm["bytes_stored"])),
               esc(vm["started"] or "-"), esc(vm["finished"] or "-"), esc(human_seconds(vm["duration_seconds"])),
               esc(vm["error"] or "")))
    problems = "".join('<li><b>%s</b> on %s: %s</li>' % (esc(p["vm"]), esc(p["host"]), esc(p["error"] or p["status"]))
                       for p in report["problems"])
    history_rows = "".join(
        '<tr><td>%s</td><td>%s</td><td class="num">%s</td><td class="num">%s</td><td class="num">%s</td><td class="num">%s</td></tr>'
        % (esc(r["run_id"]), esc(r["started"] or "-"), r["vms"], r["failed"], esc(human_bytes(r["bytes_stored"])),
           esc(human_seconds(r["duration_seconds"])))
        for r in reversed(report["history"][-CHART_RUNS:]))
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; style-src \'unsafe-inline\'; img-src data:">',
        "<title>%s</title><style>%s</style></head><body>" % (esc(report["title"]), _CSS),
        '<h1>%s</h1>' % esc(report["title"]),
        '<div class="meta">Run <code id="run-id">%s</code> &middot; <span id="run-status" class="status %s">%s</span>'
        ' &middot; %s to %s (%s)</div>'
        % (esc(report["run_id"]), esc(report["status"]), esc(report["status"]), esc(report["started"] or "-"),
           esc(report["finished"] or "-"), esc(human_seconds(report["duration_seconds"]))),
        '<div class="meta" id="summary">%d VMs on %d hosts: %d succeeded, %d failed, %d skipped; read %s, stored %s.</div>'
        % (summary["vms"], summary["hosts"], summary["succeeded"], summary["failed"], summary["skipped"],
           esc(human_bytes(summary["bytes_read"])), esc(human_bytes(summary["bytes_stored"]))),
        ('<h2>Problems</h2><ul id="problems">%s</ul>' % problems) if problems else "",
        _copy_html(report.get("copy")),
        "<h2>Virtual machines</h2>",
        '<table id="vms"><thead><tr><th>Host</th><th>VM</th><th>Status</th><th>Type</th><th>Method</th><th>Size</th>'
        "<th>Read</th><th>Stored</th><th>Started</th><th>Finished</th><th>Duration</th><th>Error</th></tr></thead>",
        "<tbody>%s</tbody></table>" % "".join(rows),
        "<h2>History</h2>",
        render_chart(report["history"]),
        '<table id="history"><thead><tr><th>Run</th><th>Started</th><th>VMs</th><th>Failed</th><th>Stored</th>'
        "<th>Duration</th></tr></thead><tbody>%s</tbody></table>" % history_rows,
        "</body></html>",
    ])


def _copy_html(copy):
    if not copy:
        return ""
    esc = html.escape
    if copy["status"] == "failed":
        text = "The copy to %s failed: %s" % (esc(copy["target"] or "the second repository"), esc(copy["error"] or "no message"))
    else:
        text = "Copied %d backup(s) to %s (%s uploaded, %s; %d already there, %d not copied)%s." % (
            copy["copied"], esc(copy["target"]), esc(human_bytes(copy["bytes_uploaded"])),
            "same keys: ids compared" if copy["same_keys"] else "re-encrypted", copy["present"], copy["skipped"],
            ", verified there" if copy["verified"] else "")
    return '<h2>Second copy</h2><div class="meta" id="copy" data-status="%s">%s</div>' % (esc(copy["status"], quote=True), text)


def _write_atomic(path, text):
    directory = os.path.dirname(path)
    handle, tmp = tempfile.mkstemp(prefix=".report-", dir=directory)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_report(directory, report):
    """Write ``<run_id>.json`` and ``<run_id>.html`` plus ``latest.json`` and ``index.html``; return the paths."""
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as err:
        raise ReportError("Cannot create the report directory %s: %s." % (directory, err.strerror),
                          hint="Choose a writable hyperv_backup_report_directory.")
    document = json.dumps(report, indent=2, sort_keys=True) + "\n"
    page = render_html(report)
    safe = report["run_id"].replace(":", "-")
    paths = {"json": os.path.join(directory, safe + ".json"), "html": os.path.join(directory, safe + ".html"),
             "latest_json": os.path.join(directory, LATEST_JSON), "latest_html": os.path.join(directory, LATEST_HTML)}
    try:
        _write_atomic(paths["json"], document)
        _write_atomic(paths["html"], page)
        _write_atomic(paths["latest_json"], document)
        _write_atomic(paths["latest_html"], page)
    except OSError as err:
        raise ReportError("Cannot write the report into %s: %s." % (directory, err.strerror or err),
                          hint="Check the free space and permissions of hyperv_backup_report_directory.")
    return paths
