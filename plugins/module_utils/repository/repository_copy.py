# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A second copy: backups copied from one repository to another (local or S3 on either side), issue 15.

Chunk ids are keyed per repository (docs/repository.md, "Chunk id"), so there are two ways to copy:

- **Same keys** (both plain, or the target made with ``init_with_keys_of`` the source): equal data has equal ids and
  equal index pages. The source's tree is taken verbatim (the target session starts from the source manifest as its
  base and sets nothing), and every chunk and page the target lacks is copied as its sealed object, after the source's
  envelope is checked (authentication or checksum): nothing is hashed for an id.
- **Different keys**: every chunk to copy is read, decrypted, checked against its source id and written through the
  target session's ``put_chunk``, which hashes it under the target's id key; the target builds its own index pages.
  Only uploads of chunks the target already holds are saved.

Either way only what differs from the backup's parent is walked when the parent is already in the target (the two
trees are compared page by page in the source, copy-on-write as an RCT incremental): an incremental costs what it
changed. Each backup is written through the target's own ``BackupSession`` (session marker, GC exclusion, reference
check, manifests, then the record), so a copy becomes visible only when complete and an interrupted copy leaves
nothing listed; run again, it skips every chunk already in the target. The copy keeps the backup's identity (id, VM,
host, lineage, times, parent, metadata, attachments, the source's stats); the target draws its own commit sequence,
so parents are copied first, in the source's order.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections
import concurrent.futures
import hmac
import json
import threading

from ansible_collections.hyperv.backup.plugins.module_utils.errors import RepositoryError
from ansible_collections.hyperv.backup.plugins.module_utils.repository import chunk_index
from ansible_collections.hyperv.backup.plugins.module_utils.repository import repository_config
from ansible_collections.hyperv.backup.plugins.module_utils.repository.backup_record import (
    MANIFEST_HEAD, MANIFEST_MAGIC, DiskManifest, chunk_key, iso, json_bytes, utc_now,
)
from ansible_collections.hyperv.backup.plugins.module_utils.repository.backup_session import (
    TOUCH_AFTER_SECONDS, BackupSession,
)
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_crypto import KIND_BACKUP, KIND_CHUNK, KIND_MANIFEST
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_options import (
    repository_argument_spec, s3_options_from_params,
)
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_store import open_store

COUNTERS = ("chunks_uploaded", "pages_uploaded", "bytes_uploaded", "objects_present", "chunks_read", "bytes_read",
            "chunks_rehashed")


def keys_match(source, target):
    """True when both repositories give every chunk the same id: both plain, or the same id key, and the same chunk size
    (then pages are equal too). The data key must match as well for sealed objects to be copied verbatim."""
    a, b = source.keys, target.keys
    if a.encrypted != b.encrypted or source.chunk_size != target.chunk_size:
        return False
    if not a.encrypted:
        return True
    return hmac.compare_digest(a.id_key, b.id_key) and hmac.compare_digest(a.data_key, b.data_key)


def init_with_keys_of(source, location, passphrase=None, s3_options=None, **init_options):
    """Create a repository at ``location`` with the data and id keys of ``source`` (wrapped under ``passphrase``, which
    may differ from the source's) and its chunk size: copies between the two compare ids only and copy pages verbatim.

    It is a repository of its own (its own id, config, key slots, Object Lock, padding); it shares the keys, so whoever
    can open one can read the other's objects (docs/copy.md)."""
    chunk_size = init_options.pop("chunk_size", None) or source.chunk_size
    check_keys_pairing(source, location, passphrase, chunk_size)
    return Repository.init(location, passphrase=passphrase, s3_options=s3_options, chunk_size=chunk_size, keys_from=source.keys,
                           **init_options)


def check_keys_pairing(source, location, passphrase, chunk_size):
    """Refuse what ``init_with_keys_of`` cannot make: keys to wrap without a passphrase, a passphrase for a plain
    repository's keys, another chunk size."""
    if source.encrypted and passphrase is None:
        raise RepositoryError("%s cannot take the keys of %s without a passphrase: the keys are stored wrapped under one." % (
            location, source.location), hint="Give repository_passphrase for the new repository (it may differ from the source's).",
            location=location)
    if not source.encrypted and passphrase is not None:
        raise RepositoryError("%s is not encrypted, so a repository made with its keys is not encrypted either; a passphrase was "
                              "given for %s." % (source.location, location),
                              hint="Leave repository_passphrase unset for the copy, or create an encrypted repository without "
                                   "copy_keys_from (a copy to it then re-hashes every chunk).", location=location)
    if chunk_size != source.chunk_size:
        raise RepositoryError("A repository made with the keys of %s must have its chunk size (%d bytes), not %d." % (
            source.location, source.chunk_size, chunk_size), hint="Drop chunk_size, or set it to %d." % source.chunk_size,
            location=location)


