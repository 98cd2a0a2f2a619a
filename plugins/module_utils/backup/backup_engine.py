# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The backup of one VM: recovery point -> type and estimate -> parallel chunk copy -> commit -> hand back.

``run_backup`` is what hyperv_backup calls. The copy reads the recovery point's frozen disks (through
their differencing chain, with vdisk) at the allocated or changed chunks only, and hands each chunk to
the repository (hash, zero skip, dedup, zstd, write). Each worker thread reads one chunk with pread and
then hashes/compresses it, so with more workers than cores reads overlap the CPU work; blake3 and zstd
release the GIL. At most ``in_flight`` chunk buffers exist at once, so memory does not grow with the
disk size. A failure anywhere aborts the repository session (nothing becomes visible) and removes the
recovery point. Before the commit the run checks that its recovery point (and a VSS point's shadow copy) is
still on the host: one removed during the copy fails the backup, since what was read may mix the point in
time with later writes (issue 12, point 1).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import concurrent.futures
import json
import os
import queue
import re
import threading
import time

from ansible_collections.hyperv.backup.plugins.module_utils.backup import backup_planning as planning
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import recovery_points as rp
from ansible_collections.hyperv.backup.plugins.module_utils.host.disk_access import RateLimiter, locate_disk, open_source_disk
from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError, HyperVBackupError
from ansible_collections.hyperv.backup.plugins.module_utils.backup.progress import ProgressReporter
from ansible_collections.hyperv.backup.plugins.module_utils.repository import repository_memory, vm_lineage

MiB = 1024 * 1024
MAX_IN_FLIGHT_BYTES = 128 * MiB       # chunk buffers alive at once (reading, hashing, compressing)
# Test aid: make the copy fail after this many chunks (a fault in the middle of a copy, see the integration tests).
FAULT_ENV = "HYPERV_BACKUP_FAULT_AFTER_CHUNKS"
# Where the run id comes from when the task does not give one: ours, then the AWX / Automation Controller job
# (AWX exports JOB_ID to ansible-playbook; a module run on the controller or with delegate_to: localhost inherits it).
RUN_ID_ENV = "HYPERV_BACKUP_RUN_ID"
AWX_JOB_ENV = "JOB_ID"
# What hyperv_backup_report accepts as a run id (it becomes a file name there).
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


def run_id_from_environment(environ=None):
    """The run id of the surrounding job, or '' (the report then groups the backup by its day)."""
    environ = os.environ if environ is None else environ
    if environ.get(RUN_ID_ENV, "").strip():
        return environ[RUN_ID_ENV].strip()
    job = environ.get(AWX_JOB_ENV, "").strip()
    return "awx-job-%s" % job if job.isdigit() else ""


def check_run_id(run_id):
    """A run id names report files and recovery points: refuse anything else with a clear message."""
    if run_id and not RUN_ID_PATTERN.match(run_id):
        raise HyperVBackupError("run_id %r is not usable: it must start with a letter or digit and have only letters, digits, "
                                "'.', '_', ':' and '-' (at most 128 characters)." % (run_id,),
                                hint="Pass a run id such as 20261125T220000Z or nightly-42 (the hyperv_backup role makes one per run).")
    return run_id


def default_workers():
    """Threads: one per core plus two, so that a reader waiting on I/O leaves no core idle."""
    return (os.cpu_count() or 2) + 2


class CopyOptions:
    """Knobs of the copy: threads, buffers in flight, read rate cap, progress, fault injection."""

    def __init__(self, workers=None, read_rate_limit=None, progress=None, fault_after_chunks=None, credentials=None,
                 path_map=None, smb=False, smb_port=445):
        if read_rate_limit is not None and read_rate_limit < 0:
            raise HyperVBackupError("read_rate_limit must be a number of bytes per second, not %s." % read_rate_limit,
                                    hint="Give a positive rate (e.g. 209715200 for 200 MiB/s), or 0 / leave it unset for no cap.")
        if workers is not None and workers < 0:
            raise HyperVBackupError("workers must be a positive number of copy threads, not %s." % workers,
                                    hint="Leave it unset for the default (number of cores + 2).")
        self.workers = int(workers or default_workers())
        self.limiter = RateLimiter(read_rate_limit)
        self.progress = progress or ProgressReporter()
        env_fault = os.environ.get(FAULT_ENV)
        self.fault_after_chunks = fault_after_chunks if fault_after_chunks is not None else (int(env_fault) if env_fault else None)
        self.credentials = credentials or (None, None)
        self.path_map = path_map
        self.smb = smb
        self.smb_port = smb_port      # 445 on every Windows host; another port only for a test server


class ChunkCopier:
    """Copies chunks of one source disk into one repository DiskWriter with a bounded thread pool."""

    def __init__(self, repo, options):
        self.repo = repo
        self.options = options
        self.chunk_size = repo.chunk_size
        self.in_flight = max(2, min(options.workers * 2, MAX_IN_FLIGHT_BYTES // self.chunk_size))
        # Chunk buffers are reused: a fresh 1 MiB bytearray costs 256 page faults when it is first written, which
        # was ~75 % of the CPU time of reading a chunk from the page cache (the read itself is a memcpy).
        self._buffers = queue.LifoQueue()
        self._lock = threading.Lock()
        self.chunks_done = 0
        self.read_bytes = 0
        self.reused_after_compare = 0

    def _count(self, nbytes):
        with self._lock:
            self.chunks_done += 1
            self.read_bytes += nbytes
            done = self.chunks_done
        fault = self.options.fault_after_chunks
        if fault is not None and done > fault:
            raise HyperVBackupError("Injected fault: the copy failed after %d chunk(s) (%s is set)." % (fault, FAULT_ENV),
                                    hint="Unset %s; it exists only to test failure handling." % FAULT_ENV)
        self.options.progress.advance(nbytes)

    def _take_buffer(self, length):
        if length != self.chunk_size:
            return bytearray(length)         # the short last chunk of a disk
        try:
            return self._buffers.get_nowait()
        except queue.Empty:
            return bytearray(length)          # at most in_flight exist: copy() admits no more tasks than that

    def _copy_one(self, source, writer, index, compare):
        offset = index * self.chunk_size
        length = min(self.chunk_size, source.virtual_size - offset)
        buf = self._take_buffer(length)
        try:
            self.options.limiter.acquire(length)
            source.readinto(offset, buf)
            self._count(length)
            if compare is not None:
                parent_manifest = compare
                parent_id = parent_manifest.chunk_id(index) if index < parent_manifest.chunk_count else None
                if parent_id and self.repo.keys.chunk_id(buf) == parent_id:
                    writer.reuse_chunk(index, parent_manifest)
                    with self._lock:
                        self.reused_after_compare += 1
                    return
            # put_chunk hashes, compresses and writes before it returns and keeps no reference to buf
            writer.put_chunk(index, buf)
        finally:
            if length == self.chunk_size:
                self._buffers.put(buf)

    def copy(self, source, writer, indexes, compare=None):
        """Read and store the chunks ``indexes``; with ``compare`` (a parent manifest) unchanged chunks are reused."""
        slots = threading.BoundedSemaphore(self.in_flight)
        failed = []
        futures = []

        def done(future):
            slots.release()
            if future.exception() is not None:
                failed.append(future.exception())

        with concurrent.futures.ThreadPoolExecutor(self.options.workers, thread_name_prefix="backup-copy") as pool:
            for index in indexes:
                slots.acquire()
                if failed:
                    slots.release()
                    break
                future = pool.submit(self._copy_one, source, writer, index, compare)
                future.add_done_callback(done)
                futures.append(future)
            if failed:
                for future in futures:
                    future.cancel()
        for future in futures:
            if not future.cancelled() and future.exception() is not None:
                raise future.exception()


# --- the flow of one hyperv_backup call -------------------------------------------------------------

CONFIGURATION_ATTACHMENT = "configuration"


def split_configuration(configuration):
    """(configuration for the backup record, bytes of the per-backup object or None).

    The record (listed by hyperv_backup_info, cached in the catalog) keeps each file's name, path and length; the
    content (base64, KB to a few MB) goes into the backup's ``configuration`` object. A configuration whose files
    are plain paths (a host operation without content) is kept as it is.
    """
    configuration = dict(configuration or {})
    files = configuration.get("files") or []
    if not any(isinstance(f, dict) and "content" in f for f in files):
        return configuration, None
    configuration["files"] = [dict((k, v) for k, v in f.items() if k != "content") if isinstance(f, dict) else f for f in files]
    configuration["files_stored_in"] = CONFIGURATION_ATTACHMENT
    content = [f for f in files if isinstance(f, dict) and "content" in f]
    return configuration, json.dumps({"files": content}, sort_keys=True).encode("utf-8")


def load_configuration(repo, record):
    """The configuration captured with ``record``, file content included when the backup stored it (else None)."""
    configuration = dict((record.metadata or {}).get("configuration") or {})
    if not configuration:
        return None
    if configuration.get("files_stored_in"):
        data = repo.read_attachment(record.backup_id, configuration["files_stored_in"])
        if data is None:
            raise HyperVBackupError("Backup %s: its captured configuration files are missing from the repository." % record.backup_id,
                                    hint="Run verify on the repository; restore the disks and register the VM by hand.")
        configuration["files"] = json.loads(data.decode("utf-8"))["files"]
    return configuration


def find_vm(session, vms, name=None, vm_id=None):
    wanted = [vm for vm in vms if (vm_id and vm["id"] == vm_id.lower()) or (name and vm["name"] == name)]
    if not wanted:
        raise HostOperationError(session.host, "get_vms", "not_found", "no VM with %s" % (
            "id %s" % vm_id if vm_id else "name %s" % name), hint="The host has: %s." % ", ".join(sorted(v["name"] for v in vms)))
    return wanted[0]


def _with_keys(disks):
    out = []
    for disk in disks:
        item = dict(disk)
        item["disk_key"] = planning.disk_key(disk)
        item["virtual_size"] = int(disk["virtual_size"])
        out.append(item)
    return out


def _given_point(session, vm, point_id):
    points = [p for p in session.run("get_recovery_points", vm_id=vm["id"]) if p.get("id") == point_id]
    if not points:
        raise HostOperationError(session.host, "get_recovery_points", "not_found",
                                 "VM %s has no recovery point %s" % (vm["name"], point_id),
                                 hint="Pass the id that hyperv_recovery_point state: present returned (recovery_point.id).")
    point = dict(points[0])
    point.setdefault("consistency_fallback", False)
    return point


class BackupRun:
    """State of one backup while it runs: built by ``run_backup``; methods are its steps."""

    def __init__(self, session, repo, params, check_mode=False, options=None):
        self.session = session
        # check mode only reads: even the catalog cache that a listing refreshes must stay as it is (issue 12, point 8)
        self.repo = repo.read_only_view() if check_mode else repo
        self.params = params
        self.check_mode = check_mode
        self.options = options or CopyOptions()
        # One id per run of the workflow (the role passes its own; else the job's, see run_id_from_environment):
        # stored in the backup's metadata, it groups the run's backups in reports. Without one the recovery point
        # still gets a unique name.
        self.run_id = check_run_id(params.get("run_id") or run_id_from_environment())
        self.result = {"changed": False, "warnings": [], "run_id": self.run_id}
        self.point = None
        self.point_created = False

    # step 1-2: VM, method
    def prepare(self):
        params = self.params
        session = self.session
        host_facts = session.run("get_host_info")
        vms = session.run("get_vms")
        self.vm = find_vm(session, vms, params.get("vm"), params.get("vm_id"))
        # Which VM's chain this backup continues: two hosts may report the same VM id (issue 12, point 2)
        cluster = (host_facts.get("cluster") or {}).get("name") if isinstance(host_facts.get("cluster"), dict) else None
        self.host_cluster = cluster or None
        known = [r for r in self.repo.list_backups(vm=self.vm["id"]) if r.vm_id == self.vm["id"] and r.state == "complete"]
        self.lineage = vm_lineage.choose_lineage(known, self.vm, session.host, cluster)
        self.parent = self._parent_from_storage([r for r in known if r.lineage == self.lineage.name]) if self.lineage.latest else None
        self.result.update(lineage=self.lineage.name, lineage_reason=self.lineage.reason)
        if self.lineage.warning:
            self.result["warnings"].append(self.lineage.warning)
        previous_method = self.parent.method if self.parent is not None else None
        eligibility, self.decision = rp.decide_method(host_facts, self.vm, params.get("method") or "auto", previous_method)
        self.result.update(vm=self.vm["name"], vm_id=self.vm["id"], method=self.decision.method,
                           method_reason=self.decision.reason, rct=eligibility.to_dict(),
                           previous_backup_id=self.parent.backup_id if self.parent else None)
        self.serialization_key = None
        if not params.get("recovery_point_id"):
            self.serialization_key = rp.check_serialization(session, host_facts, self.vm, vms)["serialization_key"]

    def _parent_from_storage(self, candidates):
        """The newest of the lineage's backups that storage says is complete. Its record and ``status/<id>`` are read
        again here, never taken from a listing: the catalog is a cache, and an older one can be put back (issue 13,
        point 5), which once made a backup verify had found damaged the next incremental's parent."""
        for listed in sorted(candidates, key=lambda r: r.order_key, reverse=True):
            record, state, why = repository_memory.stored_state(self.repo, listed.backup_id)
            if state == "complete":
                return record
            self.result["warnings"].append("Backup %s was listed as complete but is %s in the repository (%s); it is not used "
                                           "as the parent of this backup." % (listed.backup_id, state, why))
        return None

    def add_repository_warnings(self):
        """Replay and deletion noticed by the repository's listings in this run (repository_memory.py) reach the user
        as module warnings, like every other warning of the run."""
        for warning in repository_memory.warnings_of(self.repo):
            if warning not in self.result["warnings"]:
                self.result["warnings"].append(warning)

    # step 3-4: type and estimate, on the recovery point's disks (or the live disks in check mode)
    def plan(self, disks):
        method = self.method
        kept, excluded = planning.select_disks(_with_keys(disks), self.params.get("exclude_disks"))
        self.disks, self.excluded = kept, excluded
        change_lists, problem = None, None
        if method == "rct" and self.parent is not None and self.parent.method == "rct" and self.params.get("type") != "full":
            rct_ids, problem = planning.reference_rct_ids(self.parent, self.session.run("get_reference_points", vm_id=self.vm["id"]))
            if rct_ids is not None:
                change_lists = dict((d["disk_id"], rp.collect_changes(self.session, d["path"], rct_ids.get(d["disk_id"]),
                                                                      d["virtual_size"])) for d in kept)
        self.type = planning.decide_type(self.params.get("type") or "auto", method, self.result["method_reason"], self.parent,
                                         kept, change_lists, problem)
        estimates = []
        self.sources = {}
        for disk in kept:
            location = locate_disk(disk, self.session.host, self._path_map(), self.options.smb)
            source = open_source_disk(location, *self.options.credentials, smb_port=self.options.smb_port)
            self.sources[disk["disk_key"]] = (source, location)
            if self.type.type == "incremental" and method == "rct":
                ranges, basis = change_lists[disk["disk_id"]].ranges, "rct_change_list"
            else:
                ranges, basis = source.allocated_ranges(), "allocated_ranges"
            estimates.append(planning.estimate_disk(disk["disk_key"], disk["virtual_size"], self.repo.chunk_size, basis, ranges))
        self.estimates = dict((e["disk_key"], e) for e in estimates)
        self.estimate = planning.summarise_estimate(estimates, self.parent, self.type.type, method)
        self.result.update(type=self.type.type, type_reason=self.type.reason, parent_backup_id=self.type.to_dict()["parent_backup_id"],
                           estimate=self.estimate, excluded_disks=[d["disk_key"] for d in excluded])

    def _path_map(self):
        """The module's path_map over the session's own (the lab host's files are local through it)."""
        getter = getattr(self.session, "path_map", None)
        path_map = dict(getter() or {}) if callable(getter) else {}
        path_map.update(self.options.path_map or {})
        return path_map

    @property
    def method(self):
        return self.point["method"] if self.point else self.decision.method

    def create_point(self):
        params = self.params
        if params.get("recovery_point_id"):
            self.point = _given_point(self.session, self.vm, params["recovery_point_id"])
            self.refuse_older_point()      # before the point counts as this run's: a refused point is left as it is
            if self.point.get("method") and self.point["method"] != self.decision.method:
                self.result["method_reason"] = "the recovery point %s given by id is a %s point" % (self.point["id"], self.point["method"])
                self.result["method"] = self.point["method"]
        else:
            run_id = self.run_id or rp.new_run_id()
            self.point = rp.create_recovery_point(self.session, self.vm, self.decision.method, params.get("consistency") or "application",
                                                  run_id, local_paths=params.get("transport") == "lab",
                                                  serialization_key=self.serialization_key)
            # The run's VM lease lives as long as this copy: another run's stale cleanup must never take the point.
            # The renewer talks to the host from its own thread, so it gets its own connection (a runspace pool
            # or shell is not shared between threads).
            settings = getattr(self.session, "settings", None)
            self.lease_session = type(self.session)(settings) if settings is not None else self.session
            self.renewer = rp.renew_lease(self.lease_session, self.vm["id"], run_id)
            if self.point.get("warning"):
                self.result["warnings"].append(self.point["warning"])
        self.point_created = True
        self.result.update(recovery_point_id=self.point["id"], consistency=self.point.get("consistency"),
                           consistency_fallback=bool(self.point.get("consistency_fallback")))

    def refuse_older_point(self):
        """Refuse a recovery point given by id that was taken before the point of the VM's latest backup (issue 12,
        point 5): backed up now it would become the VM's newest backup with an older state, and as an RCT incremental
        (a change list since a later reference point) it would even hold the later contents. Order is told by the
        disk files (backup_planning.point_older_than_parent), not by the host clock."""
        parent, point = self.parent, self.point
        if parent is None or point.get("method") != parent.method:
            return
        older = planning.point_older_than_parent(parent, point.get("disks") or [], self.vm.get("disks") or [])
        if older:
            raise HyperVBackupError(
                "Recovery point %s of VM %s is older than the recovery point of the VM's latest backup %s in this repository "
                "(%s); backing it up now would store an older state as the VM's newest backup." % (
                    point["id"], self.vm["name"], parent.backup_id, older),
                hint="Nothing was stored and the recovery point was left as it is. Back up a new recovery point (leave "
                     "recovery_point_id unset), or back this one up into another repository; remove it with "
                     "hyperv_recovery_point state: absent when it is no longer needed.",
                category="recovery_point_older", recovery_point_id=point["id"], latest_backup_id=parent.backup_id)

    # step 5: copy and commit
    def copy(self):
        repo, vm, point = self.repo, self.vm, self.point
        # Captured now, while the point exists (ConvertToReferencePoint / removing a VSS point deletes the files); the
        # files' content goes into a per-backup object, the record keeps the small rest (issue 11, point 9).
        configuration, configuration_files = split_configuration(
            self.session.run("get_vm_configuration", vm_id=vm["id"], recovery_point_id=point["id"]))
        metadata = {"run_id": self.run_id or None,
                    "recovery_point": {"id": point["id"], "created": point.get("created"), "method": self.method,
                                       "consistency": point.get("consistency"),
                                       "consistency_fallback": bool(point.get("consistency_fallback"))},
                    "configuration": configuration, "type_reason": self.type.reason, "method_reason": self.result["method_reason"],
                    "estimate": self.estimate, "excluded_disks": self.result["excluded_disks"]}
        progress = self.options.progress
        progress.set_phase("copying", self.estimate["bytes_to_read"])
        copier = ChunkCopier(repo, self.options)
        started = time.monotonic()
        per_disk = []
        metadata["host_cluster"] = self.host_cluster
        session = repo.begin_backup(vm["id"], vm["name"], self.session.host, self.method, self.type.type,
                                    parent_backup_id=self.result["parent_backup_id"], consistency=point.get("consistency"),
                                    metadata=metadata, lineage=self.lineage.name)
        with session:
            if configuration_files is not None:
                session.attach(CONFIGURATION_ATTACHMENT, configuration_files)
            for disk in self.disks:
                per_disk.append(self._copy_disk(session, copier, disk))
            # Every chunk has been read by now: a point still there now was there during every read.
            self.check_point_still_there()
            record = session.commit()
        duration = max(time.monotonic() - started, 1e-9)
        progress.finish()
        self._report(record, per_disk, copier, duration)
        return record

    def check_point_still_there(self):
        """Raise unless the host still lists the recovery point the copy read (and a VSS point's shadow copy).

        A point removed while the copy ran (by another run, an administrator, another product) merged or dropped
        the frozen state under the reader: an RCT checkpoint is merged into the disk the copy reads, so later chunks
        hold later writes. Such a backup must never be committed as complete (issue 12, point 1)."""
        point, vm = self.point, self.vm
        try:
            listed = [p for p in self.session.run("get_recovery_points", vm_id=vm["id"]) if p.get("id") == point["id"]]
        except HyperVBackupError as err:
            # unable to confirm the point is intact: committing could store a torn backup as good
            raise HyperVBackupError("Backup of VM %s was not committed: after the copy, the recovery points of the VM could not be "
                                    "listed to check that recovery point %s still exists: %s" % (vm["name"], point["id"], err),
                                    hint="Nothing was stored. Run the backup again once the host answers.",
                                    recovery_point_id=point["id"])
        if not listed:
            what = "its recovery point %s was removed" % point["id"]
        elif self.method == "vss" and not listed[0].get("shadow_present"):
            what = "the shadow copy set %s of its recovery point %s was deleted" % (listed[0].get("shadow_set_id"), point["id"])
        else:
            return
        raise HyperVBackupError(
            "Backup of VM %s was not committed: %s during the copy (by another backup run, an administrator or another "
            "product), so the disks read may mix the point in time with later writes." % (vm["name"], what),
            hint="Nothing was stored and the previous backups are unchanged. Run the backup again, and make sure nothing else "
                 "removes this collection's recovery points (named %s<run id>) or their shadow copies while a backup runs "
                 "(another backup product, a checkpoint or vssadmin cleanup script)." % rp.TAG_PREFIX,
            recovery_point_id=point["id"], category="recovery_point_vanished")

    def _copy_disk(self, session, copier, disk):
        key = disk["disk_key"]
        source, location = self.sources[key]
        estimate = self.estimates[key]
        metadata = {"disk_id": disk.get("disk_id"), "controller_type": disk.get("controller_type"),
                    "controller_number": disk.get("controller_number"), "controller_location": disk.get("controller_location"),
                    "logical_sector_size": disk.get("logical_sector_size"), "format": disk.get("format"),
                    "block_size": disk.get("block_size"), "file_name": location.windows_path.replace("/", "\\").rsplit("\\", 1)[-1]}
        # the files read (own VirtualDiskId, chain top to base): the next backup compares them (issue 12, point 4)
        metadata.update(planning.identity_metadata(disk))
        started = time.monotonic()
        compare = base = None
        if self.type.type == "incremental":
            parent_manifest = self.repo.load_disk_manifest(self.type.parent.backup_id, key, self.type.parent)
            # RCT: the new index starts as the parent's and only changed chunks are put (cost ~ the change, not the disk).
            # VSS reads every allocated chunk: the index starts empty (a chunk no longer allocated is zeros now) and each
            # chunk equal to the parent's takes the parent's id.
            if self.method == "rct":
                base = parent_manifest
            else:
                compare = parent_manifest
        writer = session.add_disk(key, disk["virtual_size"], source_path=location.windows_path, rct_id=disk.get("rct_id"),
                                  metadata=metadata, base=base)
        before = (copier.read_bytes, copier.reused_after_compare)
        copier.copy(source, writer, estimate["indexes"], compare)
        writer.wait()
        writer.finish_index()           # the changed index pages are stored now, and the counts below are final
        stats = writer.stats
        return {"disk_key": key, "disk_id": disk.get("disk_id"), "path": location.path, "access": location.kind,
                "virtual_size": disk["virtual_size"], "bytes_estimated": estimate["bytes_to_read"],
                "bytes_read": copier.read_bytes - before[0], "new_bytes": stats["new_bytes"], "bytes_written": stats["stored_bytes"],
                "new_chunks": stats["new_chunks"], "dedup_chunks": stats["dedup_chunks"],
                "reused_chunks": stats["reused_chunks"], "zero_chunks": stats["zero_chunks"],
                "unchanged_chunks_compared": copier.reused_after_compare - before[1],
                "duration_seconds": round(time.monotonic() - started, 3)}

    def _report(self, record, per_disk, copier, duration):
        read = copier.read_bytes
        new = sum(d["new_bytes"] for d in per_disk)
        written = sum(d["bytes_written"] for d in per_disk)
        self.result.update(changed=True, backup_id=record.backup_id, disks=per_disk, bytes_estimated=self.estimate["bytes_to_read"],
                           bytes_write_estimated=self.estimate["bytes_to_write"], bytes_read=read, bytes_new=new, bytes_written=written,
                           dedup_ratio=round(read / float(new), 3) if new else None,
                           compression_ratio=round(new / float(written), 3) if written else None,
                           duration_seconds=round(duration, 3), bytes_per_second=int(read / duration),
                           read_rate_waited_seconds=round(self.options.limiter.waited_seconds, 3))

    # step 6: hand the recovery point back
    def stop_renewing(self):
        renewer, self.renewer = getattr(self, "renewer", None), None
        if renewer is not None:
            renewer.stop()
        lease_session, self.lease_session = getattr(self, "lease_session", None), None
        if lease_session is not None and lease_session is not self.session and hasattr(lease_session, "close"):
            lease_session.close()

    def hand_back(self):
        vm_id, point = self.vm["id"], self.point
        self.stop_renewing()
        try:
            if self.method == "rct":
                converted = rp.convert_to_reference_point(self.session, vm_id, point["id"], self.params.get("keep_reference_points") or 1,
                                                          repository_id=self.repo.describe()["repository_id"])
                self.result["reference_point"] = converted["reference_point"]
            else:
                rp.remove_recovery_point(self.session, vm_id, point["id"])
            self.result["recovery_point_handled"] = "converted to a reference point" if self.method == "rct" else "removed"
        except HyperVBackupError as err:
            # the backup is committed and good; a leftover point is cleaned by the next run's stale cleanup
            self.result["warnings"].append("Backup %s is complete, but its recovery point %s could not be handed back: %s"
                                           % (self.result["backup_id"], point["id"], err))

    def discard_point(self):
        self.stop_renewing()
        if not self.point_created:
            return
        try:
            rp.remove_recovery_point(self.session, self.vm["id"], self.point["id"])
            self.result["recovery_point_removed"] = True
        except HyperVBackupError as err:
            self.result["warnings"].append("The recovery point %s could not be removed after the failure: %s" % (self.point["id"], err))

    def close_sources(self):
        for source, _location in getattr(self, "sources", {}).values():
            source.close()
        self.sources = {}


def run_backup(session, repo, params, check_mode=False, options=None):
    """One backup of one VM (see the module docstring for the steps). Returns the module result dict.

    ``params``: vm or vm_id, method, type, consistency, exclude_disks, recovery_point_id, run_id,
    keep_reference_points, transport. Failures raise HyperVBackupError after cleaning up.
    """
    run = BackupRun(session, repo, params, check_mode, options)
    run.prepare()
    if check_mode:
        try:
            run.plan(run.vm["disks"])    # the live disks: no recovery point is created in check mode
        finally:
            run.close_sources()
        run.result["check_mode_note"] = "estimate from the live disks; nothing was created or written"
        run.result["changed"] = True
        run.add_repository_warnings()
        return run.result
    run.create_point()
    try:
        run.plan(run.point["disks"])
        run.copy()
    except BaseException:
        run.close_sources()
        run.discard_point()
        raise
    run.close_sources()
    run.hand_back()
    run.add_repository_warnings()
    return run.result
