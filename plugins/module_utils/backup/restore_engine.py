# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Restore a VM's backup to disk files, prove them equal to the backup, optionally register the VM.

``run_restore`` is what hyperv_restore calls. First every output name is settled (each disk_names key must
name one disk, two disks never share a file name, no name leaves the destination). Per disk: write the
backup's non-zero chunks (fetched and decompressed ahead on a thread pool) into a new dynamic VHDX
(vdisk.create_vhdx) or a sparse raw image under a temporary name, re-open what was written and re-hash it
chunk by chunk with the repository's chunk-id function against the manifest (zero chunks must read as
zeros), and only then rename it into place (over a symlink at the name, never through it). A mismatch
removes the file and fails.

Registering (issue 11, point 9) needs the disks on the HOST: ``host_destination`` is a Windows folder there,
written through a path map (the host's share mounted here, or the lab host's own map from the session) or,
with ``smb_access``, restored and verified in ``destination`` and then uploaded to the administrative share
(host/smb_upload.py). import_vm then gets Windows paths with each disk's controller slot from the backup, and
the configuration files stored with the backup (backup_engine.load_configuration).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import concurrent.futures
import os
import re
import threading
import time

from ansible_collections.hyperv.backup.plugins.module_utils.backup.backup_engine import load_configuration
from ansible_collections.hyperv.backup.plugins.module_utils.backup.backup_planning import names_disk
from ansible_collections.hyperv.backup.plugins.module_utils.errors import HyperVBackupError, RepositoryError
from ansible_collections.hyperv.backup.plugins.module_utils.host.disk_access import map_path
from ansible_collections.hyperv.backup.plugins.module_utils.backup.progress import ProgressReporter
from ansible_collections.hyperv.backup.plugins.module_utils.backup.restore_verify import VIRTUAL_DISK_FORMATS, verify_file
from ansible_collections.hyperv.backup.plugins.module_utils.repository import vm_lineage
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import iso, parse_time
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.direct_io import ALIGN, DirectChannel, aligned_buffer
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vdisk import create_vhd, create_vhdx

FORMATS = ("vhdx", "vhd", "raw")
TEMP_SUFFIX = ".restoring"
WRITEBACK_EVERY = 256 * 1024 * 1024     # raw restore: start pushing written data to storage this often
MiB = 1024 * 1024
VHDX_MAX_BLOCKS = 2 * 1024 * 1024       # payload blocks of a restored VHDX at most: a 16 MiB BAT, up to 64 TiB
ZERO_PAGE = bytes(ALIGN)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._()+-]*$")


# --- which backup --------------------------------------------------------------------------------------

def select_backup(repo, vm=None, backup_id=None, point_in_time=None, source_host=None):
    """The backup to restore: by id, else the VM's latest complete one whose data is from ``point_in_time`` or before.

    "Latest" is the repository's commit order (not a clock); ``point_in_time`` is compared with each backup's recovery
    point time. ``vm`` must name one VM: a name or id two VMs share (two hosts reporting the same id, or two VMs
    named alike) is refused unless ``source_host`` says which (issue 12, point 2).
    """
    if backup_id:
        record = repo.get_backup(backup_id)
        if vm and vm not in (record.vm_id, record.vm_name):
            raise RepositoryError("Backup %s belongs to VM %s (%s), not %s." % (backup_id, record.vm_name, record.vm_id, vm),
                                  hint="Drop vm or pass a backup id of that VM.")
        return record
    if not vm:
        raise HyperVBackupError("Say which backup to restore: vm (latest or point_in_time) or backup_id.")
    until = parse_time(point_in_time) if point_in_time else None
    everything = [r for r in repo.list_backups(vm=vm) if r.state == "complete"]
    if source_host and not any((r.host or "").lower() == source_host.lower() for r in everything):
        raise RepositoryError("The repository has no backup of VM %s from host %s." % (vm, source_host),
                              hint="Its backups come from: %s." % (", ".join(sorted(set(r.host or "?" for r in everything))) or "none"))
    records = vm_lineage.pick_one_lineage(everything, vm, source_host)
    candidates = [r for r in records if until is None or r.point_time <= until]
    if not candidates:
        raise RepositoryError("The repository has no complete backup of VM %s%s." % (
            vm, " at or before %s" % point_in_time if point_in_time else ""),
            hint="Its backups: %s." % (", ".join("%s (%s)" % (r.backup_id, iso(r.point_time)) for r in records) or "none"))
    return candidates[-1]


