# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The backup repository: deduplicated, compressed, optionally encrypted chunks plus per-disk manifests.

A disk is cut into fixed-size chunks aligned to virtual offsets. Each non-zero chunk is stored once
under its content address (``chunks/<2 hex>/<id>``); all-zero chunks are not stored. Each backup of a
disk has a complete manifest (``manifests/<backup_id>/<n>``: the chunk id of every offset), so every
backup restores in one pass and can be pruned on its own. A backup becomes visible when its record
(``backups/<backup_id>``) is written, after its chunks and manifests are durable. The catalog
(``catalog``) is a cache of the records and is rebuilt from them. Formats: docs/repository.md.

Concurrency: writers register a session marker (``sessions/<id>``, heartbeat by mtime) and touch the
chunks they deduplicate against; prune/GC hold an exclusive lock and delete only chunks that no
committed manifest references and that are older than both the grace period and the oldest live
session. The split: this file (sessions, manifests, readers, verify, prune, GC), repository_store.py
(local/S3), repository_crypto.py (ids, compression, encryption), retention.py (the GFS policy).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import concurrent.futures
import copy
import datetime
import json
import os
import re
import struct
import threading
import time
import uuid

from ansible_collections.hyperv.backup.plugins.module_utils.errors import RepositoryError
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_crypto import (
    KIND_BACKUP, KIND_CATALOG, KIND_CHUNK, KIND_MANIFEST, KIND_STATUS, RepositoryKeys, new_compressor, require_libraries,
)
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_store import LockHeld, make_private_dirs, open_store

MiB = 1024 * 1024
FORMAT_NAME = "hyperv.backup repository"
FORMAT_VERSION = 1
DEFAULT_CHUNK_SIZE = 1 * MiB
DEFAULT_COMPRESSION_LEVEL = 1
ZERO_ID = bytes(32)                 # manifest entry of an all-zero (not stored) chunk
MANIFEST_MAGIC = b"HVDM"
MANIFEST_HEAD = struct.Struct(">4sI")
SESSION_HEARTBEAT_SECONDS = 60
SESSION_TIMEOUT_SECONDS = 15 * 60   # a marker not refreshed for this long belongs to a dead writer
TOUCH_AFTER_SECONDS = 10 * 60       # a deduplicated chunk older than this is touched; GC keeps this margin
DEFAULT_GC_GRACE_SECONDS = 15 * 60
MAX_LISTED_PROBLEMS = 100           # per backup, in verify reports


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc)


def iso(moment):
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if moment else None


def parse_time(value):
    """datetime (naive = UTC), epoch number or ISO 8601 text -> aware UTC datetime (None stays None)."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)
    if isinstance(value, (int, float)):
        return datetime.datetime.fromtimestamp(value, datetime.timezone.utc)
    text = str(value).strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise RepositoryError("Cannot read the time %r." % value, hint="Use ISO 8601, e.g. 2026-11-25 or 2026-11-25T06:00:00Z.")
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.timezone.utc)


BACKUP_ID_PATTERN = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{12}$")


def check_backup_id(backup_id, location=None):
    """Refuse anything but an id BackupSession makes (``20261125T071700Z-0123456789ab``): an id is part of an
    object's key, so a path in it ('..', '/') must never reach the store."""
    if not isinstance(backup_id, str) or not BACKUP_ID_PATTERN.match(backup_id):
        raise RepositoryError("%r is not a backup id%s." % (backup_id, " of %s" % location if location else ""),
                              hint="Backup ids look like 20261125T071700Z-0123456789ab; list them with "
                                   "hyperv.backup.hyperv_backup_info.", backup_id=str(backup_id))
    return backup_id


def chunk_key(chunk_id):
    return "chunks/%s/%s" % (chunk_id[:2], chunk_id)


