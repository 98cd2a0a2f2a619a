# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Prune and garbage collection of a repository: ``Repository.prune`` and ``Repository.gc`` are ``prune`` and ``gc``.

Prune applies a retention policy per VM lineage and removes the other backups: a tombstone first, then the record
(the backup is gone from then on), then its manifests and status. GC then deletes the chunks no committed manifest
references. Both hold the repository's exclusive lock (one prune or GC at a time). The safety rules of GC against
running backups: it deletes nothing while a writer's session is live, deletes only chunks older than the grace
period (storage time, at least the writers' touch threshold plus a margin for clock differences), and re-checks
each chunk under the sweeping marker that makes new writers wait (the steps: ``_gc_locked``; docs/repository.md,
"Crash safety and concurrency").
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.hyperv.backup.plugins.module_utils.errors import RepositoryError
from ansible_collections.hyperv.backup.plugins.module_utils.repository import chunk_index
from ansible_collections.hyperv.backup.plugins.module_utils.repository import repository_memory
from ansible_collections.hyperv.backup.plugins.module_utils.repository.backup_record import iso, parse_time
from ansible_collections.hyperv.backup.plugins.module_utils.repository.backup_session import TOUCH_AFTER_SECONDS
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_crypto import KIND_STATUS
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_store import SWEEP_FRESH_MARGIN_SECONDS, LockHeld

GC_CLOCK_SKEW_MARGIN_SECONDS = 5 * 60     # between the clocks of several storage nodes (all ages are storage time)
MIN_GC_GRACE_SECONDS = TOUCH_AFTER_SECONDS + GC_CLOCK_SKEW_MARGIN_SECONDS      # 15 min (issue 13, point 2)
DEFAULT_GC_GRACE_SECONDS = MIN_GC_GRACE_SECONDS


def _exclusive(repo, purpose, wait_seconds):
    return repo.store.exclusive_lock("exclusive", purpose, wait_seconds=wait_seconds)


def prune(repo, policy, dry_run=False, vm=None, gc=True, grace_seconds=DEFAULT_GC_GRACE_SECONDS, wait_seconds=0, protect=()):
    """Apply a RetentionPolicy per VM (per lineage); remove the other backups (not locked ones), then GC.

    ``protect``: backup ids kept whatever the policy says (the backups the calling run has just made: a run never
    prunes its own new backup, issue 12 point 6). Returns a report."""
    if gc:
        _check_gc_grace(grace_seconds)
    lock = _exclusive(repo, "prune", wait_seconds) if not dry_run else _null_context()
    try:
        with lock:
            repo._exclusive_held = True
            return _prune_locked(repo, policy, dry_run, vm, gc, grace_seconds, set(protect or ()))
    except LockHeld as held:
        raise RepositoryError("Repository %s is locked by %s." % (repo.location, held),
                              hint="Another prune or GC is running; wait for it, or retry later.")
    finally:
        repo._exclusive_held = False


def _prune_locked(repo, policy, dry_run, vm, gc, grace_seconds, protect):
    now = repo.store.now()
    parents_in_use = set(values.get("parent_backup_id") for values, _info, live in repo._sessions() if live)
    # Retention counts per lineage, not per VM id: a second VM reporting the same id from another host keeps its
    # own backups (issue 12, point 2).
    by_vm = {}
    for record in repo.list_backups(vm=vm):
        by_vm.setdefault(record.lineage, []).append(record)
    report = {"dry_run": dry_run, "policy": policy.as_dict(), "kept": [], "removed": [], "locked": [], "vms": len(by_vm)}
    for records in by_vm.values():
        index = dict((r.backup_id, r) for r in records)
        keep, remove = policy.apply([(r.backup_id, r.order_key, r.point_time) for r in records])
        for backup_id, reasons in sorted(keep.items()):
            report["kept"].append(_brief(index[backup_id], reasons=reasons))
        for backup_id in remove:
            record = index[backup_id]
            if backup_id in protect:
                report["kept"].append(_brief(record, reasons=["made by this run"]))
                continue
            if record.retain_until and record.retain_until > now:
                report["locked"].append(_brief(record, kept_until=iso(parse_time(record.retain_until))))
                continue
            if backup_id in parents_in_use:
                report["kept"].append(_brief(record, reasons=["parent of a running backup"]))
                continue
            if not dry_run:
                delete_backup(repo, record)
            report["removed"].append(_brief(record))
    if not dry_run and report["removed"]:
        repo.refresh_catalog()
    if gc:
        report["gc"] = _gc_locked(repo, dry_run, grace_seconds)
    return report


def delete_backup(repo, record, reason="pruned"):
    # A tombstone first, durable before the record goes (issue 13, point 5): proxies that saw the backup then know
    # it was pruned, not deleted behind their back. It is sealed like every object (kind 5).
    repo._put_sealed(KIND_STATUS, repository_memory.tombstone_key(record.backup_id), repository_memory.tombstone(record, reason))
    repo.store.flush()
    # The record goes next: from then on the backup is invisible; its manifests are then orphans GC can take.
    repo.store.delete("backups/%s" % record.backup_id)
    repo.store.flush()
    repo.store.delete_prefix("manifests/%s/" % record.backup_id)
    repo.store.delete("status/%s" % record.backup_id)


def gc(repo, dry_run=False, grace_seconds=DEFAULT_GC_GRACE_SECONDS, wait_seconds=0):
    """Delete chunks no committed manifest references (see the module docstring for the safety rules)."""
    _check_gc_grace(grace_seconds)
    if repo._exclusive_held or dry_run:
        return _gc_locked(repo, dry_run, grace_seconds)
    try:
        with _exclusive(repo, "gc", wait_seconds):
            return _gc_locked(repo, dry_run, grace_seconds)
    except LockHeld as held:
        raise RepositoryError("Repository %s is locked by %s." % (repo.location, held),
                              hint="Another prune or GC is running; wait for it, or retry later.")


def _gc_locked(repo, dry_run, grace_seconds):
    """Mark and sweep, excluded from writers by the sweeping marker (docs/repository.md, "Crash safety and concurrency").

    1. The sweeping marker is written (not in a dry run), THEN the sessions are listed: a writer that starts later
       finds the marker and waits; one that started earlier is listed. While any session is live nothing is
       deleted ("deferred"). 2. Stale markers are removed, THEN the records are read: a writer paused past its
       timeout either committed before (its chunks are referenced) or finds its marker gone and refuses to commit.
    3. Unreferenced chunks older than the grace (storage time) are re-checked and deleted while the marker is
       fresh; a GC that stalled past the marker's ttl stops deleting.
    """
    store = repo.store
    _check_gc_grace(grace_seconds)
    store.sync_clock()
    marker = store.sweeping("prune/gc") if not dry_run else _null_context()
    with marker as sweep:
        store.step("gc.sweep_marker_written", dry_run=dry_run, sweep=sweep if not dry_run else None)
        return _gc_pass(repo, dry_run, grace_seconds, sweep if not dry_run else None)


def _gc_pass(repo, dry_run, grace_seconds, sweep):
    store = repo.store
    sessions = repo._sessions()
    now = store.now()
    store.step("gc.sessions_listed", sessions=len(sessions))
    live = [(values, info) for values, info, is_live in sessions if is_live]
    stale_markers = [info.key for _values, info, is_live in sessions if not is_live]
    cutoff = now - grace_seconds
    report = {"dry_run": dry_run, "chunks_total": 0, "chunks_referenced": 0, "chunks_removed": 0,
              "bytes_removed": 0, "chunks_kept_recent": 0, "chunks_locked": 0, "live_sessions": len(live),
              "stale_sessions_removed": 0, "orphan_manifests_removed": 0, "grace_seconds": grace_seconds}
    if live:
        report["deferred"] = "%d live writer(s)" % len(live)
    # Markers of dead writers go before the records are read (see the docstring, step 2).
    if not dry_run:
        for key in stale_markers:
            store.delete(key)
            report["stale_sessions_removed"] += 1
    else:
        report["stale_sessions_removed"] = len(stale_markers)
    referenced = set()
    seen_pages = set()
    committed = repo._committed_ids()
    # Any unreadable record or manifest stops GC here, before it deletes any chunk (its references are unknown).
    try:
        for _backup_id, _record, manifests in repo._load_backups(committed, strict=True):
            for manifest in manifests:
                chunk_index.walk(manifest.index, seen_pages, lambda _index, cid: referenced.add(cid), _index_unreadable(manifest))
        referenced.update(seen_pages)           # the index pages are objects under chunks/ too
    except RepositoryError as err:
        raise RepositoryError("Garbage collection stopped before deleting anything: %s" % err.message,
                              hint="Run verify to list the damaged backups, and restore the missing object from a copy "
                                   "of the repository if there is one.", **err.extra)
    report["chunks_referenced"] = len(referenced)
    store.step("gc.references_loaded", referenced=len(referenced))
    candidates = []
    for info in store.list("chunks/"):
        report["chunks_total"] += 1
        cid = info.key.rsplit("/", 1)[1]
        if cid in referenced:
            continue
        if info.mtime >= cutoff:
            report["chunks_kept_recent"] += 1
            continue
        candidates.append(info)
    # Leftovers of crashed or pruned backups: manifests no record points at (a live writer writes its manifests
    # only at commit, just before its record).
    live_ids = set(values.get("backup_id") for values, _info in live)
    manifest_dirs = set(info.key.split("/")[1] for info in store.list("manifests/") if info.mtime < cutoff)
    orphan_manifests = sorted(manifest_dirs - set(committed) - live_ids)
    if dry_run:
        if not live:
            report.update(chunks_removed=len(candidates), bytes_removed=sum(info.size for info in candidates))
        report["orphan_manifests_removed"] = len(orphan_manifests)
        return report
    if not live:
        _sweep(repo, candidates, cutoff, now, sweep, report)
    for backup_id in orphan_manifests:
        store.delete_prefix("manifests/%s/" % backup_id)
        report["orphan_manifests_removed"] += 1
    for path in store.list_temporary("chunks/", cutoff):
        store.remove_temporary(path)
    store.flush()
    return report


def _sweep(repo, candidates, cutoff, now, sweep, report):
    store = repo.store
    with store.sweep_guard():
        for info in candidates:
            if not sweep.fresh(margin=SWEEP_FRESH_MARGIN_SECONDS):
                # Stalled (or the endpoint failed the renewals) for most of the marker's ttl: writers may already
                # treat it as dead and deduplicate again. Stop; the next GC takes the rest.
                report["sweep_stopped"] = "the sweeping marker could not be kept fresh"
                break
            fresh = store.stat(info.key)       # re-check: a writer may have touched it since the listing
            if fresh is None:
                continue
            if fresh.mtime >= cutoff:
                report["chunks_kept_recent"] += 1
                continue
            if fresh.retain_until and fresh.retain_until > now:
                report["chunks_locked"] += 1
                continue
            store.step("gc.delete", key=info.key)
            if store.delete(info.key):
                report["chunks_removed"] += 1
                report["bytes_removed"] += fresh.size


def _index_unreadable(manifest):
    """GC's reaction to an index page it cannot read: stop (the chunks below it are referenced, but unknown)."""
    def stop(err, first):
        raise RepositoryError("Backup %s, disk %r: %s (near offset %d)." % (manifest.backup_id, manifest.disk_key, err,
                                                                            first * manifest.chunk_size),
                              backup_id=manifest.backup_id, disk_key=manifest.disk_key, chunk_id=err.page_id)
    return stop


def _check_gc_grace(grace_seconds):
    """Refuse a GC grace shorter than the writers' touch threshold plus a margin for clock differences."""
    if not isinstance(grace_seconds, (int, float)) or grace_seconds < MIN_GC_GRACE_SECONDS:
        raise RepositoryError(
            "A GC grace of %r s is too short: it must be at least %d minutes (writers touch a chunk they deduplicate "
            "against only when it is older than %d minutes, plus %d minutes for clock differences between storage nodes)."
            % (grace_seconds, MIN_GC_GRACE_SECONDS // 60, TOUCH_AFTER_SECONDS // 60, GC_CLOCK_SKEW_MARGIN_SECONDS // 60),
            hint="Use gc_grace_minutes: %d or more (the default), or leave grace_seconds at its default."
                 % (MIN_GC_GRACE_SECONDS // 60), grace_seconds=grace_seconds)
    return grace_seconds


class _null_context:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _brief(record, **extra):
    out = {"backup_id": record.backup_id, "vm_id": record.vm_id, "vm_name": record.vm_name, "created": iso(record.created),
           "type": record.type, "host": record.host, "lineage": record.lineage, "sequence": record.sequence}
    out.update(extra)
    return out