def ensure_with_keys_of(params, check_mode):
    """hyperv_backup_repository state: present with copy_keys_from: create the repository with the keys of that one
    unless it exists; the result says whether the two share their keys (an existing repository is never changed)."""
    repository_config.check_passphrase(params["repository_passphrase"], params["repository"])
    source = open_repository_dict(params["copy_keys_from"])
    location, passphrase, s3_options = params["repository"], params["repository_passphrase"], s3_options_from_params(params)
    if open_store(location, s3_options).stat("config") is None:
        if check_mode:
            check_keys_pairing(source, location, passphrase, source.chunk_size)
            repository_config.check_padding(params["padding"], passphrase is not None, location)
            return {"changed": True, "created": True, "keys_shared": True,
                    "msg": "Would create a repository at %s with the keys of %s." % (location, source.location)}
        repo = init_with_keys_of(source, location, passphrase=passphrase, s3_options=s3_options,
                                 compression_level=params["compression_level"], object_lock_days=params["object_lock_days"],
                                 padding=params["padding"])
        return {"changed": True, "created": True, "keys_shared": True, "repository": repo.describe(),
                "msg": "Created the repository at %s with the keys and chunk size of %s." % (location, source.location)}
    repo = Repository.open(location, passphrase=passphrase, s3_options=s3_options)
    shared = keys_match(source, repo)
    return {"changed": False, "created": False, "keys_shared": shared, "repository": repo.describe(),
            "msg": "The repository at %s exists; it %s the keys of %s." % (location, "has" if shared else "does not have", source.location)}


def repository_dict_spec():
    """Argument spec of a second repository given as one dict (doc_fragments/repository_copy.py): the repository
    options without their environment fallbacks, which belong to the repository named at the top level."""
    spec = repository_argument_spec()
    for option in spec.values():
        option.pop("fallback", None)
    return spec


def open_repository_dict(options):
    """Open the repository a dict of repository options names (the module's target or copy_keys_from)."""
    return Repository.open(options["repository"], passphrase=options.get("repository_passphrase"),
                           s3_options=s3_options_from_params(options))


# -- what to copy ---------------------------------------------------------------------------------------------------

