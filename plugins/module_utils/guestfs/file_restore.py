# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What hyperv_file_restore does: list partitions and files of a backup's disk, extract files, check file systems.

The backup is chosen as hyperv_restore chooses it (restore_engine.select_backup: ``backup_id``, or ``vm`` with
``point_in_time`` and ``source_host``); the disk as hyperv_restore's disk_names keys name one
(restore_engine.resolve_disk_names). Every read goes through the repository's DiskReader (chunks checked against
their ids, full or incremental, local or S3, encrypted or not) behind a ChunkCache, so only the chunks the file
system library asks for are fetched; ``bytes_read`` reports them.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.hyperv.backup.plugins.module_utils.backup.restore_engine import resolve_disk_names, select_backup
from ansible_collections.hyperv.backup.plugins.module_utils.errors import HyperVBackupError
from ansible_collections.hyperv.backup.plugins.module_utils.guestfs import extract as extraction
from ansible_collections.hyperv.backup.plugins.module_utils.guestfs.filesystem import ChunkCache, detect_filesystem, open_filesystem
from ansible_collections.hyperv.backup.plugins.module_utils.guestfs.partitions import GuestFileSystemError, find_partition, read_partitions
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import iso


def pick_disk(record, disk=None):
    """The disk key of backup ``record`` that ``disk`` names (as a disk_names key), or its only disk."""
    if disk:
        return list(resolve_disk_names(record, {disk: "x"}))[0]
    if len(record.disks) != 1:
        raise HyperVBackupError("Backup %s has %d disks; say which with disk." % (record.backup_id, len(record.disks)),
                                hint="Its disks: %s (a controller slot like scsi0-1, the original path or file name)." % (
                                    ", ".join(d["disk_key"] for d in record.disks)))
    return record.disks[0]["disk_key"]


def describe_partitions(disk, partitions):
    """Partition dicts with the file system each holds (None where none is recognised)."""
    out = []
    for part in partitions:
        item = part.as_dict()
        item["filesystem"] = detect_filesystem(disk, part)
        out.append(item)
    return out


def _choose_partition(disk, partitions, number, where):
    if number is not None:
        return find_partition(partitions, number)
    readable = [p for p in partitions if detect_filesystem(disk, p) not in (None, "bitlocker")]
    if len(readable) == 1:
        return readable[0]
    raise GuestFileSystemError("%s has %d partitions with a file system; say which with partition." % (where, len(readable)),
                               hint="Its partitions: %s (list them with state=listed)." % (
                                   ", ".join("%d (%s)" % (p.number, detect_filesystem(disk, p)) for p in partitions) or "none"))


def _backup_facts(record, disk_key):
    return {"backup_id": record.backup_id, "vm": record.vm_name, "vm_id": record.vm_id, "backup_type": record.backup_type,
            "created": iso(record.created), "disk": disk_key}


def run_file_restore(repo, params, check_mode=False):
    """hyperv_file_restore: ``state`` listed or extracted; returns the module's result."""
    record = select_backup(repo, params.get("vm"), params.get("backup_id"), params.get("point_in_time"), params.get("source_host"))
    disk_key = pick_disk(record, params.get("disk"))
    reader = repo.open_disk_reader(record.backup_id, disk_key)
    disk = ChunkCache(reader)
    where = "Backup %s, disk %s" % (record.backup_id, disk_key)
    partitions = read_partitions(disk)
    result = _backup_facts(record, disk_key)
    result["changed"] = False
    if params.get("state", "listed") == "listed":
        result["partitions"] = describe_partitions(disk, partitions)
        if params.get("partition") is not None or params.get("path"):
            part = _choose_partition(disk, partitions, params.get("partition"), where)
            fs = open_filesystem(disk, part, where)
            limit = params.get("limit") or 0
            entries = []
            for entry in fs.entries(params.get("path") or "/", recursive=bool(params.get("recursive"))):
                if limit and len(entries) >= limit:
                    result["truncated"] = True
                    break
                entries.append(entry.as_dict())
            result.update(partition=part.number, filesystem=fs.kind, entries=entries, truncated=result.get("truncated", False))
    else:
        part = _choose_partition(disk, partitions, params.get("partition"), where)
        fs = open_filesystem(disk, part, where)
        done = extraction.extract(fs, params["paths"], params["dest"], force=bool(params.get("force")), check_mode=check_mode)
        result.update(partition=part.number, filesystem=fs.kind, dest=params["dest"], files=done["files"],
                      directories=done["directories"], skipped=done["skipped"], replaced=done["replaced"], changed=done["changed"])
    result["bytes_read"] = disk.bytes_read
    result["chunks_read"] = disk.chunks_read
    return result


def check_backup_filesystems(repo, record):
    """Open every partition of every disk of backup ``record`` and walk its file system's metadata.

    Returns [{disk, partition, filesystem, ok, error, directories, files}]; a partition without a recognised file
    system is listed with ``filesystem`` None and ok true (nothing to prove), BitLocker likewise (it cannot be read).
    """
    results = []
    for item in record.disks:
        disk_key = item["disk_key"]
        disk = ChunkCache(repo.open_disk_reader(record.backup_id, disk_key))
        where = "Backup %s, disk %s" % (record.backup_id, disk_key)
        try:
            partitions = read_partitions(disk)
        except GuestFileSystemError as err:
            results.append({"disk": disk_key, "partition": err.extra.get("partition"), "filesystem": None, "ok": False, "error": str(err)})
            continue
        for part in partitions:
            kind = detect_filesystem(disk, part)
            entry = {"disk": disk_key, "partition": part.number, "filesystem": kind, "ok": True, "error": None}
            if kind not in (None, "bitlocker"):
                try:
                    entry.update(open_filesystem(disk, part, where).check())
                except GuestFileSystemError as err:
                    entry.update(ok=False, error=err.message)
            results.append(entry)
    return results


def add_filesystem_checks(repo, report):
    """Extend a Repository.verify report: every backup whose bytes are intact gets ``filesystems`` (see
    check_backup_filesystems); one with a damaged or unreadable guest file system is marked not ok, with the
    disk, partition and first error in its problems."""
    for entry in report["backups"]:
        if not entry.get("ok"):
            continue
        try:
            record = repo.get_backup(entry["backup_id"])
        except HyperVBackupError:
            continue
        entry["filesystems"] = check_backup_filesystems(repo, record)
        for check in entry["filesystems"]:
            if not check["ok"]:
                entry["ok"] = False
                entry["problems"].append("guest file system damaged: disk %s, partition %s: %s" % (
                    check["disk"], check["partition"], check["error"]))
    report["damaged_backups"] = [e["backup_id"] for e in report["backups"] if not e["ok"]]
    report["ok"] = not report["damaged_backups"]
    report["filesystems_checked"] = True
    return report