def _json_bytes(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")


class BackupRecord:
    """One committed (or in-progress) backup of a VM: who, when, how, and its disks with their sizes."""

    FIELDS = ("backup_id", "vm_id", "vm_name", "host", "created", "completed", "type", "method", "consistency",
              "parent_backup_id", "disks", "stats", "metadata", "retain_until", "state", "verify")

    def __init__(self, values):
        self.values = dict(values)
        for name in self.FIELDS:
            setattr(self, name, self.values.get(name))
        self.created = parse_time(self.values.get("created"))
        self.completed = parse_time(self.values.get("completed"))
        self.disks = list(self.values.get("disks") or [])
        self.stats = dict(self.values.get("stats") or {})
        self.state = self.values.get("state") or "complete"

    @property
    def backup_type(self):
        return self.type

    def disk(self, disk_key):
        for disk in self.disks:
            if disk["disk_key"] == disk_key:
                return disk
        raise RepositoryError("Backup %s has no disk %r; its disks: %s." % (
            self.backup_id, disk_key, ", ".join(d["disk_key"] for d in self.disks) or "none"),
            backup_id=self.backup_id)

    def as_dict(self):
        out = dict(self.values)
        out.update(created=iso(self.created), completed=iso(self.completed), state=self.state, disks=self.disks,
                   stats=self.stats)
        return out


class DiskManifest:
    """The chunk table of one disk in one backup: ``chunk_ids[i]`` is the hex id at offset i*chunk_size, or None (zeros)."""

    def __init__(self, header, chunk_ids):
        self.header = header
        self.chunk_ids = chunk_ids
        self.virtual_size = header["virtual_size"]
        self.chunk_size = header["chunk_size"]
        self.disk_key = header["disk_key"]
        self.backup_id = header["backup_id"]

    def encode(self):
        table = b"".join(bytes.fromhex(cid) if cid else ZERO_ID for cid in self.chunk_ids)
        head = _json_bytes(self.header)
        return MANIFEST_HEAD.pack(MANIFEST_MAGIC, len(head)) + head + table

    @classmethod
    def decode(cls, data):
        magic, head_len = MANIFEST_HEAD.unpack_from(data)
        if magic != MANIFEST_MAGIC:
            raise ValueError("not a disk manifest")
        start = MANIFEST_HEAD.size
        header = json.loads(data[start:start + head_len].decode("utf-8"))
        if header.get("format", 0) > FORMAT_VERSION:
            raise ValueError("manifest format %s is newer than this code (%d)" % (header.get("format"), FORMAT_VERSION))
        table = data[start + head_len:]
        if len(table) != 32 * header["chunk_count"]:
            raise ValueError("chunk table has %d bytes, expected %d" % (len(table), 32 * header["chunk_count"]))
        ids = []
        for pos in range(0, len(table), 32):
            raw = table[pos:pos + 32]
            ids.append(None if raw == ZERO_ID else raw.hex())
        return cls(header, ids)

    def chunk_length(self, index):
        return min(self.chunk_size, self.virtual_size - index * self.chunk_size)


class Repository:
    """A repository at a location (local directory or s3://bucket/prefix). Use ``init`` or ``open``."""

    def __init__(self, store, config, keys, workers=None):
        self.store = store
        self.config = config
        self.keys = keys
        self.location = store.location
        self.chunk_size = config["chunk_size"]
        self.compression_level = config["compression"]["level"]
        self.object_lock_days = (config.get("object_lock") or {}).get("days")
        default_workers = 8 if store.kind == "s3" else max(2, os.cpu_count() or 2)
        self.workers = workers or default_workers
        self._local = threading.local()
        self._exclusive_held = False
        self.read_only = False

    # -- creation and opening -------------------------------------------------------------

    @classmethod
    def init(cls, location, passphrase=None, chunk_size=DEFAULT_CHUNK_SIZE, s3_options=None, object_lock_days=None,
             compression_level=DEFAULT_COMPRESSION_LEVEL, scrypt_params=None):
        """Create a repository; RepositoryError if one exists there already."""
        require_libraries(encrypted=bool(passphrase))
        _check_chunk_size(chunk_size)
        if not 1 <= int(compression_level) <= 19:
            raise RepositoryError("compression_level %s is out of range." % compression_level, hint="Use 1 (fast) to 19.")
        if object_lock_days is not None and (not isinstance(object_lock_days, int) or object_lock_days < 0):
            raise RepositoryError("object_lock_days %r is not allowed." % (object_lock_days,),
                                  hint="Use a whole number of days (1 or more), or leave it unset for no Object Lock.")
        store = open_store(location, s3_options, create=True)
        if store.kind == "s3":
            lock_enabled = store.check_bucket()
            if object_lock_days and not lock_enabled:
                raise RepositoryError("Bucket %s does not have Object Lock enabled, so object_lock_days cannot be used." % store.bucket,
                                      hint="Create the bucket with Object Lock enabled (it cannot be turned on later "
                                           "on every provider), or drop object_lock_days.")
        elif object_lock_days:
            raise RepositoryError("object_lock_days needs an S3 repository (Object Lock); %s is a local directory." % location,
                                  hint="Use an s3:// location on a bucket with Object Lock, or drop object_lock_days.")
        if store.stat("config") is not None:
            raise RepositoryError("A repository already exists at %s." % store.location,
                                  hint="Open it instead, or choose an empty location.", location=store.location)
        keys, encryption = (RepositoryKeys.create(passphrase, scrypt_params) if passphrase else (RepositoryKeys(), None))
        config = {
            "format": FORMAT_NAME, "version": FORMAT_VERSION, "repository_id": str(uuid.uuid4()), "created": iso(utc_now()),
            "chunk_size": int(chunk_size), "compression": {"algorithm": "zstd", "level": int(compression_level)},
            "chunk_id": "blake3-keyed" if passphrase else "blake3", "encryption": encryption,
            "object_lock": {"days": int(object_lock_days), "mode": store.lock_mode} if object_lock_days else None,
        }
        if store.kind == "local":
            for prefix in range(256):
                make_private_dirs(os.path.join(store.root, "chunks", "%02x" % prefix))
            for name in ("manifests", "backups", "sessions", "status", "locks"):
                make_private_dirs(os.path.join(store.root, name))
        store.put("config", json.dumps(config, indent=2, sort_keys=True).encode("utf-8"))
        store.flush()
        return cls(store, config, keys)

    @classmethod
    def open(cls, location, passphrase=None, s3_options=None, workers=None):
        """Open an existing repository; RepositoryError if missing, of a newer format, or the passphrase is wrong."""
        store = open_store(location, s3_options)
        try:
            raw = store.get("config")
        except (KeyError, FileNotFoundError, NotADirectoryError):
            raise RepositoryError("No backup repository at %s." % store.location,
                                  hint="Create it first (hyperv.backup.hyperv_backup_repository with state: present).",
                                  location=store.location)
        try:
            config = json.loads(raw.decode("utf-8"))
        except ValueError:
            raise RepositoryError("The repository config at %s is not valid JSON (damaged)." % store.location,
                                  hint="Restore the file 'config' from a copy; without it the repository cannot be read.")
        if config.get("format") != FORMAT_NAME:
            raise RepositoryError("%s is not a hyperv.backup repository." % store.location, location=store.location)
        if config.get("version", 0) > FORMAT_VERSION:
            raise RepositoryError("Repository %s has format version %s; this collection reads up to %d." % (
                store.location, config.get("version"), FORMAT_VERSION), hint="Upgrade the hyperv.backup collection.")
        require_libraries(encrypted=bool(config.get("encryption")))
        keys = RepositoryKeys.unlock(config.get("encryption"), passphrase, store.location)
        return cls(store, config, keys, workers=workers)

    @classmethod
    def ensure(cls, location, passphrase=None, s3_options=None, **init_options):
        """Open the repository, creating it if absent. Returns (repository, created)."""
        store = open_store(location, s3_options)
        if store.stat("config") is None:
            return cls.init(location, passphrase=passphrase, s3_options=s3_options, **init_options), True
        return cls.open(location, passphrase=passphrase, s3_options=s3_options), False

    def read_only_view(self):
        """This repository for reading only (check mode): listings work as usual, but nothing is written, not even the
        catalog cache that a listing refreshes; a write raises RepositoryError (issue 12, point 8)."""
        view = copy.copy(self)
        view.read_only = True
        return view

    @property
    def encrypted(self):
        return self.keys.encrypted

    def describe(self):
        """Facts about the repository for module results (no secrets)."""
        return {"location": self.location, "backend": self.store.kind, "repository_id": self.config["repository_id"],
                "format_version": self.config["version"], "chunk_size": self.chunk_size, "encrypted": self.encrypted,
                "compression": dict(self.config["compression"]), "chunk_id": self.config["chunk_id"],
                "object_lock_days": self.object_lock_days, "created": self.config["created"]}

    # -- object helpers ---------------------------------------------------------------------

    def compressor(self):
        comp = getattr(self._local, "compressor", None)
        if comp is None:
            comp = self._local.compressor = new_compressor(self.compression_level)
        return comp

    def _put_sealed(self, kind, key, data, retain_until=None):
        if self.read_only:
            raise RepositoryError("Repository %s is open for reading only (check mode); %s was not written." % (self.location, key),
                                  hint="Run without check mode to change the repository.")
        self.store.put(key, self.keys.seal(kind, key, data, self.compressor()), retain_until=retain_until)

    def _get_sealed(self, kind, key):
        return self.keys.unseal(kind, key, self.store.get(key))

    def _retain_until(self):
        if not self.object_lock_days:
            return None
        return self.store.now() + self.object_lock_days * 86400

    def read_chunk(self, chunk_id, expected_length=None):
        """Plaintext of a chunk, checked against its id; raises KeyError (missing) or ValueError (corrupt)."""
        key = chunk_key(chunk_id)
        data = self.keys.unseal(KIND_CHUNK, key, self.store.get(key))
        if self.keys.chunk_id(data) != chunk_id:
            raise ValueError("content does not match its id (hash mismatch)")
        if expected_length is not None and len(data) != expected_length:
            raise ValueError("chunk has %d bytes, the manifest expects %d" % (len(data), expected_length))
        return data

    # -- writing ----------------------------------------------------------------------------

    def begin_backup(self, vm_id, vm_name, host, method, backup_type, parent_backup_id=None, consistency=None, metadata=None):
        """Start a backup session (registers an in-progress marker). Use as a context manager or commit()/abort()."""
        return BackupSession(self, vm_id=vm_id, vm_name=vm_name, host=host, method=method, backup_type=backup_type,
                             parent_backup_id=parent_backup_id, consistency=consistency, metadata=metadata or {})

    # -- reading ----------------------------------------------------------------------------

    def get_backup(self, backup_id):
        check_backup_id(backup_id, self.location)
        try:
            values = json.loads(self._get_sealed(KIND_BACKUP, "backups/%s" % backup_id))
        except KeyError:
            raise RepositoryError("Backup %s does not exist in %s." % (backup_id, self.location),
                                  hint="List the backups with hyperv.backup.hyperv_backup_info.", backup_id=backup_id)
        except ValueError as err:
            raise RepositoryError("The record of backup %s is damaged: %s." % (backup_id, err),
                                  hint="Run verify; rebuild the catalog; the backup cannot be used.", backup_id=backup_id)
        return BackupRecord(values)

    def load_disk_manifest(self, backup_id, disk_key, record=None):
        record = record or self.get_backup(backup_id)
        disk = record.disk(disk_key)
        try:
            return DiskManifest.decode(self._get_sealed(KIND_MANIFEST, disk["manifest"]))
        except KeyError:
            raise RepositoryError("Backup %s: the manifest of disk %r is missing (%s)." % (backup_id, disk_key, disk["manifest"]),
                                  hint="The backup cannot be restored; run verify and use another backup.", backup_id=backup_id)
        except (ValueError, struct.error) as err:
            raise RepositoryError("Backup %s: the manifest of disk %r is damaged: %s." % (backup_id, disk_key, err),
                                  hint="The backup cannot be restored; run verify and use another backup.", backup_id=backup_id)

    def read_attachment(self, backup_id, name):
        """The bytes a backup stored with ``BackupSession.attach`` (e.g. the VM configuration), or None if it has none."""
        check_backup_id(backup_id, self.location)
        _check_attachment_name(name)
        try:
            return self._get_sealed(KIND_MANIFEST, attachment_key(backup_id, name))
        except KeyError:
            return None
        except ValueError as err:
            raise RepositoryError("Backup %s: its %s is damaged: %s." % (backup_id, name, err),
                                  hint="Run verify; restore the disks from this backup and register the VM by hand.",
                                  backup_id=backup_id)

    def open_disk_reader(self, backup_id, disk_key):
        record = self.get_backup(backup_id)
        return DiskReader(self, record, self.load_disk_manifest(backup_id, disk_key, record))

    def _committed_ids(self):
        return sorted(info.key.split("/", 1)[1] for info in self.store.list("backups/"))

    def _load_catalog(self):
        try:
            catalog = json.loads(self._get_sealed(KIND_CATALOG, "catalog"))
            if catalog.get("version") == FORMAT_VERSION:
                return catalog
        except (KeyError, ValueError):
            pass
        return {"version": FORMAT_VERSION, "backups": {}}

    def _status(self, backup_id):
        try:
            return json.loads(self._get_sealed(KIND_STATUS, "status/%s" % backup_id))
        except (KeyError, ValueError):
            return None

    def refresh_catalog(self, rebuild=False):
        """Bring the catalog in line with the committed backup records (all re-read when ``rebuild``)."""
        catalog = {"version": FORMAT_VERSION, "backups": {}} if rebuild else self._load_catalog()
        committed = self._committed_ids()
        known = catalog["backups"]
        changed = rebuild
        for gone in set(known) - set(committed):
            del known[gone]
            changed = True
        for backup_id in committed:
            if backup_id in known:
                continue
            try:
                values = self.get_backup(backup_id).as_dict()
            except RepositoryError:
                values = {"backup_id": backup_id, "state": "damaged", "disks": [], "stats": {}}
            status = self._status(backup_id)
            if status:
                values["verify"] = status
                values["state"] = "complete" if status.get("ok") else "damaged"
            known[backup_id] = values
            changed = True
        # a read-only view keeps the refreshed catalog in memory only: check mode leaves the repository as it was
        if changed and not self.read_only:
            try:
                self._put_sealed(KIND_CATALOG, "catalog", _json_bytes(catalog))
            except (RepositoryError, OSError):
                pass    # the catalog is a cache; the records stay the truth
        return catalog

    def list_backups(self, vm=None, host=None, since=None, until=None, include_in_progress=False):
        """Committed backups (newest last), filtered by VM name or id, host, and created time range."""
        catalog = self.refresh_catalog()
        records = [BackupRecord(values) for values in catalog["backups"].values()]
        if include_in_progress:
            records.extend(self.in_progress())
        since, until = parse_time(since), parse_time(until)
        out = []
        for record in records:
            if vm and vm not in (record.vm_id, record.vm_name):
                continue
            if host and (record.host or "").lower() != host.lower():
                continue
            if since and (record.created is None or record.created < since):
                continue
            if until and (record.created is None or record.created > until):
                continue
            out.append(record)
        return sorted(out, key=lambda r: (r.created or utc_now(), r.backup_id))

    def latest_backup(self, vm_id):
        backups = [r for r in self.list_backups(vm=vm_id) if r.vm_id == vm_id and r.state == "complete"]
        return backups[-1] if backups else None

    def list_vms(self):
        vms = {}
        for record in self.list_backups():
            entry = vms.setdefault(record.vm_id, {"vm_id": record.vm_id, "vm_name": record.vm_name, "backups": 0})
            entry.update(vm_name=record.vm_name, host=record.host, latest_backup_id=record.backup_id, latest=iso(record.created))
            entry["backups"] += 1
        return sorted(vms.values(), key=lambda v: (v["vm_name"] or "", v["vm_id"] or ""))

    def _sessions(self):
        """Session markers: (values, mtime, live) for each, read with the repository keys."""
        now = self.store.now()
        out = []
        for info in self.store.list("sessions/"):
            try:
                values = json.loads(self._get_sealed(KIND_STATUS, info.key))
            except (KeyError, ValueError):
                values = {"backup_id": info.key.split("/", 1)[1]}
            out.append((values, info, info.mtime >= now - values.get("timeout", SESSION_TIMEOUT_SECONDS)))
        return out

    def in_progress(self):
        out = []
        for values, _info, live in self._sessions():
            rec = dict(values)
            rec["state"] = "in_progress" if live else "abandoned"
            out.append(BackupRecord(rec))
        return out

    def _load_backups(self, backup_ids, strict):
        """Yield (backup_id, record, [DiskManifest]) for each id, fetched on a thread pool (S3 round trips overlap).

        ``strict``: a record or manifest that cannot be read raises. Otherwise the RepositoryError takes its place.
        """
        def load(backup_id):
            try:
                record = self.get_backup(backup_id)
            except RepositoryError as err:
                if strict:
                    raise
                return backup_id, err, []
            manifests = []
            for disk in record.disks:
                try:
                    manifests.append(self.load_disk_manifest(backup_id, disk["disk_key"], record))
                except RepositoryError as err:
                    if strict:
                        raise
                    manifests.append(err)
            return backup_id, record, manifests

        with concurrent.futures.ThreadPoolExecutor(self.workers) as pool:
            yield from pool.map(load, backup_ids)

    # -- verify -----------------------------------------------------------------------------

    def verify(self, backup_ids=None, record_status=True):
        """Re-read and re-hash every chunk the given (default: all) backups reference; report problems by backup.

        With ``record_status`` the outcome is stored per backup (``status/<id>``), so listings show damaged backups.
        """
        # Ids given by a person are checked before anything is read or written: the status of each backup is
        # stored under status/<id>, so an id with a path in it ('../config') would overwrite another object.
        ids = [check_backup_id(backup_id, self.location) for backup_id in backup_ids] if backup_ids else self._committed_ids()
        results = []
        wanted = {}                # chunk id -> expected length
        per_backup = []
        for backup_id, record, manifests in self._load_backups(ids, strict=False):
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
                for index, cid in enumerate(manifest.chunk_ids):
                    if cid:
                        wanted[cid] = manifest.chunk_length(index)
            per_backup.append((entry, manifests))
        outcome = {}
        checked_bytes = [0]

        def check(item):
            cid, length = item
            try:
                data = self.read_chunk(cid, length)
                return cid, None, len(data)
            except KeyError:
                return cid, "missing", 0
            except ValueError as err:
                return cid, "corrupt: %s" % err, 0

        with concurrent.futures.ThreadPoolExecutor(self.workers) as pool:
            for cid, problem, size in pool.map(check, wanted.items()):
                outcome[cid] = problem
                checked_bytes[0] += size
        for entry, manifests in per_backup:
            counts = {"missing": 0, "corrupt": 0}
            for manifest in manifests:
                for index, cid in enumerate(manifest.chunk_ids):
                    problem = outcome.get(cid) if cid else None
                    if not problem:
                        continue
                    kind = "missing" if problem == "missing" else "corrupt"
                    counts[kind] += 1
                    if counts[kind] <= MAX_LISTED_PROBLEMS:
                        entry[kind + "_chunks"].append({"disk_key": manifest.disk_key, "offset": index * manifest.chunk_size,
                                                        "chunk_id": cid, "problem": problem})
            entry["missing_count"], entry["corrupt_count"] = counts["missing"], counts["corrupt"]
            entry["ok"] = not (counts["missing"] or counts["corrupt"] or entry["problems"])
            results.append(entry)
            status = {"ok": entry["ok"], "verified": iso(utc_now()), "missing": counts["missing"], "corrupt": counts["corrupt"],
                      "problems": entry["problems"][:10]}
            if record_status and self.store.stat("backups/%s" % entry["backup_id"]) is not None:
                # Only a backup that exists gets a status: an unknown id is reported, not recorded.
                try:
                    self._put_sealed(KIND_STATUS, "status/%s" % entry["backup_id"], _json_bytes(status))
                except (RepositoryError, OSError):
                    pass
        if record_status:
            self.refresh_catalog(rebuild=True)
        damaged = [e["backup_id"] for e in results if not e["ok"]]
        return {"ok": not damaged, "backups_checked": len(results), "chunks_checked": len(wanted), "bytes_checked": checked_bytes[0],
                "damaged_backups": damaged, "backups": results}

    # -- prune and garbage collection ---------------------------------------------------------

    def _exclusive(self, purpose, wait_seconds):
        return self.store.exclusive_lock("exclusive", purpose, wait_seconds=wait_seconds)

    def prune(self, policy, dry_run=False, vm=None, gc=True, grace_seconds=DEFAULT_GC_GRACE_SECONDS, wait_seconds=0):
        """Apply a RetentionPolicy per VM; remove the other backups (not locked ones), then GC. Returns a report."""
        lock = self._exclusive("prune", wait_seconds) if not dry_run else _null_context()
        try:
            with lock:
                self._exclusive_held = True
                return self._prune_locked(policy, dry_run, vm, gc, grace_seconds)
        except LockHeld as held:
            raise RepositoryError("Repository %s is locked by %s." % (self.location, held),
                                  hint="Another prune or GC is running; wait for it, or retry later.")
        finally:
            self._exclusive_held = False

    def _prune_locked(self, policy, dry_run, vm, gc, grace_seconds):
        now = self.store.now()
        parents_in_use = set(values.get("parent_backup_id") for values, _info, live in self._sessions() if live)
        by_vm = {}
        for record in self.list_backups(vm=vm):
            by_vm.setdefault(record.vm_id, []).append(record)
        report = {"dry_run": dry_run, "policy": policy.as_dict(), "kept": [], "removed": [], "locked": [], "vms": len(by_vm)}
        for records in by_vm.values():
            index = dict((r.backup_id, r) for r in records)
            keep, remove = policy.apply([(r.backup_id, r.created) for r in records])
            for backup_id, reasons in sorted(keep.items()):
                report["kept"].append(_brief(index[backup_id], reasons=reasons))
            for backup_id in remove:
                record = index[backup_id]
                if record.retain_until and record.retain_until > now:
                    report["locked"].append(_brief(record, kept_until=iso(parse_time(record.retain_until))))
                    continue
                if backup_id in parents_in_use:
                    report["kept"].append(_brief(record, reasons=["parent of a running backup"]))
                    continue
                if not dry_run:
                    self._delete_backup(record)
                report["removed"].append(_brief(record))
        if not dry_run and report["removed"]:
            self.refresh_catalog()
        if gc:
            report["gc"] = self._gc_locked(dry_run, grace_seconds)
        return report

    def _delete_backup(self, record):
        # The record goes first: from then on the backup is invisible; its manifests are then orphans GC can take.
        self.store.delete("backups/%s" % record.backup_id)
        self.store.flush()
        self.store.delete_prefix("manifests/%s/" % record.backup_id)
        self.store.delete("status/%s" % record.backup_id)

    def gc(self, dry_run=False, grace_seconds=DEFAULT_GC_GRACE_SECONDS, wait_seconds=0):
        """Delete chunks no committed manifest references (see the module docstring for the safety rules)."""
        if self._exclusive_held or dry_run:
            return self._gc_locked(dry_run, grace_seconds)
        try:
            with self._exclusive("gc", wait_seconds):
                return self._gc_locked(dry_run, grace_seconds)
        except LockHeld as held:
            raise RepositoryError("Repository %s is locked by %s." % (self.location, held),
                                  hint="Another prune or GC is running; wait for it, or retry later.")

    def _gc_locked(self, dry_run, grace_seconds):
        now = self.store.now()
        # Sessions first, then records: a writer that commits in between is seen either as live or as committed.
        sessions = self._sessions()
        live = [(values, info) for values, info, is_live in sessions if is_live]
        cutoff = now - grace_seconds
        for values, info in live:
            started = values.get("started_epoch", info.mtime)
            cutoff = min(cutoff, started - TOUCH_AFTER_SECONDS)
        referenced = set()
        committed = self._committed_ids()
        # Any unreadable record or manifest stops GC here, before it deletes anything (its references are unknown).
        try:
            for _backup_id, _record, manifests in self._load_backups(committed, strict=True):
                for manifest in manifests:
                    referenced.update(cid for cid in manifest.chunk_ids if cid)
        except RepositoryError as err:
            raise RepositoryError("Garbage collection stopped before deleting anything: %s" % err.message,
                                  hint="Run verify to list the damaged backups, and restore the missing object from a copy "
                                       "of the repository if there is one.", **err.extra)
        report = {"dry_run": dry_run, "chunks_total": 0, "chunks_referenced": len(referenced), "chunks_removed": 0,
                  "bytes_removed": 0, "chunks_kept_recent": 0, "chunks_locked": 0, "live_sessions": len(live),
                  "stale_sessions_removed": 0, "orphan_manifests_removed": 0}
        candidates = []
        for info in self.store.list("chunks/"):
            report["chunks_total"] += 1
            cid = info.key.rsplit("/", 1)[1]
            if cid in referenced:
                continue
            if info.mtime >= cutoff:
                report["chunks_kept_recent"] += 1
                continue
            candidates.append(info)
        # Leftovers of crashed or pruned backups: markers of dead sessions, manifests no record points at.
        stale_markers = [info.key for _values, info, is_live in sessions if not is_live]
        live_ids = set(values.get("backup_id") for values, _info in live)
        manifest_dirs = set(info.key.split("/")[1] for info in self.store.list("manifests/") if info.mtime < cutoff)
        orphan_manifests = sorted(manifest_dirs - set(committed) - live_ids)
        if dry_run:
            report.update(chunks_removed=len(candidates), bytes_removed=sum(info.size for info in candidates),
                          stale_sessions_removed=len(stale_markers), orphan_manifests_removed=len(orphan_manifests))
            return report
        with self.store.sweep_guard():
            for info in candidates:
                fresh = self.store.stat(info.key)       # re-check: a writer may have touched it since the listing
                if fresh is None:
                    continue
                if fresh.mtime >= cutoff:
                    report["chunks_kept_recent"] += 1
                    continue
                if fresh.retain_until and fresh.retain_until > now:
                    report["chunks_locked"] += 1
                    continue
                if self.store.delete(info.key):
                    report["chunks_removed"] += 1
                    report["bytes_removed"] += fresh.size
        for key in stale_markers:
            self.store.delete(key)
            report["stale_sessions_removed"] += 1
        for backup_id in orphan_manifests:
            self.store.delete_prefix("manifests/%s/" % backup_id)
            report["orphan_manifests_removed"] += 1
        for path in self.store.list_temporary("chunks/", cutoff):
            self.store.remove_temporary(path)
        self.store.flush()
        return report


class _null_context:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _brief(record, **extra):
    out = {"backup_id": record.backup_id, "vm_id": record.vm_id, "vm_name": record.vm_name, "created": iso(record.created),
           "type": record.type}
    out.update(extra)
    return out


def _check_chunk_size(chunk_size):
    if not isinstance(chunk_size, int) or chunk_size < 64 * 1024 or chunk_size > 64 * MiB or chunk_size & (chunk_size - 1):
        raise RepositoryError("chunk_size %r is not allowed." % (chunk_size,),
                              hint="Use a power of two between 64 KiB and 64 MiB (default 1 MiB).")


class BackupSession:
    """One backup of one VM in progress: disks are added, chunks written; ``commit`` makes it visible."""

    def __init__(self, repo, vm_id, vm_name, host, method, backup_type, parent_backup_id, consistency, metadata):
        self.repo = repo
        started = utc_now()
        self.backup_id = "%s-%s" % (started.strftime("%Y%m%dT%H%M%SZ"), uuid.uuid4().hex[:12])
        self.values = {"backup_id": self.backup_id, "vm_id": vm_id, "vm_name": vm_name, "host": host, "method": method,
                       "type": backup_type, "consistency": consistency, "parent_backup_id": parent_backup_id,
                       "metadata": dict(metadata or {}), "created": iso(started), "started_epoch": repo.store.now(),
                       "timeout": SESSION_TIMEOUT_SECONDS, "pid": os.getpid()}
        self.started = started
        self.disks = []
        self.known_chunks = set()       # ids stored or touched by this session (safe from GC while it is live)
        self._lock = threading.Lock()
        self._pool = None
        self._slots = threading.BoundedSemaphore(repo.workers * 2)
        self.retain_until = repo._retain_until()
        self.finished = False
        self._marker = "sessions/%s" % self.backup_id
        repo._put_sealed(KIND_STATUS, self._marker, _json_bytes(self.values))
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name="backup-heartbeat", daemon=True)
        self._heartbeat.start()

    def _beat(self):
        interval = min(SESSION_HEARTBEAT_SECONDS, self.values["timeout"] / 3.0)
        while not self._stop.wait(interval):
            try:
                self.repo.store.touch(self._marker)
            except Exception:    # pylint: disable=broad-except
                pass            # a missed heartbeat is harmless unless it lasts SESSION_TIMEOUT_SECONDS

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self.finished:
            self.abort()
        return False

    @property
    def pool(self):
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(self.repo.workers, thread_name_prefix="chunk")
            return self._pool

    def add_disk(self, disk_key, virtual_size, source_path=None, rct_id=None, metadata=None):
        if any(d.disk_key == disk_key for d in self.disks):
            raise RepositoryError("Disk %r was added twice to backup %s." % (disk_key, self.backup_id))
        if not isinstance(virtual_size, int) or virtual_size <= 0:
            raise RepositoryError("Disk %r: virtual_size must be a positive number of bytes, got %r." % (disk_key, virtual_size))
        disk = DiskWriter(self, len(self.disks), disk_key, virtual_size, source_path, rct_id, metadata or {})
        self.disks.append(disk)
        return disk

    def attach(self, name, data):
        """Store a small per-backup object (KB to a few MB, e.g. the VM configuration files) beside the manifests.

        It is sealed like a manifest (compressed, encrypted), kept as long as the backup (same prefix, same Object
        Lock retention), deleted with it by prune, and removed by GC if the backup is never committed.
        """
        _check_attachment_name(name)
        self.repo._put_sealed(KIND_MANIFEST, attachment_key(self.backup_id, name), bytes(data), self.retain_until)
        return attachment_key(self.backup_id, name)

    def _store_chunk(self, data):
        """Return (chunk id, stored compressed bytes or 0 if it was already there)."""
        repo = self.repo
        cid = repo.keys.chunk_id(data)
        with self._lock:
            if cid in self.known_chunks:
                return cid, 0, "dedup"
        key = chunk_key(cid)
        with repo.store.chunk_guard():
            info = repo.store.stat(key)
            if info is not None:
                fresh = info.mtime >= repo.store.now() - TOUCH_AFTER_SECONDS
                locked = self.retain_until is None or (info.retain_until or 0) >= self.retain_until
                if (fresh and locked) or repo.store.touch(key, self.retain_until):
                    with self._lock:
                        self.known_chunks.add(cid)
                    return cid, 0, "dedup"
        parts = repo.keys.seal_parts(KIND_CHUNK, key, data, repo.compressor())
        repo.store.put(key, parts, retain_until=self.retain_until, durable=False)   # synced in batch by commit
        with self._lock:
            self.known_chunks.add(cid)
        return cid, sum(len(part) for part in parts), "new"

    def abort(self):
        """Give up: nothing becomes visible; chunks already written are left for GC."""
        if self.finished:
            return
        self.finished = True
        self._shutdown()
        self.repo.store.delete(self._marker)

    def _shutdown(self):
        self._stop.set()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def commit(self):
        """Wait for every chunk, write manifests durably, then the backup record: only now is it visible."""
        if self.finished:
            raise RepositoryError("Backup %s was already committed or aborted." % self.backup_id)
        try:
            for disk in self.disks:
                disk.wait()
            self._check_references()
            repo = self.repo
            repo.store.flush()                      # chunk renames durable before anything points at them
            completed = utc_now()
            disks = []
            for disk in self.disks:
                manifest = disk.manifest(completed)
                repo._put_sealed(KIND_MANIFEST, manifest_key(self.backup_id, disk.ordinal), manifest.encode(), self.retain_until)
                disks.append(disk.summary())
            repo.store.flush()
            record = dict(self.values)
            for transient in ("started_epoch", "timeout", "pid"):
                record.pop(transient, None)
            elapsed = max(time.time() - self.values["started_epoch"], 1e-9)
            totals = dict((k, sum(d.stats[k] for d in self.disks)) for k in DiskWriter.COUNTERS)
            totals.update(duration_seconds=round(elapsed, 3), bytes_per_second=int(totals["bytes_read"] / elapsed))
            record.update(completed=iso(completed), disks=disks, stats=totals, state="complete",
                          retain_until=self.retain_until, format=FORMAT_VERSION)
            repo._put_sealed(KIND_BACKUP, "backups/%s" % self.backup_id, _json_bytes(record), self.retain_until)
            repo.store.flush()
        except BaseException:
            self.abort()
            raise
        self.finished = True
        self._shutdown()
        self.repo.store.delete(self._marker)
        return BackupRecord(record)

    def _check_references(self):
        """Refuse to commit a backup whose chunks a concurrent prune/GC may have removed.

        Chunks this session stored or touched are protected while its marker is live. Chunks reused from a
        parent are protected by the parent's manifest; if the parent was pruned meanwhile, or our marker was
        reaped as stale, check that every referenced chunk still exists.
        """
        repo = self.repo
        marker_alive = repo.store.stat(self._marker) is not None
        parent = self.values.get("parent_backup_id")
        parent_alive = not parent or repo.store.stat("backups/%s" % parent) is not None
        if marker_alive and parent_alive:
            return
        check = set()
        for disk in self.disks:
            check.update(cid for cid in disk.chunk_ids if cid and (not marker_alive or cid not in self.known_chunks))
        missing = sorted(cid for cid in check if repo.store.stat(chunk_key(cid)) is None)
        if missing:
            raise RepositoryError("Backup %s cannot be committed: %d chunk(s) it references were removed by a concurrent "
                                  "prune/GC (first: %s)." % (self.backup_id, len(missing), missing[0]),
                                  hint="Run the backup again (as a full backup if its parent was pruned).", backup_id=self.backup_id)


