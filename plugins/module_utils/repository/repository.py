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
session. The split: this file (opening, listing, reading), backup_session.py (writing), repository_verify.py
(verify), repository_prune.py (prune, GC), repository_store.py with local_store.py and s3_store.py (local/S3),
repository_crypto.py (ids, compression, encryption), retention.py (the GFS policy).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import concurrent.futures
import copy
import json
import math
import os
import struct
import threading

from ansible_collections.hyperv.backup.plugins.module_utils.errors import RepositoryError
# The record and session names are re-exported: callers import them from here (one place to open a repository).
from ansible_collections.hyperv.backup.plugins.module_utils.repository.backup_record import (  # noqa: F401 pylint: disable=unused-import
    BACKUP_ID_PATTERN, ZERO_ID, BackupRecord, DiskManifest, check_backup_id, chunk_key, iso, json_bytes, parse_time,
    utc_now,
)
from ansible_collections.hyperv.backup.plugins.module_utils.repository.backup_session import (  # noqa: F401 pylint: disable=unused-import
    SESSION_TIMEOUT_SECONDS, TOUCH_AFTER_SECONDS, BackupSession, DiskWriter, attachment_key, check_attachment_name,
    manifest_key,
)
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_crypto import (  # noqa: F401 pylint: disable=unused-import
    KIND_BACKUP, KIND_CATALOG, KIND_CHUNK, KIND_MANIFEST, KIND_STATUS, RepositoryKeys, new_compressor, require_libraries,
)
from ansible_collections.hyperv.backup.plugins.module_utils.repository import chunk_index
from ansible_collections.hyperv.backup.plugins.module_utils.repository.disk_reader import DiskReader
from ansible_collections.hyperv.backup.plugins.module_utils.repository import repository_config
from ansible_collections.hyperv.backup.plugins.module_utils.repository import repository_memory
from ansible_collections.hyperv.backup.plugins.module_utils.repository import repository_prune
from ansible_collections.hyperv.backup.plugins.module_utils.repository import repository_verify
from ansible_collections.hyperv.backup.plugins.module_utils.repository.local_store import make_private_dirs
# The GC grace constants are re-exported: callers take the default from here.
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_prune import (  # noqa: F401 pylint: disable=unused-import
    DEFAULT_GC_GRACE_SECONDS, MIN_GC_GRACE_SECONDS,
)
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_store import open_store