# --- where to write ------------------------------------------------------------------------------------

def _disk_files(disk):
    """The paths a backed-up disk is known by (its source path, its original file name), for names_disk."""
    return (disk.get("source_path"), (disk.get("metadata") or {}).get("file_name"))


def _describe_disks(record):
    return ", ".join("%s (%s)" % (d["disk_key"], (d.get("metadata") or {}).get("file_name") or d.get("source_path") or "no file name")
                     for d in record.disks)


def resolve_disk_names(record, disk_names):
    """``disk_names`` as {disk_key: file name}, each key naming exactly one disk of backup ``record``.

    A key is spelled as in hyperv_backup's exclude_disks (backup_planning.names_disk: ``scsi0-1``, ``SCSI 0:1``,
    the original path or file name). A key that names no disk is refused rather than ignored: a typo would
    otherwise restore the disk under its default name, possibly over another disk's (issue 12, point 3).
    """
    resolved, given_by = {}, {}
    for pattern, name in (disk_names or {}).items():
        hits = [d["disk_key"] for d in record.disks if names_disk(pattern, d["disk_key"], _disk_files(d))]
        if not hits:
            raise HyperVBackupError("disk_names key %r names no disk of backup %s." % (pattern, record.backup_id),
                                    hint="The backup's disks: %s. Name a disk by its controller slot (scsi0-1 or 'SCSI 0:1'), "
                                         "its original path or file name, as in exclude_disks." % _describe_disks(record))
        if len(hits) > 1:
            raise HyperVBackupError("disk_names key %r names %d disks of backup %s (%s)." % (
                pattern, len(hits), record.backup_id, ", ".join(hits)),
                hint="Name each disk by its controller slot (scsi0-1 or 'SCSI 0:1').")
        key = hits[0]
        if key in resolved:
            raise HyperVBackupError("disk_names names disk %s more than once (%r and %r)." % (key, given_by[key], pattern),
                                    hint="Give each disk one entry in disk_names.")
        resolved[key], given_by[key] = name, pattern
    return resolved


def output_name(disk, fmt, vm_name, names=None):
    """The file name of a restored disk: ``names[disk_key]`` (see resolve_disk_names), else the original file
    name, else vm_disk_key; always with the extension of ``fmt``."""
    key = disk["disk_key"]
    name = (names or {}).get(key) or (disk.get("metadata") or {}).get("file_name") or "%s_%s.vhdx" % (vm_name, key)
    name = str(name)
    stem = name.rsplit(".", 1)[0] if name.lower().endswith((".vhdx", ".avhdx", ".vhd", ".raw", ".img")) else name
    return stem + "." + fmt


def check_distinct_names(record, names):
    """Refuse two disks restored to one file name (``names``: [(disk_key, name)]) before anything is written.

    Names are compared case-insensitively: the files end up on Windows (or are uploaded there), where
    VM_DISK1.vhdx and vm_disk1.vhdx are one file, and the second disk would silently replace the first.
    """
    seen = {}
    for key, name in names:
        other = seen.setdefault(name.lower(), key)
        if other != key:
            raise HyperVBackupError("Disks %s and %s of backup %s would be restored to the same file %s (file names are "
                                    "compared without case, as on Windows)." % (other, key, record.backup_id, name),
                                    hint="Give each disk its own file name in disk_names; the backup's disks: %s."
                                    % _describe_disks(record))