def plan_copy(source, target, backup_ids=None, vm=None, host=None, since=None, until=None, latest_per_vm=False):
    """(plan, present, skipped): the source backups to copy, oldest first with every parent before its child; the ids
    selected that the target already holds; and [{backup_id, vm_name, reason}] of those that are not copied.

    A parent that is in the source but not in the target is copied first (an incremental's parent must exist in the
    target). Not copied, with a reason: a backup pruned from the target (its tombstone ``deleted/<id>``: the target's
    retention decided), one older than a backup of the same VM the target already holds (the target orders backups
    by its own commits: copied now it would become the VM's latest there), one damaged in the source, and one whose
    parent cannot be copied."""
    everything = source.list_backups()
    by_id = dict((record.backup_id, record) for record in everything)
    wanted = set(backup_ids or ())
    for backup_id in sorted(wanted - set(by_id)):
        raise RepositoryError("Backup %s is not in %s." % (backup_id, source.location), backup_id=backup_id,
                              hint="List the source's backups with hyperv.backup.hyperv_backup_info.")
    selected = [r for r in source.list_backups(vm=vm, host=host, since=since, until=until) if not wanted or r.backup_id in wanted]
    skipped = [_skip(r, "damaged in the source (state %s); run verify there" % r.state) for r in selected if r.state != "complete"]
    selected = [r for r in selected if r.state == "complete"]
    if latest_per_vm:
        latest = collections.OrderedDict()
        for record in selected:
            latest[record.lineage] = record
        selected = list(latest.values())
    in_target = dict((r.backup_id, r) for r in target.list_backups())
    newest = {}
    for record in in_target.values():
        if record.created and (record.lineage not in newest or record.created > newest[record.lineage].created):
            newest[record.lineage] = record
    outcome = {}                # backup id -> "present" | "planned" | "pruned" | "skipped"
    plan, present = [], []

    def decide(record):
        if record.backup_id in in_target:
            return "present"
        if target.store.stat("deleted/%s" % record.backup_id) is not None:
            skipped.append(_skip(record, "pruned from the target by its retention (tombstone deleted/%s)" % record.backup_id))
            return "pruned"
        later = newest.get(record.lineage)
        if later is not None and record.created and record.created < later.created:
            skipped.append(_skip(record, "older than backup %s of the same VM in the target; copied now it would become the VM's "
                                         "latest there" % later.backup_id))
            return "skipped"
        return None

    for record in sorted(selected, key=lambda r: r.order_key):
        chain, cursor = [], record
        while cursor is not None and cursor.backup_id not in outcome:    # up to the first ancestor already decided
            chain.append(cursor)
            parent = by_id.get(cursor.parent_backup_id) if cursor.parent_backup_id else None
            if parent is not None and parent.state != "complete":
                skipped.append(_skip(parent, "damaged in the source (state %s); run verify there" % parent.state))
                outcome[parent.backup_id] = "skipped"
            cursor = parent
        for item in reversed(chain):            # oldest first: each parent is decided before its child
            state = decide(item)
            parent_state = outcome.get(item.parent_backup_id)
            if state is None and parent_state == "skipped":
                skipped.append(_skip(item, "its parent %s is not copied (see its entry); copy it first or run a full backup" %
                                     item.parent_backup_id))
                state = "skipped"
            if state is None:
                plan.append(item)
                state = "planned"
            outcome[item.backup_id] = state
        if outcome[record.backup_id] == "present":
            present.append(record.backup_id)
    unique = collections.OrderedDict((entry["backup_id"], entry) for entry in skipped)
    return sorted(plan, key=lambda r: r.order_key), present, list(unique.values())


def _skip(record, reason):
    return {"backup_id": record.backup_id, "vm_name": record.vm_name, "reason": reason}


# -- the two trees of a disk ----------------------------------------------------------------------------------------

