# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What this proxy has seen of each repository: the memory that notices replay and deletion (issue 13, point 5).

Someone who can write to the storage can put back an older catalog or status object (authentic, only older) or
delete a backup record. Modelled on borg's security database (``~/.config/borg/security/<repo id>/`` with the
manifest timestamp), each proxy keeps, per repository id:

* the highest catalog ``generation`` it saw (the catalog's counter, raised at every write of it). A catalog with a
  lower one was put back: it is not trusted, the listing rebuilds it from the records and warns;
* the backups it saw committed, each with the last verify outcome it saw. A backup it saw that is neither in
  ``backups/`` nor has a tombstone ``deleted/<id>`` (written by prune before it deletes a record, sealed like every
  object) is reported: "backup X has disappeared from the repository without a prune" (a warning in listings and
  module results, damage in verify) until a person acknowledges it (``acknowledge_disappeared``);
* a status older than the one it saw (by more than the clock margin), or gone, was put back or removed: the
  remembered outcome stands, with a warning.

Where: ``$HYPERV_BACKUP_STATE_DIR``, else ``$XDG_STATE_HOME/hyperv.backup``, else ``~/.local/state/hyperv.backup``;
under it ``repositories/<repository id>/seen.json`` (0600, directories 0700), changed under an flock (Ansible forks
of one proxy share it) by temporary file and rename. A proxy whose home does not persist (an AWX execution
environment) remembers only within one job: point the variable at a persistent volume. What this cannot notice
(a proxy that never saw the backup; tombstones or statuses forged in a plain repository): docs/security.md.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import fcntl
import hashlib
import json
import os
import re
import threading
import uuid

from ansible_collections.hyperv.backup.plugins.module_utils.errors import RepositoryError
from ansible_collections.hyperv.backup.plugins.module_utils.repository.backup_record import (
    BackupRecord, check_backup_id, iso, json_bytes, parse_time, utc_now,
)
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_crypto import KIND_STATUS

STATE_DIR_ENV = "HYPERV_BACKUP_STATE_DIR"
MEMORY_VERSION = 1
# Two proxies' clocks may differ (issue 13: up to 15 minutes); a status older than the one remembered by less than
# this is taken as a re-verify by a proxy whose clock is behind, not as a replay.
STATUS_CLOCK_MARGIN_SECONDS = 15 * 60
TOMBSTONE_PREFIX = "deleted/"
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def state_root(environ=None):
    """The directory that holds every repository's memory on this proxy."""
    environ = os.environ if environ is None else environ
    if environ.get(STATE_DIR_ENV):
        return environ[STATE_DIR_ENV]
    base = environ.get("XDG_STATE_HOME")
    if not base:
        home = environ.get("HOME") or os.path.expanduser("~")
        base = os.path.join(home, ".local", "state")
    return os.path.join(base, "hyperv.backup")


def tombstone_key(backup_id):
    return TOMBSTONE_PREFIX + check_backup_id(backup_id)


def _directory_name(repository_id):
    # The id comes from the unauthenticated config of a plain repository: it must never become a path outside.
    text = str(repository_id)
    if _SAFE_ID.match(text) and text not in (".", ".."):
        return text
    return "id-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _empty():
    return {"version": MEMORY_VERSION, "generation": 0, "backups": {}}


class ProxyMemory:
    """One repository's memory on this proxy, plus the warnings it has to give in this run."""

    def __init__(self, repository_id, location, root=None):
        self.repository_id = repository_id
        self.location = location
        self.directory = os.path.join(root or state_root(), "repositories", _directory_name(repository_id))
        self.path = os.path.join(self.directory, "seen.json")
        self.warnings = []
        self.disappeared = {}           # backup id -> what this proxy knew of it (for verify)
        self._fallback = None           # the memory kept in this process when the file cannot be written
        self._lock = threading.Lock()

    def warn(self, text):
        if text not in self.warnings:
            self.warnings.append(text)

    # -- the file ---------------------------------------------------------------------------------------------

    def _read(self):
        if self._fallback is not None:
            return json.loads(json.dumps(self._fallback))
        try:
            with open(self.path, "rb") as handle:
                state = json.loads(handle.read().decode("utf-8"))
        except FileNotFoundError:
            return _empty()
        except (OSError, ValueError) as err:
            self.warn("This proxy's memory of repository %s at %s cannot be read (%s); it starts again from what it sees now."
                      % (self.location, self.path, err))
            return _empty()
        if not isinstance(state, dict) or not isinstance(state.get("backups"), dict):
            return _empty()
        state.setdefault("generation", 0)
        return state

    def _make_directory(self):
        # every level made here is private (os.makedirs applies its mode to the last level only): the memory names VMs
        missing = []
        path = self.directory
        while path and not os.path.isdir(path):
            missing.append(path)
            parent = os.path.dirname(path)
            if parent == path:
                break
            path = parent
        for path in reversed(missing):
            with contextlib.suppress(FileExistsError):
                os.mkdir(path, 0o700)

    def _write(self, state):
        text = json.dumps(state, sort_keys=True, separators=(",", ":")).encode("utf-8")
        self._make_directory()
        tmp = os.path.join(self.directory, ".seen-%s.tmp" % uuid.uuid4().hex)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.rename(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    @contextlib.contextmanager
    def _locked(self):
        with self._lock:
            if self._fallback is not None:
                yield
                return
            try:
                self._make_directory()
                fd = os.open(os.path.join(self.directory, "seen.lock"), os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as err:
                self._give_up(err)
                yield
                return
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def _give_up(self, err):
        """The memory cannot be kept on disk: keep it in this process only, and say so once."""
        if self._fallback is None:
            self._fallback = _empty()
            reason = os.strerror(err.errno) if getattr(err, "errno", None) else str(err)
            self.warn("This proxy cannot keep its memory of repository %s at %s (%s): a replayed catalog or a backup "
                      "deleted without a prune is noticed only within this run. Set %s to a writable, persistent "
                      "directory." % (self.location, self.directory, reason, STATE_DIR_ENV))

    def update(self, change):
        """Apply ``change(state)`` to the memory under its lock; written only when it changed. Returns change's result."""
        with self._locked():
            state = self._read()
            before = json.dumps(state, sort_keys=True)
            result = change(state)
            if json.dumps(state, sort_keys=True) != before:
                if self._fallback is not None:
                    self._fallback = state
                else:
                    try:
                        self._write(state)
                    except OSError as err:
                        self._give_up(err)
                        self._fallback = state
            return result

    # -- the checks -------------------------------------------------------------------------------------------

    def remembered_generation(self):
        with self._lock:
            return int(self._read().get("generation") or 0)

    def went_back(self, generation, remembered):
        """True when ``generation`` (of the catalog just read) is lower than ``remembered``, what this proxy had seen
        before it read the catalog (and says so). Taken before the read: a catalog another fork of this proxy writes
        meanwhile is not compared with a generation that did not exist yet when the read began."""
        if generation >= remembered:
            return False
        self.warn("The catalog of repository %s has generation %d, older than generation %d this proxy saw: an older "
                  "catalog was put back (or two writers raced); it was not trusted and was rebuilt from the backup records."
                  % (self.location, generation, remembered))
        return True

    def write_catalog(self, generation, put):
        """Write the catalog with ``put(new_generation)``, above the catalog read (``generation``) and above any this
        proxy saw, and remember it once written. Under the memory's lock: forks of this proxy write the catalog one at
        a time, so none of them puts back a lower generation just after another wrote a higher one."""
        with self._locked():
            state = self._read()
            new = max(int(generation), int(state.get("generation") or 0)) + 1
            put(new)
            state["generation"] = new
            if self._fallback is not None:
                self._fallback = state
                return new
            try:
                self._write(state)
            except OSError as err:
                self._give_up(err)
                self._fallback = state
        return new

    def observe(self, known, accounted, generation):
        """Compare the backups listed now (``known``: id -> catalog values, states from status objects) with what this
        proxy saw; marks replayed statuses damaged in ``known``; returns {id: remembered facts} of vanished backups.

        ``accounted(ids)`` returns (ids whose record exists now, ids with an authentic tombstone) among ``ids``."""
        def change(state):
            state["generation"] = max(int(state.get("generation") or 0), int(generation))
            seen = state["backups"]
            for backup_id, values in known.items():
                self._check_status(backup_id, values, seen)
            missing = sorted(set(seen) - set(known))
            present, pruned = accounted(missing) if missing else ([], [])
            vanished = {}
            for backup_id in missing:
                if backup_id in pruned:
                    del seen[backup_id]         # deleted by a prune (or acknowledged): accounted for
                elif backup_id not in present:
                    vanished[backup_id] = dict(seen[backup_id])
            return vanished
        vanished = self.update(change)
        self.disappeared = vanished
        for backup_id, facts in sorted(vanished.items()):
            self.warn(disappeared_message(backup_id, facts))
        return vanished

    def _check_status(self, backup_id, values, seen):
        status = values.get("verify") or None
        remembered = seen.get(backup_id)
        if remembered is None:
            seen[backup_id] = _facts(values, status)
            return
        then = _time(remembered.get("verified"))
        now = _time(status.get("verified")) if status else None
        if then is not None and (now is None or (then - now).total_seconds() > STATUS_CLOCK_MARGIN_SECONDS):
            # The status is older than one this proxy saw, or gone: it was put back or removed. The remembered
            # outcome stands (a damaged backup stays damaged) and is written into the catalog.
            if not remembered.get("ok") or values.get("state") == "damaged":
                values["state"] = "damaged"
                values["verify"] = {"ok": False, "verified": remembered.get("verified"),
                                    "problems": ["its verify status was put back or removed; this proxy saw it damaged on %s"
                                                 % remembered.get("verified")]}
            self.warn("The verify status of backup %s in repository %s is %s, older than the one this proxy saw from %s "
                      "(which said %s): an older status was put back or it was removed. The backup is listed as %s; run "
                      "verify on it." % (backup_id, self.location, "gone" if now is None else "from %s" % status.get("verified"),
                                         remembered.get("verified"), "ok" if remembered.get("ok") else "damaged",
                                         values["state"]))
            return
        if status and (then is None or now > then):
            remembered.update(verified=status.get("verified"), ok=bool(status.get("ok")))

    def acknowledge(self, backup_ids):
        def change(state):
            for backup_id in backup_ids:
                state["backups"].pop(backup_id, None)
        self.update(change)
        for backup_id in backup_ids:
            self.disappeared.pop(backup_id, None)


def _facts(values, status):
    facts = {"vm": values.get("vm_name"), "sequence": values.get("sequence")}
    if status and status.get("verified"):
        facts.update(verified=status.get("verified"), ok=bool(status.get("ok")))
    return facts


def _time(value):
    try:
        return parse_time(value)
    except RepositoryError:
        return None


def disappeared_message(backup_id, facts):
    return ("Backup %s has disappeared from the repository without a prune (VM %s): this proxy saw it committed, and "
            "there is no record of its deletion (deleted/%s). Someone or something with write access deleted it. If that "
            "was intended, acknowledge it; otherwise restore the repository's objects from a copy." % (
                backup_id, facts.get("vm") or "?", backup_id))


# -- what the repository calls -------------------------------------------------------------------------------------

_OPENED = []                        # memories of this process, whose warnings a module hands on (take_warnings)
_OPENED_LOCK = threading.Lock()


def memory_of(repo):
    """The memory of ``repo``'s repository on this proxy (one per Repository object and its read-only views)."""
    memory = getattr(repo, "_proxy_memory", None)
    if memory is None:
        memory = ProxyMemory(repo.config.get("repository_id") or repo.location, repo.location)
        repo._proxy_memory = memory
        with _OPENED_LOCK:
            _OPENED.append(memory)
    return memory


def take_warnings():
    """Every warning of this process's repository memories, once (a module calls this before it exits)."""
    out = []
    with _OPENED_LOCK:
        memories = list(_OPENED)
        del _OPENED[:]
    for memory in memories:
        out.extend(w for w in memory.warnings if w not in out)
    return out


def warnings_of(repo):
    """What this run has to tell the user about replay and deletion (module results carry them as warnings)."""
    memory = getattr(repo, "_proxy_memory", None)
    return list(memory.warnings) if memory is not None else []


def accounted_for(repo, backup_ids):
    """(present, pruned) among ``backup_ids``, backups this proxy saw that the listing just made lacks: present ones
    were committed after the listing began (another fork of this proxy saw them meanwhile), pruned ones have a
    tombstone. The rest vanished."""
    present = [backup_id for backup_id in backup_ids if repo.store.stat("backups/%s" % backup_id) is not None]
    rest = [backup_id for backup_id in backup_ids if backup_id not in present]
    return present, (authentic_tombstones(repo, rest) if rest else [])


def authentic_tombstones(repo, backup_ids):
    """The ids among ``backup_ids`` whose tombstone exists and opens with the repository's keys."""
    listed = set(info.key[len(TOMBSTONE_PREFIX):] for info in repo.store.list(TOMBSTONE_PREFIX))
    out = []
    for backup_id in backup_ids:
        if backup_id not in listed:
            continue
        try:
            values = json.loads(repo._get_sealed(KIND_STATUS, TOMBSTONE_PREFIX + backup_id))
        except (KeyError, ValueError):
            continue                    # unreadable or forged: no proof of a prune
        if values.get("backup_id") == backup_id:
            out.append(backup_id)
    return out


def tombstone(record, reason):
    """The body of ``deleted/<id>``: which backup, where it stood in the order, when and why it was deleted."""
    return json_bytes({"backup_id": record.backup_id, "vm_id": record.vm_id, "vm_name": record.vm_name,
                       "lineage": record.lineage, "sequence": record.sequence, "created": iso(record.created),
                       "deleted": iso(utc_now()), "reason": reason})


def disappeared_entries(repo, record_status=True):
    """Verify report entries (not ok) for the backups this proxy saw that vanished without a prune."""
    memory = memory_of(repo)
    (repo if record_status else repo.read_only_view()).refresh_catalog()
    out = []
    for backup_id, facts in sorted(memory.disappeared.items()):
        out.append({"backup_id": backup_id, "vm_name": facts.get("vm"), "ok": False, "missing_chunks": [], "corrupt_chunks": [],
                    "missing_count": 0, "corrupt_count": 0, "problems": [disappeared_message(backup_id, facts)]})
    return out


def acknowledge_disappeared(repo, backup_ids):
    """A person has dealt with these vanished backups: write their tombstones (reason ``acknowledged``), so that no
    proxy reports them again. Returns the ids acknowledged (ids still present in the repository are left alone)."""
    ids = [check_backup_id(backup_id, repo.location) for backup_id in backup_ids]
    done = []
    for backup_id in ids:
        if repo.store.stat("backups/%s" % backup_id) is not None:
            continue
        record = BackupRecord({"backup_id": backup_id, "vm_name": (memory_of(repo).disappeared.get(backup_id) or {}).get("vm")})
        repo._put_sealed(KIND_STATUS, tombstone_key(backup_id), tombstone(record, "acknowledged after it disappeared"))
        done.append(backup_id)
    repo.store.flush()
    memory_of(repo).acknowledge(done)
    return done


def stored_state(repo, backup_id):
    """(record or None, state, why) of a backup read from storage now: its record and ``status/<id>``, never a cache
    (the parent of an incremental is chosen with this), plus what this proxy remembers of its status."""
    try:
        record = repo.get_backup(backup_id)
    except RepositoryError as err:
        return None, "damaged", err.message
    status = repo._status(backup_id)
    if status and not status.get("ok"):
        return record, "damaged", "its last verify (%s) found it damaged" % status.get("verified")
    values = {"verify": status, "state": "complete"}
    memory = memory_of(repo)
    with memory._lock:
        remembered = dict(memory._read()["backups"].get(backup_id) or {})
    if remembered:
        memory._check_status(backup_id, values, {backup_id: remembered})
        if values["state"] == "damaged":
            return record, "damaged", values["verify"]["problems"][0]
    return record, "complete", None
