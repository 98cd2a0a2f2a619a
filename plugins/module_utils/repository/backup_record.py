# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a backup is in the repository: its record (who, when, how, in which order) and its disks' chunk tables.

Times are aware UTC datetimes, written as ISO 8601 with a Z. A backup id (``20261125T071700Z-0123456789ab``) is part
of object keys, so only ids of that shape are accepted. The order of a VM's backups is the repository's commit
sequence, not a clock (see ``BackupRecord.order_key``).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import json
import re
import struct

from ansible_collections.hyperv.backup.plugins.module_utils.errors import RepositoryError
from ansible_collections.hyperv.backup.plugins.module_utils.repository import chunk_index

OLDEST_READABLE_FORMAT = 4          # what release 0.1.0 writes: read and written as such for as long as a release may
FORMAT_VERSION = 5                  # 2: authenticated config, key slots; 3: per-object keys, padding (issue 13); 4: chunk index tree;
#                                     5: XXH3-128 envelope checksum (both issue 14)
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
ZERO_ID = chunk_index.ZERO_ID       # index entry of an all-zero (not stored) chunk
MANIFEST_MAGIC = b"HVDM"
MANIFEST_HEAD = struct.Struct(">4sI")


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


def json_bytes(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")


class BackupRecord:
    """One committed (or in-progress) backup of a VM: who, when, how, and its disks with their sizes."""

    FIELDS = ("backup_id", "vm_id", "vm_name", "host", "created", "completed", "type", "method", "consistency",
              "parent_backup_id", "disks", "stats", "metadata", "retain_until", "state", "verify", "sequence")

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

    @property
    def lineage(self):
        """Which VM this backup is of: the VM id, or ``<vm id>@<host>`` for a second VM that reports the same id
        from another host (see vm_lineage.py). Records written before lineages existed are their VM id's."""
        return self.values.get("lineage") or self.vm_id

    @property
    def order_key(self):
        """Sort key of backups, oldest first: the repository's commit sequence, never a clock (issue 12, point 6).

        A proxy or host clock stepped back must not make a new backup look older than the one before it: "latest",
        parents and keep_last follow the order backups were committed in. Records from before the sequence existed
        (sequence 0) come first, in their time order; two commits that drew the same number (two VMs committing at
        the same instant) fall back to time and id, which only matters across VMs.
        """
        return (int(self.sequence or 0), self.created or EPOCH, self.backup_id or "")

    @property
    def point_time(self):
        """When the VM's state was captured (the recovery point's time on the host), else when the backup started.

        Retention's daily/weekly/monthly/yearly periods use it: the day a backup belongs to is the day of its data."""
        point = (self.metadata or {}).get("recovery_point") or {}
        try:
            return parse_time(point.get("created")) or self.created or EPOCH
        except RepositoryError:
            return self.created or EPOCH

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
    """One disk in one backup: its header (sizes, source, stats) and the root of its chunk index (chunk_index.py).

    The manifest object holds the header only; chunk ids are read from the index pages through ``fetch_page`` (given
    by the repository when it loads the manifest), so opening a manifest costs the same for 16 GiB and 64 TiB."""

    def __init__(self, header, fetch_page=None):
        self.header = header
        self.virtual_size = header["virtual_size"]
        self.chunk_size = header["chunk_size"]
        self.chunk_count = header["chunk_count"]
        self.disk_key = header["disk_key"]
        self.backup_id = header["backup_id"]
        index = header.get("index")
        if not isinstance(index, dict) or index.get("fanout") != chunk_index.FANOUT:
            raise ValueError("no chunk index of this format (fanout %d)" % chunk_index.FANOUT)
        if self.chunk_count != (self.virtual_size + self.chunk_size - 1) // self.chunk_size:
            raise ValueError("chunk_count %r does not fit virtual size %r" % (self.chunk_count, self.virtual_size))
        self.root = index.get("root")
        self.index = chunk_index.IndexReader(fetch_page, self.chunk_count, self.root, index.get("depth"))

    def encode(self):
        head = json_bytes(self.header)
        return MANIFEST_HEAD.pack(MANIFEST_MAGIC, len(head)) + head

    @classmethod
    def decode(cls, data, fetch_page=None):
        magic, head_len = MANIFEST_HEAD.unpack_from(data)
        if magic != MANIFEST_MAGIC:
            raise ValueError("not a disk manifest")
        start = MANIFEST_HEAD.size
        if len(data) != start + head_len:
            raise ValueError("manifest has %d bytes, its header says %d" % (len(data), start + head_len))
        header = json.loads(data[start:start + head_len].decode("utf-8"))
        if header.get("format", 0) > FORMAT_VERSION:
            raise ValueError("manifest format %s is newer than this code (%d)" % (header.get("format"), FORMAT_VERSION))
        return cls(header, fetch_page)

    @staticmethod
    def index_header(root, chunk_count):
        return {"root": root, "depth": chunk_index.tree_depth(chunk_count), "fanout": chunk_index.FANOUT}

    def chunk_id(self, index):
        """Hex id of chunk ``index``, or None (zeros). Raises chunk_index.IndexDamaged if a page cannot be read."""
        return self.index.chunk_id(index)

    def iter_chunks(self, start=0):
        """(index, hex id) of every non-zero chunk, in order."""
        return self.index.iter_chunks(start)

    def page_ids(self):
        return self.index.page_ids()

    def chunk_length(self, index):
        return min(self.chunk_size, self.virtual_size - index * self.chunk_size)