def manifest_key(backup_id, ordinal):
    return "manifests/%s/%d" % (backup_id, ordinal)


ATTACHMENT_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")     # never a number: those are the disk manifests


def attachment_key(backup_id, name):
    return "manifests/%s/%s" % (backup_id, name)


def _check_attachment_name(name):
    if not isinstance(name, str) or not ATTACHMENT_NAME.match(name):
        raise RepositoryError("%r is not a backup attachment name." % (name,))


class DiskWriter:
    """The chunks of one disk in a backup session. ``put_chunk`` is thread-safe."""

    COUNTERS = ("chunks", "zero_chunks", "new_chunks", "dedup_chunks", "reused_chunks", "bytes_read", "new_bytes",
                "stored_bytes", "referenced_bytes")

    def __init__(self, session, ordinal, disk_key, virtual_size, source_path, rct_id, metadata):
        self.session = session
        self.ordinal = ordinal
        self.disk_key = disk_key
        self.virtual_size = virtual_size
        self.source_path = source_path
        self.rct_id = rct_id
        self.metadata = dict(metadata)
        self.chunk_size = session.repo.chunk_size
        self.chunk_count = (virtual_size + self.chunk_size - 1) // self.chunk_size
        self.chunk_ids = [None] * self.chunk_count
        self._counts = dict((k, 0) for k in self.COUNTERS)
        self._lock = threading.Lock()
        self._futures = []
        self._zero = bytes(self.chunk_size)

    def _check_index(self, index):
        if not isinstance(index, int) or not 0 <= index < self.chunk_count:
            raise RepositoryError("Disk %r: chunk index %r is outside 0..%d." % (self.disk_key, index, self.chunk_count - 1))

    def expected_length(self, index):
        return min(self.chunk_size, self.virtual_size - index * self.chunk_size)

    def put_chunk(self, index, data):
        """Store the bytes at offset index*chunk_size (exactly one chunk; the last may be short)."""
        self._check_index(index)
        if len(data) != self.expected_length(index):
            raise RepositoryError("Disk %r: chunk %d has %d bytes; expected %d (chunk_size %d, virtual size %d)." % (
                self.disk_key, index, len(data), self.expected_length(index), self.chunk_size, self.virtual_size))
        if isinstance(data, memoryview):
            data = data.tobytes()
        zero = self._zero if len(data) == self.chunk_size else bytes(len(data))
        if data == zero:         # memcmp: ~0.15 ms per 4 MiB zero chunk, exits early on data
            cid, stored, outcome = None, 0, "zero"
        else:
            cid, stored, outcome = self.session._store_chunk(data)
        with self._lock:
            self.chunk_ids[index] = cid
            counts = self._counts
            counts["bytes_read"] += len(data)
            counts[outcome + "_chunks"] += 1
            if outcome == "new":
                counts["new_bytes"] += len(data)
                counts["stored_bytes"] += stored
        return cid

    def put_chunk_async(self, index, data):
        """Queue ``put_chunk`` on the session's thread pool; blocks while 2x workers chunks are in flight."""
        session = self.session
        session._slots.acquire()
        try:
            future = session.pool.submit(self.put_chunk, index, data)
        except BaseException:
            session._slots.release()
            raise
        future.add_done_callback(lambda _f: session._slots.release())
        with self._lock:
            self._futures.append(future)
        return future

    def wait(self):
        """Wait for the queued chunks; raise the first error."""
        with self._lock:
            futures, self._futures = self._futures, []
        for future in futures:
            future.result()

    def reuse_chunk(self, index, parent_disk_manifest):
        """Incremental: take the parent's chunk reference for this unchanged range (zeros past the parent's end)."""
        self._check_index(index)
        parent = parent_disk_manifest
        if parent.chunk_size != self.chunk_size:
            raise RepositoryError("Disk %r: parent manifest has chunk_size %d, this repository uses %d." % (
                self.disk_key, parent.chunk_size, self.chunk_size))
        cid = parent.chunk_ids[index] if index < len(parent.chunk_ids) else None
        if cid and index == len(parent.chunk_ids) - 1 and parent.chunk_length(index) != self.expected_length(index):
            raise RepositoryError("Disk %r: the last chunk of the parent is short (the disk grew); read chunk %d again." % (
                self.disk_key, index))
        with self._lock:
            self.chunk_ids[index] = cid
            self._counts["reused_chunks" if cid else "zero_chunks"] += 1
        return cid

    @property
    def stats(self):
        with self._lock:
            out = dict(self._counts)
        out["chunks"] = sum(1 for cid in self.chunk_ids if cid)
        out["referenced_bytes"] = sum(self.expected_length(i) for i, cid in enumerate(self.chunk_ids) if cid)
        return out

    def manifest(self, completed):
        values = self.session.values
        header = {"format": FORMAT_VERSION, "backup_id": values["backup_id"], "vm_id": values["vm_id"], "vm_name": values["vm_name"],
                  "host": values["host"], "disk_key": self.disk_key, "virtual_size": self.virtual_size, "chunk_size": self.chunk_size,
                  "chunk_count": self.chunk_count, "source_path": self.source_path, "rct_id": self.rct_id,
                  "method": values["method"], "type": values["type"], "consistency": values["consistency"],
                  "parent_backup_id": values["parent_backup_id"], "created": values["created"], "completed": iso(completed),
                  "metadata": self.metadata, "stats": self.stats}
        return DiskManifest(header, list(self.chunk_ids))

    def summary(self):
        out = {"disk_key": self.disk_key, "manifest": manifest_key(self.session.backup_id, self.ordinal),
               "virtual_size": self.virtual_size, "chunk_size": self.chunk_size, "source_path": self.source_path,
               "rct_id": self.rct_id, "metadata": self.metadata}
        stats = self.stats
        out.update(chunk_count=stats["chunks"], stored_bytes=stats["stored_bytes"], referenced_bytes=stats["referenced_bytes"],
                   new_chunks=stats["new_chunks"], reused_chunks=stats["reused_chunks"], dedup_chunks=stats["dedup_chunks"],
                   zero_chunks=self.chunk_count - stats["chunks"])
        return out