def safe_target(destination, name):
    """``destination/name``, refusing any name that would land outside ``destination``.

    Only the destination is resolved (it may be a symlink the operator made); the file name is not: a symlink
    at the target name is something the restore replaces (with force) by renaming over it, never a way to
    another file, inside the destination or out (issue 12, point 9). The name has no separators, so the
    target is always directly in the resolved destination.
    """
    if not name or "/" in name or "\\" in name or name in (".", "..") or not _SAFE_NAME.match(name):
        raise HyperVBackupError("The restore file name %r is not allowed (a path, '..', or unusual characters)." % name,
                                hint="Use plain file names (letters, digits, space, . _ - + ( )) in disk_names.")
    return os.path.join(os.path.realpath(destination), name)


# --- reading the backup in order -----------------------------------------------------------------------

def restore_block_size(virtual_size):
    """VHDX block size of a restored disk: the smallest of 1, 2, 4 ... 32 MiB that keeps the BAT to VHDX_MAX_BLOCKS.

    A block takes its whole size in the file as soon as one sector of it is written. On this side the unwritten rest
    is a hole, but on the host's NTFS, in a copy or an upload it is not: 256 scattered MiB in 32 MiB blocks made a
    9.5 GiB file (issue 14). Small blocks keep the file near its data; the cap keeps the BAT, which writer and reader
    hold in memory, at 16 MiB whatever the size (32 MiB blocks, Hyper-V's default, at 64 TiB).
    """
    block = MiB
    while block < 32 * MiB and -(-virtual_size // block) > VHDX_MAX_BLOCKS:
        block *= 2
    return block


def _data_runs(buf, length):
    """[(start, end)] of ``buf[:length]`` that are not whole, aligned zero pages (a short tail stays in its run).

    Zero pages inside a data chunk are left unwritten: the new file (or fresh VHDX/VHD block) reads as zeros there and
    stays a hole. One find decides for most chunks (~25 us per MiB); only a chunk with a zero page is walked page by
    page (~80 us per MiB).
    """
    if buf.find(ZERO_PAGE, 0, length) < 0:
        return [(0, length)] if length else []
    runs, start = [], None
    for page in range(0, length, ALIGN):
        zero = page + ALIGN <= length and buf[page:page + ALIGN] == ZERO_PAGE
        if zero and start is not None:
            runs.append((start, page))
            start = None
        elif not zero and start is None:
            start = page
    if start is not None:
        runs.append((start, length))
    return runs


def _searchable(data):
    """``data`` as something with find and slicing (bytes or bytearray; a padded chunk comes as a memoryview)."""
    return data if isinstance(data, (bytes, bytearray)) else bytes(data)


def _write_virtual_disk(path, fmt, reader, progress, logical_sector_size):
    """A dynamic VHDX or VHD with the backup's non-zero data written in place (fresh blocks read as zeros).

    Writing chunk by chunk (rather than vdisk.write_vhdx_from's whole-image stream) never assembles or
    compares a whole block: zero chunks and zero pages cost nothing, so a block with no data gets no BAT entry
    and no space. A VHDX's payload is copied into one page-aligned buffer and written with O_DIRECT
    (direct_io.py); a VHD's blocks start after a 512-byte bitmap, never aligned, so it stays buffered.
    """
    if fmt == "vhd":
        if logical_sector_size != 512:
            raise HyperVBackupError("This disk has %d-byte logical sectors; a VHD can only have 512-byte sectors."
                                    % logical_sector_size, hint="Restore it with format: vhdx (Windows Server 2012 or later).")
        writer_cm = create_vhd(path, reader.virtual_size)
    else:
        writer_cm = create_vhdx(path, reader.virtual_size, block_size=restore_block_size(reader.virtual_size),
                                logical_sector_size=logical_sector_size)
    with writer_cm as writer:
        direct = getattr(writer, "enable_direct_io", lambda: False)()
        buf = aligned_buffer(reader.chunk_size) if direct else None
        view = memoryview(buf) if direct else None
        try:
            for offset, data in reader.iter_chunks(skip_zero=True):
                length = len(data)
                if direct:
                    view[:length] = data
                    source, source_view = buf, view
                else:
                    source = _searchable(data)
                    source_view = memoryview(source)
                for start, end in _data_runs(source, length):
                    writer.write(offset + start, source_view[start:end])
                progress.advance(length)
        finally:
            if view is not None:
                view.release()


def _fetch_chunk(repo, manifest, index, cid, check_id=True):
    """Plaintext of chunk ``index`` whose id is ``cid`` (checked against it unless ``check_id`` is False: the verify
    hashes the written copy anyway), or RepositoryError saying which chunk is bad."""
    try:
        return repo.read_chunk(cid, manifest.chunk_length(index), check_id=check_id)
    except KeyError:
        problem = "is missing"
    except ValueError as err:
        problem = "is corrupt (%s)" % err
    offset = index * manifest.chunk_size
    raise RepositoryError("Backup %s, disk %r: chunk %s at offset %d %s." % (manifest.backup_id, manifest.disk_key, cid, offset, problem),
                          hint="Run verify on the repository and restore from another backup.", chunk_id=cid, offset=offset)


def _write_raw(path, repo, reader, progress, check_ids=True):
    """A sparse raw image: ftruncate to the disk's size, then each worker fetches, decompresses and writes the non-zero
    pages of its chunk (zero chunks and zero pages are never written: they stay holes).

    Writes go through O_DIRECT from a page-aligned buffer per worker where the filesystem allows it (direct_io.py),
    else through the page cache. Every WRITEBACK_EVERY bytes a background fdatasync pushes what is written so far
    (data, or the block allocations of direct writes) to storage while the workers go on, so the final fsync
    (restore_disk, during the verify) has only the tail left to wait for. ``check_ids`` False skips the chunk-id hash
    at fetch, for a restore whose verify hashes every written chunk anyway.
    """
    # a new file only: O_EXCL (and O_NOFOLLOW) fail on anything planted at the name since it was cleared, a
    # symlink included, instead of writing through it
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o640)
    channel = DirectChannel(fd, writable=True)
    try:
        manifest = reader.manifest
        os.ftruncate(fd, manifest.virtual_size)
        lock = threading.Lock()
        written = [0]          # bytes written since the last background writeback started
        syncing = []           # the writeback in progress (at most one)
        local = threading.local()

        def one(index, cid):
            data = _fetch_chunk(repo, manifest, index, cid, check_ids)
            length = len(data)
            if channel.direct:
                buf = getattr(local, "buf", None)
                if buf is None:
                    buf = local.buf = aligned_buffer(manifest.chunk_size)
                buf[:length] = data
                source = buf
            else:
                source = _searchable(data)
            offset = index * manifest.chunk_size
            with memoryview(source) as view:
                for start, end in _data_runs(source, length):
                    channel.pwrite(view[start:end], offset + start)
            progress.advance(length)
            with lock:
                written[0] += len(data)
                if written[0] >= WRITEBACK_EVERY and not (syncing and not syncing[0].done()):
                    written[0] = 0
                    syncing[:] = [syncer.submit(os.fdatasync, fd)]

        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="restore-writeback") as syncer, \
                concurrent.futures.ThreadPoolExecutor((os.cpu_count() or 2) + 2, thread_name_prefix="restore") as pool:
            window = []
            for index, cid in reader.iter_ids():        # a bounded window of tasks: memory stays a few chunks
                window.append(pool.submit(one, index, cid))
                if len(window) >= 2 * ((os.cpu_count() or 2) + 2):
                    window.pop(0).result()
            for future in window:
                future.result()
        for future in syncing:           # the executor has finished it; a write-back error is an error
            future.result()
    finally:
        channel.close()
        os.close(fd)