MiB = 1024 * 1024
FORMAT_NAME = repository_config.FORMAT_NAME
DEFAULT_CHUNK_SIZE = 1 * MiB
DEFAULT_COMPRESSION_LEVEL = 1


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
        # Sealing pads (or not) as the authenticated config says; checked by repository_config.check_fields.
        keys.padding = config.get("padding") or "none"
        keys.format_version = config["version"]
        default_workers = 8 if store.kind == "s3" else max(2, os.cpu_count() or 2)
        self.workers = workers or default_workers
        self._local = threading.local()
        self._exclusive_held = False
        self.read_only = False

    # -- creation and opening -------------------------------------------------------------

    @classmethod
    def init(cls, location, passphrase=None, chunk_size=DEFAULT_CHUNK_SIZE, s3_options=None, object_lock_days=None,
             compression_level=DEFAULT_COMPRESSION_LEVEL, scrypt_params=None, padding="none", keys_from=None):
        """Create a repository; RepositoryError if one exists there already.

        ``passphrase``: None creates a plain repository (on purpose); "" is refused (a mistake, never a choice).
        ``padding``: "none" or "padme" (encrypted repositories only): pad every object to a Padme length, so sizes
        reveal less about content (docs/security.md, "What object sizes and dedup reveal")."""
        repository_config.check_passphrase(passphrase, location)
        repository_config.check_padding(padding, passphrase is not None, location)
        require_libraries(encrypted=passphrase is not None)
        _check_chunk_size(chunk_size)
        if not 1 <= int(compression_level) <= 19:
            raise RepositoryError("compression_level %s is out of range." % compression_level, hint="Use 1 (fast) to 19.")
        if object_lock_days is not None and (not isinstance(object_lock_days, int) or object_lock_days < 0):
            raise RepositoryError("object_lock_days %r is not allowed." % (object_lock_days,),
                                  hint="Use a whole number of days (1 or more), or leave it unset for no Object Lock.")
        store = open_store(location, s3_options, create=True)
        if store.kind == "s3":
            lock_enabled = store.check_bucket()
            store.probe_conditional_writes()        # the lock and the GC/writer exclusion need them (issue 13, point 4)
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
        if store.kind == "s3":
            # A deleted config (delete marker) with earlier versions is a repository to recover, never to replace: a new
            # config would hide the data the old one unlocks (read_config raises the error that says what to run).
            if repository_config.earlier_config_versions(store):
                repository_config.read_config(store)
        # The config is authenticated (encrypted repositories) before it is first written: repository_config.py.
        config, keys = repository_config.new_config(store, passphrase, chunk_size, compression_level, object_lock_days, scrypt_params,
                                                    padding, keys_from)     # keys_from: repository_copy.init_with_keys_of
        if store.kind == "local":
            for prefix in range(256):
                make_private_dirs(os.path.join(store.root, "chunks", "%02x" % prefix))
            for name in ("manifests", "backups", "sessions", "status", "locks"):
                make_private_dirs(os.path.join(store.root, name))
        repository_config.write_config(store, config)
        return cls(store, config, keys)

    @classmethod
    def open(cls, location, passphrase=None, s3_options=None, workers=None, key_file=None):
        """Open an existing repository; RepositoryError if missing, of another format version, the passphrase is wrong,
        a passphrase is given for a plain repository, or the config of an encrypted one was changed (repository_config.py).

        ``key_file``: read the config from a key export (state: key_exported) instead of the storage, e.g. when the
        stored config was deleted or overwritten; it must belong to this repository."""
        store = open_store(location, s3_options)
        if key_file is not None:
            config, keys = repository_config.config_from_key_file(store, key_file, passphrase)
            return cls(store, config, keys, workers=workers)
        config = repository_config.parse(repository_config.read_config(store), store.location)
        require_libraries(encrypted=config.get("encryption") is not None)
        keys = repository_config.unlock(config, passphrase, store.location)
        return cls(store, config, keys, workers=workers)

    @classmethod
    def ensure(cls, location, passphrase=None, s3_options=None, **init_options):
        """Open the repository, creating it if absent. Returns (repository, created)."""
        repository_config.check_passphrase(passphrase, location)
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
                "object_lock_days": self.object_lock_days, "created": self.config["created"],
                "padding": self.config.get("padding") or "none",
                # Key slot labels (names for people, e.g. "passphrase", "recovery"), never their material.
                "config_authenticated": bool(self.config.get("authentication")),
                "key_slots": [slot.get("label") for slot in (self.config.get("encryption") or {}).get("key_slots", [])]}

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
        # Whole seconds: S3 keeps RetainUntilDate to the second or millisecond, and a stored retention must compare
        # equal to the record's (a reused chunk is extended when its retention is shorter than the record's).
        return float(math.ceil(self.store.now() + self.object_lock_days * 86400))

    def read_chunk(self, chunk_id, expected_length=None, check_id=True):
        """Plaintext of a chunk, checked against its id; raises KeyError (missing) or ValueError (corrupt).

        ``check_id=False`` skips the content hash (the envelope's checksum or authentication is still checked): only for a
        caller that hashes the same bytes again anyway, as a verified restore does when it re-reads what it wrote."""
        key = chunk_key(chunk_id)
        data = self.keys.unseal(KIND_CHUNK, key, self.store.get(key))
        if check_id and self.keys.chunk_id(data) != chunk_id:
            raise ValueError("content does not match its id (hash mismatch)")
        if expected_length is not None and len(data) != expected_length:
            raise ValueError("chunk has %d bytes, the manifest expects %d" % (len(data), expected_length))
        return data

    def fetch_page(self, page_id):
        """A page of a chunk index (chunk_index.py): stored and checked like a chunk."""
        return self.read_chunk(page_id, chunk_index.PAGE_BYTES)

    # -- writing ----------------------------------------------------------------------------

    def begin_backup(self, vm_id, vm_name, host, method, backup_type, parent_backup_id=None, consistency=None, metadata=None,
                     lineage=None):
        """Start a backup session (registers an in-progress marker). Use as a context manager or commit()/abort().

        ``lineage`` says which VM the backup is of when two hosts report the same VM id (vm_lineage.py); default
        the VM id."""
        if self.object_lock_days and not self.read_only:
            # The config (the wrapped keys) must stay locked as long as the data it unlocks: renewed here, the one place
            # every backup passes (one HEAD; a retention update every object_lock_days/2). Issue 13, point 3.
            repository_config.renew_config_retention(self.store, self.config)
        return BackupSession(self, vm_id=vm_id, vm_name=vm_name, host=host, method=method, backup_type=backup_type,
                             parent_backup_id=parent_backup_id, consistency=consistency, metadata=metadata or {},
                             lineage=lineage)

    def next_sequence(self):
        """The commit sequence number for a backup committed now: one more than any committed backup's."""
        catalog = self.refresh_catalog()
        return 1 + max([int(values.get("sequence") or 0) for values in catalog["backups"].values()] or [0])

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
            return DiskManifest.decode(self._get_sealed(KIND_MANIFEST, disk["manifest"]), self.fetch_page)
        except KeyError:
            raise RepositoryError("Backup %s: the manifest of disk %r is missing (%s)." % (backup_id, disk_key, disk["manifest"]),
                                  hint="The backup cannot be restored; run verify and use another backup.", backup_id=backup_id)
        except (ValueError, struct.error) as err:
            raise RepositoryError("Backup %s: the manifest of disk %r is damaged: %s." % (backup_id, disk_key, err),
                                  hint="The backup cannot be restored; run verify and use another backup.", backup_id=backup_id)

    def read_attachment(self, backup_id, name):
        """The bytes a backup stored with ``BackupSession.attach`` (e.g. the VM configuration), or None if it has none."""
        check_backup_id(backup_id, self.location)
        check_attachment_name(name)
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
        """The stored catalog, or an empty one (generation 0) when it is missing, unreadable or of another version."""
        try:
            catalog = json.loads(self._get_sealed(KIND_CATALOG, "catalog"))
            if catalog.get("version") == self.config["version"] and isinstance(catalog.get("backups"), dict):
                catalog["generation"] = int(catalog.get("generation") or 0)
                return catalog
        except (KeyError, ValueError, TypeError):
            pass
        return {"version": self.config["version"], "generation": 0, "backups": {}}

    def _status(self, backup_id):
        """The backup's last verify outcome from ``status/<id>``; None if it has none. A status that exists but cannot
        be read (damaged, forged) counts as damaged: removing damage must not be as easy as breaking an object."""
        try:
            return json.loads(self._get_sealed(KIND_STATUS, "status/%s" % backup_id))
        except KeyError:
            return None
        except ValueError as err:
            return {"ok": False, "verified": None, "problems": ["its verify status cannot be read: %s" % err]}

    def refresh_catalog(self, rebuild=False):
        """Bring the catalog in line with the committed backup records (all re-read when ``rebuild``).

        Replay (issue 13, point 5): the catalog's ``generation`` rises at every write, and this proxy remembers the
        highest it saw (repository_memory.py); a lower one is an older catalog put back, so it is rebuilt. Each
        backup's state comes from its sealed ``status/<id>``: the catalog keeps the listing stamp (size, time) of the
        status it read, and a status written, replaced or removed since is read again. Backups this proxy saw that
        vanished without a prune (no tombstone ``deleted/<id>``) become warnings."""
        memory = repository_memory.memory_of(self)
        remembered = memory.remembered_generation()
        stored = self._load_catalog()
        generation = stored["generation"]
        if memory.went_back(generation, remembered):
            rebuild = True
        catalog = {"version": self.config["version"], "generation": generation, "backups": {}} if rebuild else stored
        committed = self._committed_ids()
        # listed after backups/: a status written between the two listings is read now or at the next listing
        stamps = dict((info.key.split("/", 1)[1], [info.size, info.mtime]) for info in self.store.list("status/"))
        known = catalog["backups"]
        changed = rebuild
        for gone in set(known) - set(committed):
            del known[gone]
            changed = True
        for backup_id in committed:
            values = known.get(backup_id)
            if values is None:
                try:
                    values = self.get_backup(backup_id).as_dict()
                except RepositoryError:
                    values = {"backup_id": backup_id, "state": "damaged", "disks": [], "stats": {}, "unreadable": True}
                known[backup_id] = values
            elif "status_stamp" in values and values["status_stamp"] == stamps.get(backup_id):
                continue
            status = self._status(backup_id) if backup_id in stamps else None
            values.pop("verify", None)
            if status:
                values["verify"] = status
            values["state"] = "damaged" if values.get("unreadable") or (status and not status.get("ok")) else "complete"
            values["status_stamp"] = stamps.get(backup_id)
            changed = True
        before = json_bytes(known)
        memory.observe(known, lambda ids: repository_memory.accounted_for(self, ids), generation)
        changed = changed or json_bytes(known) != before
        # a read-only view keeps the refreshed catalog in memory only: check mode leaves the repository as it was
        if changed and not self.read_only:
            def put(new_generation):
                catalog["generation"] = new_generation
                self._put_sealed(KIND_CATALOG, "catalog", json_bytes(catalog))
            try:
                memory.write_catalog(generation, put)
            except (RepositoryError, OSError):
                pass    # the catalog is a cache; the records stay the truth
        return catalog

    def list_backups(self, vm=None, host=None, since=None, until=None, include_in_progress=False):
        """Committed backups (newest last), filtered by VM name or id, host, and created time range."""
        catalog = self.refresh_catalog()
        # the catalog's own bookkeeping (status stamp, unreadable record) is not part of a backup's description
        records = [BackupRecord(dict((k, v) for k, v in values.items() if k not in ("status_stamp", "unreadable")))
                   for values in catalog["backups"].values()]
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
        return sorted(out, key=lambda r: r.order_key)

    def latest_backup(self, vm_id, lineage=None):
        """The VM's last committed complete backup (of ``lineage`` when given), in commit order; None if it has none.

        Its state is read again from storage (record and status), never taken from the catalog (issue 13, point 5)."""
        backups = [r for r in self.list_backups(vm=vm_id) if r.vm_id == vm_id and r.state == "complete"
                   and (lineage is None or r.lineage == lineage)]
        for listed in reversed(backups):
            record, state, _why = repository_memory.stored_state(self, listed.backup_id)
            if state == "complete":
                return record
        return None

    def list_vms(self):
        """One entry per VM (per lineage: two VMs that report the same id from two hosts are two entries)."""
        vms = {}
        for record in self.list_backups():
            entry = vms.setdefault(record.lineage, {"vm_id": record.vm_id, "vm_name": record.vm_name, "lineage": record.lineage,
                                                    "backups": 0})
            entry.update(vm_name=record.vm_name, host=record.host, latest_backup_id=record.backup_id, latest=iso(record.created))
            entry["backups"] += 1
        return sorted(vms.values(), key=lambda v: (v["vm_name"] or "", v["vm_id"] or "", v["lineage"] or ""))

    def _sessions(self):
        """Session markers: (values, info, live) for each, read with the repository keys. Live means the marker's own
        mtime (storage time) is within its timeout of the storage's now: no proxy clock is involved."""
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

    # -- verify, prune and garbage collection ---------------------------------------------------
    # Their code lives in repository_verify.py and repository_prune.py; bound here as methods, so callers keep
    # calling repo.verify(), repo.prune() and repo.gc().

    verify = repository_verify.verify
    prune = repository_prune.prune
    gc = repository_prune.gc


def _check_chunk_size(chunk_size):
    if not isinstance(chunk_size, int) or chunk_size < 64 * 1024 or chunk_size > 64 * MiB or chunk_size & (chunk_size - 1):
        raise RepositoryError("chunk_size %r is not allowed." % (chunk_size,),
                              hint="Use a power of two between 64 KiB and 64 MiB (default 1 MiB).")
