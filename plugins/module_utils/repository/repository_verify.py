# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Verify of a repository: re-read and re-hash every chunk the backups reference, and say which backups are damaged.

``Repository.verify`` is ``verify`` here. Each chunk and index page is read once, however many backups share it;
only when something is bad are the backups' indexes walked again to say which chunks and pages of each are bad
(``_attribute_damage``). With ``record_status`` the outcome of each backup is stored, sealed, under ``status/<id>``,
where the listings read it; backups this proxy saw that vanished without a prune count as damaged (repository_memory.py).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import concurrent.futures

from ansible_collections.hyperv.backup.plugins.module_utils.errors import RepositoryError
from ansible_collections.hyperv.backup.plugins.module_utils.repository import chunk_index
from ansible_collections.hyperv.backup.plugins.module_utils.repository import repository_memory
from ansible_collections.hyperv.backup.plugins.module_utils.repository.backup_record import check_backup_id, iso, json_bytes, utc_now
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_crypto import KIND_STATUS

MAX_LISTED_PROBLEMS = 100           # per backup, in verify reports


def verify(repo, backup_ids=None, record_status=True):
    """Re-read and re-hash every chunk the given (default: all) backups reference; report problems by backup.

    With ``record_status`` the outcome is stored per backup (``status/<id>``), so listings show damaged backups.
    """
    # Ids given by a person are checked before anything is read or written: the status of each backup is
    # stored under status/<id>, so an id with a path in it ('../config') would overwrite another object.
    ids = [check_backup_id(backup_id, repo.location) for backup_id in backup_ids] if backup_ids else repo._committed_ids()
    results = []
    wanted = {}                # chunk id -> expected length
    seen_pages = set()         # index pages read (and so checked) once, whichever backups share them
    damaged_pages = {}         # page id -> IndexDamaged
    per_backup = []

    def page_damage(err, _first):
        damaged_pages[err.page_id] = err

    for backup_id, record, manifests in repo._load_backups(ids, strict=False):
        entry = {"backup_id": backup_id, "missing_chunks": [], "corrupt_chunks": [], "problems": []}
        if isinstance(record, RepositoryError):
            entry["problems"].append(record.message)
        else:
            entry.update(vm_id=record.vm_id, vm_name=record.vm_name, created=iso(record.created))
        for manifest in list(manifests):
            if isinstance(manifest, RepositoryError):
                entry["problems"].append(manifest.message)
                manifests.remove(manifest)
                continue
            chunk_index.walk(manifest.index, seen_pages, _wanted_adder(wanted, manifest), page_damage)
        per_backup.append((entry, manifests))
    outcome = {}
    checked_bytes = [0]

    def check(item):
        cid, length = item
        try:
            data = repo.read_chunk(cid, length)
            return cid, None, len(data)
        except KeyError:
            return cid, "missing", 0
        except ValueError as err:
            return cid, "corrupt: %s" % err, 0

    with concurrent.futures.ThreadPoolExecutor(repo.workers) as pool:
        for cid, problem, size in pool.map(check, wanted.items()):
            outcome[cid] = problem
            checked_bytes[0] += size
    any_bad = damaged_pages or any(outcome.values())
    for entry, manifests in per_backup:
        counts = {"missing": 0, "corrupt": 0}
        for manifest in manifests if any_bad else ():
            # Damage found: walk this backup's whole index again (its own pages, shared ones included) to say
            # which of its chunks and pages are bad. A clean repository never takes this second pass.
            _attribute_damage(entry, counts, manifest, outcome)
        entry["missing_count"], entry["corrupt_count"] = counts["missing"], counts["corrupt"]
        entry["ok"] = not (counts["missing"] or counts["corrupt"] or entry["problems"])
        results.append(entry)
        status = {"ok": entry["ok"], "verified": iso(utc_now()), "missing": counts["missing"], "corrupt": counts["corrupt"],
                  "problems": entry["problems"][:10]}
        if record_status and repo.store.stat("backups/%s" % entry["backup_id"]) is not None:
            # Only a backup that exists gets a status: an unknown id is reported, not recorded.
            try:
                repo._put_sealed(KIND_STATUS, "status/%s" % entry["backup_id"], json_bytes(status))
            except (RepositoryError, OSError):
                pass
    if record_status:
        repo.refresh_catalog(rebuild=True)
    if not backup_ids:      # backups this proxy saw that vanished without a prune are damage too (issue 13, point 5)
        results.extend(repository_memory.disappeared_entries(repo, record_status))
    damaged = [e["backup_id"] for e in results if not e["ok"]]
    return {"ok": not damaged, "backups_checked": len(results), "chunks_checked": len(wanted), "bytes_checked": checked_bytes[0],
            "index_pages_checked": len(seen_pages),
            "damaged_backups": damaged, "backups": results}


def _attribute_damage(entry, counts, manifest, outcome):
    """Add to a verify ``entry`` the bad chunks (``outcome``: id -> problem) and unreadable pages of ``manifest``'s tree."""
    def chunk_problem(index, cid):
        problem = outcome.get(cid)
        if problem:
            _count_problem(entry, counts, "missing" if problem == "missing" else "corrupt",
                           {"disk_key": manifest.disk_key, "offset": index * manifest.chunk_size, "chunk_id": cid, "problem": problem})

    def index_problem(err, first):
        _count_problem(entry, counts, "missing" if err.problem == "is missing" else "corrupt",
                       {"disk_key": manifest.disk_key, "offset": first * manifest.chunk_size, "chunk_id": err.page_id,
                        "problem": "index page %s" % err.problem})

    chunk_index.walk(manifest.index, set(), chunk_problem, index_problem)


def _wanted_adder(wanted, manifest):
    def add(index, cid):
        wanted[cid] = manifest.chunk_length(index)
    return add


def _count_problem(entry, counts, kind, item):
    counts[kind] += 1
    if counts[kind] <= MAX_LISTED_PROBLEMS:
        entry[kind + "_chunks"].append(item)