class DiskReader:
    """Reads one disk of one backup; every chunk is checked against its id, a bad one raises RepositoryError."""

    def __init__(self, repo, record, manifest):
        self.repo = repo
        self.record = record
        self.manifest = manifest
        self.backup_id = record.backup_id
        self.disk_key = manifest.disk_key
        self.virtual_size = manifest.virtual_size
        self.chunk_size = manifest.chunk_size
        self._cache = (None, None)

    def _chunk(self, index):
        cid = self.manifest.chunk_ids[index]
        length = self.manifest.chunk_length(index)
        if cid is None:
            return bytes(length)
        try:
            return self.repo.read_chunk(cid, length)
        except KeyError:
            problem = "is missing"
        except ValueError as err:
            problem = "is corrupt (%s)" % err
        raise RepositoryError("Backup %s, disk %r: chunk %s at offset %d %s; refusing to return wrong data." % (
            self.backup_id, self.disk_key, cid, index * self.chunk_size, problem),
            hint="Run verify on the repository and restore from another backup.",
            backup_id=self.backup_id, disk_key=self.disk_key, chunk_id=cid, offset=index * self.chunk_size)

    def read(self, offset, length):
        """Bytes [offset, offset+length) of the virtual disk (never short inside the disk)."""
        if offset < 0 or length < 0 or offset + length > self.virtual_size:
            raise RepositoryError("Read of %d bytes at %d is outside disk %r (%d bytes)." % (length, offset, self.disk_key, self.virtual_size))
        parts = []
        end = offset + length
        while offset < end:
            index = offset // self.chunk_size
            if self._cache[0] != index:
                self._cache = (index, self._chunk(index))
            data = self._cache[1]
            start = offset - index * self.chunk_size
            piece = data[start:start + (end - offset)]
            parts.append(piece)
            offset += len(piece)
        return b"".join(parts)

    def iter_chunks(self, skip_zero=True, prefetch=None):
        """Yield (offset, bytes) in order, fetching ahead on a thread pool; zero chunks skipped unless asked."""
        indexes = [i for i, cid in enumerate(self.manifest.chunk_ids) if cid or not skip_zero]
        window = prefetch or self.repo.workers * 2
        with concurrent.futures.ThreadPoolExecutor(self.repo.workers) as pool:
            pending = []
            position = 0
            while position < len(indexes) or pending:
                while position < len(indexes) and len(pending) < window:
                    pending.append((indexes[position], pool.submit(self._chunk, indexes[position])))
                    position += 1
                index, future = pending.pop(0)
                yield index * self.chunk_size, future.result()