def _fsync_file(path):
    """Make the file's data durable (fsync flushes the inode's dirty pages whichever descriptor wrote them)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- the restore ---------------------------------------------------------------------------------------

def restore_disk(repo, record, disk, target, fmt, progress, verify=True):
    """Write one disk to ``target`` (through a temporary name), verify, rename. Returns its result entry."""
    started = time.monotonic()
    reader = repo.open_disk_reader(record.backup_id, disk["disk_key"])
    manifest = reader.manifest
    temp = target + TEMP_SUFFIX
    try:
        if os.path.lexists(temp):       # lexists: a dangling symlink there is removed too, never written through
            os.unlink(temp)             # ours, from an interrupted restore (or planted)
        if fmt in VIRTUAL_DISK_FORMATS:
            meta = disk.get("metadata") or {}
            _write_virtual_disk(temp, fmt, reader, progress, int(meta.get("logical_sector_size") or 512))
        else:
            # a verified restore hashes every written chunk in verify_file: the fetch need not hash it first
            _write_raw(temp, repo, reader, progress, check_ids=not verify)
        written = time.monotonic()
        # the raw image's write-back to storage (the VHDX writer syncs on close) overlaps the verify's re-read;
        # both end before the rename, so only a verified, durable file gets the target name
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="restore-fsync") as syncer:
            durable = syncer.submit(_fsync_file, temp) if fmt == "raw" else None
            check = verify_file(repo, manifest, temp, fmt) if verify else None
            if durable is not None:
                durable.result()
        if check is not None and (check["mismatch_count"] or check["manifest_hash"] != check["restored_hash"]):
            if fmt == "raw" and check["mismatches"]:
                # the raw writer skipped the id check at fetch: a chunk that is bad in the repository is named as such
                _recheck_chunk(repo, manifest, check["mismatches"][0]["offset"])
            raise HyperVBackupError("The restored disk %s does not match backup %s: %d chunk(s) differ (first at offset %d)."
                                    % (target, record.backup_id, check["mismatch_count"], check["mismatches"][0]["offset"]),
                                    hint="The file was removed. Run verify on the repository; restore another backup.",
                                    mismatches=check["mismatches"])
        # rename(2) replaces whatever is at the target name, a symlink itself included, without following it
        os.replace(temp, target)
    except OSError as err:      # destination full, read-only, no permission ...: a message, not a traceback
        _discard(temp)
        raise HyperVBackupError("Writing the restored disk %s failed: %s." % (target, err.strerror or err),
                                hint="Check the free space and the permissions of %s (the partial file was removed)."
                                % os.path.dirname(target), errno=err.errno)
    except BaseException:
        _discard(temp)
        raise
    entry = {"disk_key": disk["disk_key"], "path": target, "format": fmt, "virtual_size": manifest.virtual_size,
             "chunks": manifest.chunk_count, "data_chunks": int((manifest.header.get("stats") or {}).get("chunks") or 0),
             "write_seconds": round(written - started, 3), "duration_seconds": round(time.monotonic() - started, 3)}
    if check is not None:
        entry.update(verified=True, verified_chunks=check["verified_chunks"], manifest_hash=check["manifest_hash"],
                     restored_hash=check["restored_hash"])
    else:
        entry["verified"] = False
    return entry


def _recheck_chunk(repo, manifest, offset):
    """Fetch the backup's chunk at ``offset`` with its id checked: RepositoryError if the repository's copy is bad."""
    index = offset // manifest.chunk_size
    cid = manifest.chunk_id(index)
    if cid:
        _fetch_chunk(repo, manifest, index, cid)


def _discard(path):
    """Remove a temporary file (or a link at its name) after a failure, without hiding the failure itself."""
    try:
        if os.path.lexists(path):
            os.unlink(path)
    except OSError:
        pass        # e.g. a directory planted at the name: the error being raised says what went wrong


def _address(disk):
    """The controller slot a disk had in the backup (recorded per disk; else read from its key, e.g. scsi0-1)."""
    meta = disk.get("metadata") or {}
    if meta.get("controller_type") is not None and meta.get("controller_location") is not None:
        return str(meta["controller_type"]).upper(), int(meta.get("controller_number") or 0), int(meta["controller_location"])
    match = re.match(r"^(ide|scsi)(\d+)-(\d+)$", str(disk["disk_key"]))
    if not match:
        raise HyperVBackupError("Disk %s of the backup has no controller slot; the VM cannot be registered with it." % disk["disk_key"],
                                hint="Create the VM by hand and attach the restored disk.")
    return match.group(1).upper(), int(match.group(2)), int(match.group(3))


def _windows_join(folder, name):
    return str(folder).rstrip("\\/") + "\\" + name


def session_path_map(session):
    """The session's {Windows prefix: local directory} (the lab host's, see HostSession.path_map), or None."""
    getter = getattr(session, "path_map", None) if session is not None else None
    try:
        return getter() if callable(getter) else getter
    except Exception:  # pylint: disable=broad-except  # a session without a map simply has none
        return None


def reverse_map(local_path, path_map):
    """The Windows path of a local path through ``path_map`` (longest local directory first), or None."""
    target = os.path.realpath(local_path)
    for prefix, local in sorted((path_map or {}).items(), key=lambda item: len(str(item[1])), reverse=True):
        root = os.path.realpath(str(local))
        if target == root or target.startswith(root + os.sep):
            rest = os.path.relpath(target, root)
            return str(prefix).rstrip("\\") if rest == "." else _windows_join(prefix, rest.replace(os.sep, "\\"))
    return None


_WINDOWS_PATH = re.compile(r"^([A-Za-z]:\\|\\\\[^\\]+\\)")


def is_windows_path(path):
    """``C:\\...`` or ``\\\\server\\share...`` (never a path of this Linux machine)."""
    return bool(path) and bool(_WINDOWS_PATH.match(str(path)))


def plan_delivery(params, session):
    """Where the disks are written locally and which Windows folder on the host they become.

    Returns (local directory, host folder or None, kind) with kind 'local' (no host path), 'path_map' (the host
    folder is a local directory through path_map / the lab's map) or 'smb' (written to ``destination`` on the
    proxy, then uploaded to the host's administrative share).
    """
    host_folder = params.get("host_destination")
    if not host_folder and is_windows_path(params.get("destination")):
        # destination: C:\\Restores\\web01 (what the hyperv_restore role passes for a host) means a folder on the host
        host_folder, params = params["destination"], dict(params, destination=None)
    path_map = dict(session_path_map(session) or {})
    path_map.update(params.get("path_map") or {})
    if host_folder:
        local = map_path(host_folder, path_map) if path_map else None
        if local:
            return local, host_folder, "path_map"
        if params.get("smb_access"):
            if not params.get("destination"):
                raise HyperVBackupError("smb_access needs destination: a directory on this machine where the disks are written "
                                        "and verified before they are uploaded to %s." % host_folder)
            return params["destination"], host_folder, "smb"
        raise HyperVBackupError("host_destination %s is not reachable from this machine." % host_folder,
                                hint="Give path_map (the host's share mounted here) or smb_access: true (upload to the host's "
                                     "administrative share with the connection credentials).")
    if not params.get("destination"):
        raise HyperVBackupError("Say where to restore: destination (a directory here) or host_destination (a folder on the host).")
    if params.get("register") and path_map:
        mapped = reverse_map(params["destination"], path_map)
        if mapped:
            return params["destination"], mapped, "path_map"
    return params["destination"], None, "local"


def register_vm(repo, record, restored, host_folder, session, params):
    """import_vm with the backup's configuration and the restored disks at their Windows paths and slots."""
    configuration = load_configuration(repo, record)
    if not configuration:
        raise HyperVBackupError("Backup %s has no captured VM configuration; the disks were restored but the VM cannot be "
                                "registered." % record.backup_id, hint="Create the VM by hand and attach the restored disks.")
    disks = dict((d["disk_key"], d) for d in record.disks)
    disk_paths = []
    for entry in restored:
        kind, number, location = _address(disks[entry["disk_key"]])
        disk_paths.append({"path": entry["host_path"], "controller_type": kind, "controller_number": number,
                           "controller_location": location})
    configuration["import_folder"] = host_folder
    if params.get("switch_map"):
        configuration["switch_map"] = dict(params["switch_map"])
    return session.run("import_vm", configuration=configuration, disk_paths=disk_paths, new_name=params.get("new_name"),
                       generate_new_id=bool(params.get("generate_new_id")))


def _uploader(session, params):
    from ansible_collections.hyperv.backup.plugins.module_utils.host.smb_upload import SmbUploader   # smbclient only when used
    return SmbUploader(session.host if session is not None else params.get("host"), params.get("username"),
                       params.get("password"), port=params.get("smb_port") or 445)


def run_restore(repo, params, session=None, check_mode=False, progress_file=None, uploader=None):
    """Restore per ``params`` (vm, backup_id, point_in_time, destination, host_destination, path_map, smb_access,
    format, force, disk_names, verify, register, new_name, generate_new_id, switch_map). ``session`` (a HostSession)
    is needed to register the VM; ``uploader`` replaces the SMB uploader (tests)."""
    fmt = params.get("format") or "vhdx"
    if fmt not in FORMATS:
        raise HyperVBackupError("format %r is not one of %s." % (fmt, ", ".join(FORMATS)))
    record = select_backup(repo, params.get("vm"), params.get("backup_id"), params.get("point_in_time"), params.get("source_host"))
    if params.get("register") and session is None:
        raise HyperVBackupError("register: true needs the host connection options (host, transport, ...).")
    if params.get("register") and fmt not in VIRTUAL_DISK_FORMATS:
        raise HyperVBackupError("register: true needs format: vhdx (or vhd for Windows Server 2008 / 2008 R2); "
                                "Hyper-V cannot attach raw images.")
    destination, host_folder, delivery = plan_delivery(params, session)
    if params.get("register") and host_folder is None:
        raise HyperVBackupError("register: true needs the disks on the host: give host_destination (a folder on the host) "
                                "with path_map or smb_access.", hint="The VM is registered from Windows paths on the host.")
    if delivery == "smb" and uploader is None:
        uploader = _uploader(session, params)
    # every name is checked (keys, collisions, escapes) before any file is looked at or written
    disk_names = resolve_disk_names(record, params.get("disk_names"))
    names = [(disk, output_name(disk, fmt, record.vm_name, disk_names)) for disk in record.disks]
    check_distinct_names(record, [(disk["disk_key"], name) for disk, name in names])
    plan = []
    for disk, name in names:
        target = safe_target(destination, name)
        if os.path.isdir(target) and not os.path.islink(target):
            raise HyperVBackupError("%s is a directory; a restored disk cannot replace it." % target,
                                    hint="Choose another destination or another name in disk_names.", path=target)
        host_path = _windows_join(host_folder, name) if host_folder else None
        # lexists: a symlink at the name (even a dangling one) is something there, replaced only with force
        exists = os.path.lexists(target) or bool(delivery == "smb" and uploader.exists(host_path))
        if exists and not params.get("force"):
            raise HyperVBackupError("%s already exists; restore never overwrites a file unless force: true." % (
                host_path if delivery == "smb" and not os.path.lexists(target) else target),
                hint="Choose another destination, delete the file, or set force: true.", path=target)
        plan.append((disk, target, exists, host_path))
    result = {"backup_id": record.backup_id, "vm": record.vm_name, "vm_id": record.vm_id, "backup_type": record.type,
              "created": record.as_dict()["created"], "consistency": record.consistency, "destination": destination,
              "host_destination": host_folder, "delivery": delivery, "format": fmt,
              "planned": [dict({"disk_key": d["disk_key"], "path": t, "replaces_existing": e}, **({"host_path": h} if h else {}))
                          for d, t, e, h in plan]}
    if check_mode:
        result["changed"] = True
        return result
    if not os.path.isdir(destination):
        os.makedirs(destination, mode=0o750)
    total = sum(int(d["virtual_size"]) for d, _t, _e, _h in plan)
    progress = ProgressReporter(progress_file, total, operation="restore")
    progress.set_phase("restoring")
    started = time.monotonic()
    restored = []
    for disk, target, _exists, host_path in plan:
        entry = restore_disk(repo, record, disk, target, fmt, progress, verify=params.get("verify", True))
        if host_path:
            entry["host_path"] = host_path
        if delivery == "smb":
            entry["uploaded_to"] = uploader.upload_file(target, host_path, replace=bool(params.get("force")))
        restored.append(entry)
    duration = max(time.monotonic() - started, 1e-9)
    progress.finish()
    result.update(changed=True, disks=restored, duration_seconds=round(duration, 3), bytes_per_second=int(total / duration),
                  verified=all(d["verified"] for d in restored))
    if params.get("register"):
        result["registered_vm"] = register_vm(repo, record, restored, host_folder, session, params)
    return result