def diff_tree(child, parent=None):
    """Yield what ``child`` (an IndexReader) has that ``parent`` (an IndexReader of the same chunk count, or None) has
    not, comparing the trees page by page: ("page", id) for each page of the child that is not the parent's page at
    the same place (after the pages below it), and ("chunk", index, id or None) for each leaf entry that differs (None:
    the child has zeros where the parent has data). Pages shared whole with the parent are skipped unread."""
    if parent is not None and parent.chunk_count != child.chunk_count:
        parent = None

    def visit(child_id, parent_id, level, first):
        if child_id == parent_id:
            return
        child_page = child.page(child_id, cache=False) if child_id else chunk_index.ZERO_PAGE
        parent_page = parent.page(parent_id, cache=False) if parent_id else chunk_index.ZERO_PAGE
        span = chunk_index.FANOUT ** (level - 1)
        positions = sorted(set(chunk_index.nonzero_entries(child_page)) | set(chunk_index.nonzero_entries(parent_page)))
        for pos in positions:
            mine, theirs = child_page[pos:pos + chunk_index.ENTRY_BYTES], parent_page[pos:pos + chunk_index.ENTRY_BYTES]
            if mine == theirs:
                continue
            index = first + (pos // chunk_index.ENTRY_BYTES) * span
            mine_hex = None if mine == chunk_index.ZERO_ID else mine.hex()
            if level == 1:
                if index < child.chunk_count:
                    yield ("chunk", index, mine_hex)
            else:
                yield from visit(mine_hex, None if theirs == chunk_index.ZERO_ID else theirs.hex(), level - 1, index)
        if child_id:
            yield ("page", child_id)

    yield from visit(child.root, parent.root if parent is not None else None, child.depth, 0)


# -- a session that keeps the source backup's identity --------------------------------------------------------------

class _KeepIdentity:
    """The target repository as a copy's session sees it. Every call goes to the repository, except that the record and
    the manifests the session seals get the source backup's completion time, stats and disk summaries back
    (BackupSession stamps its own: when the copy ran, what the copy stored); what the copy did goes under ``copy``."""

    def __init__(self, repo, record):
        self._repo = repo
        self._record = record
        self.source_headers = {}            # ordinal -> the source manifest's header

    def __getattr__(self, name):
        return getattr(self._repo, name)

    def _put_sealed(self, kind, key, data, retain_until=None):
        backup_id = self._record.backup_id
        if kind == KIND_BACKUP and key == "backups/%s" % backup_id:
            values = json.loads(data)
            values["copy"] = dict(values.get("copy") or {}, copied=values.get("completed"), stats=values.get("stats"))
            values.update(completed=self._record.values.get("completed"), stats=dict(self._record.stats),
                          disks=[dict(disk) for disk in self._record.disks])
            data = json_bytes(values)
        elif kind == KIND_MANIFEST and key.startswith("manifests/%s/" % backup_id) and key.rsplit("/", 1)[1].isdigit():
            header = DiskManifest.decode(data).header
            source = self.source_headers[int(key.rsplit("/", 1)[1])]
            header.update(completed=source.get("completed"), stats=source.get("stats"))
            head = json_bytes(header)
            data = MANIFEST_HEAD.pack(MANIFEST_MAGIC, len(head)) + head
        return self._repo._put_sealed(kind, key, data, retain_until)


class CopySession(BackupSession):
    """A BackupSession in the target that writes the source backup under its own id, VM, host, times and parent."""

    def __init__(self, target, record, source_repository_id):
        self._copied_id = record.backup_id
        self.identity = _KeepIdentity(target, record)
        BackupSession.__init__(self, self.identity, vm_id=record.vm_id, vm_name=record.vm_name, host=record.host,
                               method=record.method, backup_type=record.type, parent_backup_id=record.parent_backup_id,
                               consistency=record.consistency, metadata=record.metadata or {}, lineage=record.lineage)
        self.values["created"] = record.values.get("created")
        self.values["copy"] = {"source_repository_id": source_repository_id, "source_sequence": record.sequence}

    @property
    def backup_id(self):
        return self._copied_id

    @backup_id.setter
    def backup_id(self, _drawn):
        """BackupSession draws a new id; a copy keeps the source's (it is the same backup)."""


# -- copying ----------------------------------------------------------------------------------------------------------

class _Counters:
    def __init__(self):
        self._lock = threading.Lock()
        self.values = dict((name, 0) for name in COUNTERS)

    def add(self, **amounts):
        with self._lock:
            for name, amount in amounts.items():
                self.values[name] += amount


def _bounded(pool, window, function, items):
    """Run ``function(*item)`` for each item on ``pool`` with at most ``window`` in flight; raise the first error."""
    pending = collections.deque()
    for item in items:
        pending.append(pool.submit(function, *item))
        if len(pending) >= window:
            pending.popleft().result()
    while pending:
        pending.popleft().result()


def _source_damage(record, disk_key, what, cid, problem):
    return RepositoryError("Cannot copy backup %s, disk %r: %s %s in the source %s." % (record.backup_id, disk_key, what, cid, problem),
                           hint="Run verify on the source repository; copy another backup of this VM.",
                           backup_id=record.backup_id, disk_key=disk_key, chunk_id=cid)


class _BackupCopier:
    """Copies one backup (``record`` of ``source``) into ``target`` through a CopySession."""

    def __init__(self, source, target, record, same_keys, counters, pool):
        self.source, self.target, self.record = source, target, record
        self.same_keys = same_keys
        self.counters = counters
        self.pool = pool
        self.window = max(2, target.workers * 2)

    def parent_manifests(self, disk_key, virtual_size):
        """(source parent manifest, target parent manifest) of this disk when the parent is in both, else (None, None)."""
        parent_id = self.record.parent_backup_id
        if not parent_id or self.target.store.stat("backups/%s" % parent_id) is None:
            return None, None
        try:
            source_parent = self.source.get_backup(parent_id)
            target_parent = self.target.get_backup(parent_id)
            if not any(d["disk_key"] == disk_key and d["virtual_size"] == virtual_size for d in source_parent.disks):
                return None, None
            if not any(d["disk_key"] == disk_key and d["virtual_size"] == virtual_size for d in target_parent.disks):
                return None, None
            return (self.unhashed(self.source.load_disk_manifest(parent_id, disk_key, source_parent)),
                    self.target.load_disk_manifest(parent_id, disk_key, target_parent))
        except RepositoryError:
            return None, None           # the parent is gone or damaged: copy this disk whole

    def unhashed(self, manifest):
        """``manifest`` reading its index pages with their envelope checked (authentication or checksum) but not hashed for
        their id: a same-keys copy computes no id at all, and the target's verify hashes everything that arrived."""
        source = self.source
        return DiskManifest(manifest.header, lambda page_id: source.read_chunk(page_id, chunk_index.PAGE_BYTES, check_id=False))

    def run(self):
        target, record = self.target, self.record
        if target.object_lock_days:
            repository_config.renew_config_retention(target.store, target.config)   # as begin_backup does
        session = CopySession(target, record, self.source.config["repository_id"])
        with session:
            for ordinal, disk in enumerate(record.disks):
                if disk.get("manifest") != "manifests/%s/%d" % (record.backup_id, ordinal):
                    raise RepositoryError("Backup %s: disk %r is stored as %s, not in the order of its record; it cannot be copied "
                                          "under the same names." % (record.backup_id, disk["disk_key"], disk.get("manifest")),
                                          backup_id=record.backup_id)
                manifest = self.unhashed(self.source.load_disk_manifest(record.backup_id, disk["disk_key"], record))
                session.identity.source_headers[ordinal] = manifest.header
                source_parent, target_parent = self.parent_manifests(disk["disk_key"], manifest.virtual_size)
                if self.same_keys:
                    self.copy_disk_verbatim(session, manifest, source_parent)
                else:
                    self.copy_disk_rehashed(session, manifest, source_parent, target_parent)
            for name in self.attachment_names():
                session.attach(name, self.source.read_attachment(record.backup_id, name))
            return session.commit()

    def attachment_names(self):
        prefix = "manifests/%s/" % self.record.backup_id
        names = [info.key[len(prefix):] for info in self.source.store.list(prefix)]
        return sorted(name for name in names if name and not name.isdigit())

    def _add_disk(self, session, manifest, base):
        header = manifest.header
        return session.add_disk(disk_key=manifest.disk_key, virtual_size=manifest.virtual_size, source_path=header.get("source_path"),
                                rct_id=header.get("rct_id"), metadata=header.get("metadata") or {}, base=base)

    def _events(self, manifest, source_parent):
        try:
            yield from diff_tree(manifest.index, source_parent.index if source_parent is not None else None)
        except chunk_index.IndexDamaged as err:
            raise _source_damage(self.record, manifest.disk_key, "index page", err.page_id, err.problem)

    def copy_disk_verbatim(self, session, manifest, source_parent):
        """Same keys: the target's tree is the source's (the session's base, nothing set); copy each chunk and page the
        target lacks as its sealed object."""
        self._add_disk(session, manifest, manifest)
        retain_until = session.retain_until
        seen = set()

        def objects():
            for event in self._events(manifest, source_parent):
                cid = event[-1] if event[0] == "chunk" else event[1]
                if cid is not None and cid not in seen:
                    seen.add(cid)
                    yield cid, event[0] == "page", manifest.disk_key
        _bounded(self.pool, self.window, lambda cid, page, disk_key: self.copy_object(cid, page, disk_key, retain_until), objects())

    def copy_object(self, cid, page, disk_key, retain_until):
        """One chunk or page, same keys: skipped when the target holds it (touched as a writer touches a dedup hit), else
        its sealed object is read, its envelope checked, and written unchanged (resealed only when the padding or the
        repositories' format, hence the envelope, differs)."""
        store, key = self.target.store, chunk_key(cid)
        with store.chunk_guard():
            info = store.stat(key)
            if info is not None:
                fresh = info.mtime >= store.now() - TOUCH_AFTER_SECONDS
                locked = retain_until is None or (info.retain_until or 0) >= retain_until
                if (fresh and locked) or store.touch(key, retain_until):
                    self.counters.add(objects_present=1)
                    return
        try:
            blob = self.source.store.get(key)
            plain = self.source.keys.unseal(KIND_CHUNK, key, blob)
        except KeyError:
            raise _source_damage(self.record, disk_key, "index page" if page else "chunk", cid, "is missing")
        except ValueError as err:
            raise _source_damage(self.record, disk_key, "index page" if page else "chunk", cid, "is corrupt (%s)" % err)
        if page and len(plain) != chunk_index.PAGE_BYTES:
            raise _source_damage(self.record, disk_key, "index page", cid, "has %d bytes" % len(plain))
        if (self.target.keys.padding, self.target.keys.format_version) != (self.source.keys.padding, self.source.keys.format_version):
            blob = self.target.keys.seal(KIND_CHUNK, key, plain, self.target.compressor())
        store.put(key, blob, retain_until=retain_until, durable=False)      # made durable by the commit's flush
        self.counters.add(bytes_uploaded=len(blob), **{"pages_uploaded" if page else "chunks_uploaded": 1})

    def copy_disk_rehashed(self, session, manifest, source_parent, target_parent):
        """Different keys: the chunks that differ from the parent (all, without one in the target) are read, checked and
        put through the session, which hashes them with the target's id key; the target builds its own pages on the
        target parent's tree."""
        base = target_parent if source_parent is not None else None
        writer = self._add_disk(session, manifest, base)

        def chunks():
            for event in self._events(manifest, source_parent if base is not None else None):
                if event[0] == "chunk":
                    yield event[1], event[2]

        def copy_chunk(index, cid):
            length = manifest.chunk_length(index)
            if cid is None:
                writer.put_chunk(index, bytes(length))
                return
            try:
                data = self.source.read_chunk(cid, length)
            except KeyError:
                raise _source_damage(self.record, manifest.disk_key, "chunk", cid, "is missing")
            except ValueError as err:
                raise _source_damage(self.record, manifest.disk_key, "chunk", cid, "is corrupt (%s)" % err)
            writer.put_chunk(index, data)
            self.counters.add(chunks_read=1, bytes_read=len(data), chunks_rehashed=1)
        _bounded(self.pool, self.window, copy_chunk, chunks())
        stats = writer.stats
        self.counters.add(chunks_uploaded=stats["new_chunks"], bytes_uploaded=stats["stored_bytes"],
                          objects_present=stats["dedup_chunks"])


def copy_backups(source, target, backup_ids=None, vm=None, host=None, since=None, until=None, latest_per_vm=False, verify=True,
                 dry_run=False):
    """Copy the selected backups of ``source`` into ``target`` (both open Repositories); returns a report.

    ``dry_run`` plans only. ``verify`` re-reads every backup copied by this run in the target (Repository.verify, which
    records its status there) and raises RepositoryError if one is damaged. A failure part-way leaves the backups
    copied so far (each complete) and nothing of the one in progress visible; run again to resume."""
    if source.config["repository_id"] == target.config["repository_id"]:
        raise RepositoryError("%s and %s are the same repository (id %s); a copy needs another one." % (
            source.location, target.location, source.config["repository_id"]),
            hint="Name a different target, or create one with hyperv_backup_repository state: present.")
    if source.chunk_size != target.chunk_size:
        raise RepositoryError("Cannot copy from %s (chunks of %d bytes) to %s (chunks of %d bytes): a copy keeps the chunk "
                              "boundaries." % (source.location, source.chunk_size, target.location, target.chunk_size),
                              hint="Create the target with the source's chunk size (or with copy_keys_from the source).")
    plan, present, skipped = plan_copy(source, target, backup_ids, vm, host, since, until, latest_per_vm)
    same_keys = keys_match(source, target)
    report = {"dry_run": dry_run, "same_keys": same_keys, "copied": [], "present": present, "skipped": skipped,
              "planned": [_brief(record) for record in plan], "verify": None}
    counters = _Counters()
    report.update(counters.values)
    if dry_run or not plan:
        return report
    started = utc_now()
    with concurrent.futures.ThreadPoolExecutor(target.workers, thread_name_prefix="copy") as pool:
        for record in plan:
            before = dict(counters.values)
            copied = _BackupCopier(source, target, record, same_keys, counters, pool).run()
            entry = _brief(record)
            entry.update(sequence=copied.sequence, **dict((k, counters.values[k] - before[k]) for k in COUNTERS))
            report["copied"].append(entry)
    report.update(counters.values)
    report["duration_seconds"] = round((utc_now() - started).total_seconds(), 3)
    if verify:
        outcome = target.verify([entry["backup_id"] for entry in report["copied"]])
        report["verify"] = outcome
        if not outcome["ok"]:
            raise RepositoryError("Backups copied to %s failed verification there: %s." % (target.location, ", ".join(outcome["damaged_backups"])),
                                  hint="Run hyperv_backup_repository state: verified on both repositories; the damaged copies are "
                                       "marked damaged in the target.", verify=outcome)
    return report


def _brief(record):
    return {"backup_id": record.backup_id, "vm_id": record.vm_id, "vm_name": record.vm_name, "host": record.host,
            "lineage": record.lineage, "type": record.type, "parent_backup_id": record.parent_backup_id,
            "created": iso(record.created)}
