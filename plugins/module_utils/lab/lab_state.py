# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Lab host state on disk: layout, locks, atomic JSON, and what each Windows era looks like.

A lab host is a directory ``<lab_directory>/<host>/`` holding ``host.json`` (facts, services,
faults, the VM index) and ``vms/<vm_id>/vm.json`` (one VM with its disks and checkpoints). Ansible
forks run several processes against one lab host at once, so every read-modify-write holds an
``fcntl.flock`` on a lock file (one per host, one per VM; always host before VM) and every JSON
file is replaced atomically (temp file, fsync, rename). Everything is created owner-only.

This file knows nothing about disks or operations; ``lab_disks.py``, ``lab_rct.py`` and
``lab_host.py`` build on it.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import datetime
import fcntl
import json
import marshal
import os
import tempfile
import time
import uuid

from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_locale import LOCALES

HOST_FILE = "host.json"
VM_FILE = "vm.json"
VMS_DIR = "vms"
DISKS_DIR = "Virtual Hard Disks"
LOCK_FILE = ".lock"
STATE_FORMAT = 1

# Windows Server eras the lab can pretend to be. max_config is the newest VM configuration version
# the era can run (a VM with a newer one cannot be imported or migrated there); cluster_level is
# the ClusterFunctionalLevel a cluster of that era reports (2012 = 7, 2012 R2 = 8, 2016 = 9,
# 2019 = 10, 2022 = 11; 2008 R2 clusters have no such property: the lab says 6). disk_format is what
# New-VHD / the New Virtual Machine wizard of that era creates: 2008 and 2008 R2 know only VHD (and name
# checkpoint children .avhd); VHDX came with 2012. namespaces: the Hyper-V WMI namespaces the era has
# (hyperv_wmi_schema.json version_matrix: v1 on 2008 R2 and 2012, v2 from 2012). ps_version: the
# PowerShell the era ships ($PSVersionTable.PSVersion major.minor; general knowledge, the schema has none).
# UNCONFIRMED, and what the lab does:
#  - 2012: VMs of Windows Server 2012 have no configuration version the schema lists (vm_configuration_versions
#    starts at 2012 R2 = 5.0); the lab treats 2012 like 2008 R2 and uses 5.0, the oldest the collection knows.
#  - 2025: the 2022 model plus configuration versions 11.0 and 12.0 (schema vm_configuration_versions
#    "Windows Server 2025"); build 26100 and cluster level 12 are general knowledge, not in the schema.
_V1 = "root\\virtualization"
_V2 = "root\\virtualization\\v2"
ERAS = {
    "2008r2": {"os_name": "Microsoft Windows Server 2008 R2 Datacenter", "os_version": "6.1.7601", "os_build": 7601,
               "max_config": "5.0", "cluster_level": 6, "disk_format": "vhd", "namespaces": (_V1,), "ps_version": "2.0"},
    "2012": {"os_name": "Microsoft Windows Server 2012 Datacenter", "os_version": "6.2.9200", "os_build": 9200,
             "max_config": "5.0", "cluster_level": 7, "disk_format": "vhdx", "namespaces": (_V1, _V2), "ps_version": "3.0"},
    "2012r2": {"os_name": "Microsoft Windows Server 2012 R2 Datacenter", "os_version": "6.3.9600", "os_build": 9600,
               "max_config": "5.0", "cluster_level": 8, "disk_format": "vhdx", "namespaces": (_V2,), "ps_version": "4.0"},
    "2016": {"os_name": "Microsoft Windows Server 2016 Datacenter", "os_version": "10.0.14393", "os_build": 14393,
             "max_config": "8.0", "cluster_level": 9, "disk_format": "vhdx", "namespaces": (_V2,), "ps_version": "5.1"},
    "2019": {"os_name": "Microsoft Windows Server 2019 Datacenter", "os_version": "10.0.17763", "os_build": 17763,
             "max_config": "9.0", "cluster_level": 10, "disk_format": "vhdx", "namespaces": (_V2,), "ps_version": "5.1"},
    "2022": {"os_name": "Microsoft Windows Server 2022 Datacenter", "os_version": "10.0.20348", "os_build": 20348,
             "max_config": "10.0", "cluster_level": 11, "disk_format": "vhdx", "namespaces": (_V2,), "ps_version": "5.1"},
    "2025": {"os_name": "Microsoft Windows Server 2025 Datacenter", "os_version": "10.0.26100", "os_build": 26100,
             "max_config": "12.0", "cluster_level": 12, "disk_format": "vhdx", "namespaces": (_V2,), "ps_version": "5.1"},
}
CONFIGURATION_VERSIONS = ("5.0", "6.2", "8.0", "9.0", "10.0", "11.0", "12.0")

SOFTWARE_VSS_PROVIDER = {"name": "Microsoft Software Shadow Copy provider 1.0",
                         "id": "{b5946137-7b9f-4925-af80-51abd60b20d5}", "type": "software"}
# A storage vendor's provider; the id is the one a public Pure Storage script passes to diskshadow.
HARDWARE_VSS_PROVIDER = {"name": "Lab Storage Array VSS Hardware Provider",
                         "id": "{781c006a-5829-4a25-81e3-d5e43bd005ab}", "type": "hardware"}
HYPERV_VSS_WRITER = {"name": "Microsoft Hyper-V VSS Writer", "id": "{66841cd4-6ded-4f4b-8f17-fd23f8ddc3de}"}

SERVICE_DEFAULTS = {
    "vss": {"display_name": "Volume Shadow Copy", "status": "Stopped", "start_type": "Manual"},
    "swprv": {"display_name": "Microsoft Software Shadow Copy Provider", "status": "Stopped", "start_type": "Manual"},
    "vmms": {"display_name": "Hyper-V Virtual Machine Management", "status": "Running", "start_type": "Automatic"},
}
SERVICE_STATUSES = ("Running", "Stopped", "Paused", "StartPending", "StopPending")

# Guest integration services in the order Get-VMIntegrationService lists them; 'VSS' is the backup one.
INTEGRATION_SERVICES = ("Guest Service Interface", "Heartbeat", "Key-Value Pair Exchange", "Shutdown",
                        "Time Synchronization", "VSS")
OPERATIONAL_STATUSES = ("OK", "NoContact", "LostCommunication", "Degraded", "Error", "Disabled")
VM_STATES = ("Running", "Off", "Saved", "Paused")

# Quirks change how the lab host behaves where Windows allows more than one behaviour, or hold a window
# open for tests: "slow_shadow_create_seconds:<seconds>" makes diskshadow's create hold the shadow copy
# creation window (StartSnapshotSet .. DoSnapshotSet) that long, so a second create can meet it;
# "byte_length_strict" makes GetVirtualDiskChanges take Microsoft's page literally (ByteLength must be less
# than the virtual size, issue point 12; the lab's WMI methods read it); "rct_id_per_reference_point" gives every
# reference point its own RCT id even for a disk that did not change, so destroying one point invalidates only
# its own ids (issue 12 point 7; without it an unchanged disk gets the same id again and destroying any point
# that holds an id invalidates it for every holder, see lab_rct.py).
QUIRKS = ("slow_shadow_create_seconds:<seconds>", "byte_length_strict", "rct_id_per_reference_point")
RCT_ID_PER_REFERENCE_POINT = "rct_id_per_reference_point"

HOST_FAULTS = ("unreachable", "auth_fails", "service_wont_start:<service>", "integration_missing",
               "integration_no_contact", "recovery_point_fails", "vss_writer_failed", "rct_invalid")
VM_FAULTS = ("integration_missing", "integration_no_contact", "recovery_point_fails", "rct_invalid")


def utc_now():
    """The current time as the ISO 8601 UTC string every result uses."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_guid():
    """A lowercase GUID without braces (the way results carry VM and disk ids)."""
    return str(uuid.uuid4())


def version_tuple(text):
    """'9.0' -> (9, 0), so configuration versions compare as numbers."""
    return tuple(int(part) for part in str(text).split("."))


def validate_fault(fault, vm_level=False):
    """Return the fault if the lab knows it, else raise ValueError listing the known ones."""
    known = VM_FAULTS if vm_level else HOST_FAULTS
    name = fault.split(":", 1)[0]
    if fault in known or (not vm_level and name == "service_wont_start" and ":" in fault and fault.split(":", 1)[1]):
        return fault
    raise ValueError("unknown lab %s fault %r; known: %s" % ("VM" if vm_level else "host", fault, ", ".join(known)))


def validate_quirk(quirk):
    """Return the quirk if the lab knows it (with a valid argument), else raise ValueError listing the known ones."""
    name, _sep, argument = str(quirk).partition(":")
    known = dict(item.split(":", 1) if ":" in item else (item, None) for item in QUIRKS)
    if name in known:
        if known[name] is None and not argument:
            return quirk
        if known[name] == "<seconds>":
            try:
                if float(argument) >= 0:
                    return quirk
            except ValueError:
                pass
    raise ValueError("unknown or malformed lab host quirk %r; known: %s" % (quirk, ", ".join(QUIRKS)))


def quirk_value(host_doc, name, default=None):
    """The argument of quirk ``name`` on the host (the text after ':'), True for a quirk without one, else default."""
    for quirk in host_doc.get("quirks") or []:
        quirk_name, sep, argument = str(quirk).partition(":")
        if quirk_name == name:
            return argument if sep else True
    return default


def write_json_atomic(path, document):
    """Replace ``path`` with ``document`` so a reader sees the old or the new file, never a mix."""
    directory = os.path.dirname(path)
    fd, temp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=directory)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(document, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# Parsed documents by path, kept as marshal bytes with the stat of the file they came from. The lab host answers each
# bridge call from its files (a 64 TiB change list is 65536 calls, each reading host.json, vm.json and the RCT file);
# a file unchanged since (same inode, size, mtime and ctime: every write replaces the file, write_json_atomic) is not
# parsed again. marshal gives every caller fresh objects to change, about five times faster than parsing the JSON.
# File times come from a coarse clock (a few ms) and a freed inode number may be given to the next file, so a file
# is only remembered once its times are older than SETTLED_NS when it was read (git's "racy" rule): any later
# write then carries a later time.
_PARSED = {}
_PARSED_KEEP = 256
SETTLED_NS = 200 * 1000 * 1000


def read_json(path):
    try:
        before = os.stat(path)
    except OSError:
        before = None
    stamp = (before.st_ino, before.st_size, before.st_mtime_ns, before.st_ctime_ns) if before is not None else None
    cached = _PARSED.get(path)
    if cached is not None and stamp is not None and cached[0] == stamp:
        return marshal.loads(cached[1])
    with open(path) as handle:
        document = json.load(handle)
    try:
        settled = stamp is not None and max(before.st_mtime_ns, before.st_ctime_ns) < time.time_ns() - SETTLED_NS
        after = os.stat(path)
        # not replaced while it was read (the stamp, not the whole stat: reading moves atime under relatime)
        if settled and (after.st_ino, after.st_size, after.st_mtime_ns, after.st_ctime_ns) == stamp:
            if len(_PARSED) >= _PARSED_KEEP:
                _PARSED.pop(next(iter(_PARSED)))
            _PARSED[path] = (stamp, marshal.dumps(document))
    except (OSError, ValueError):       # ValueError: marshal cannot take the document (cannot happen for JSON)
        _PARSED.pop(path, None)
    return document


def make_private_dir(path):
    """Create ``path`` (and parents) owner-only; an existing directory keeps its mode.

    Each missing parent is created 0o700 too: os.makedirs applies ``mode`` to the last directory only
    (Python 3.7+), which left e.g. the host's ``drives`` folder world-readable."""
    path = os.path.abspath(path)
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise


@contextlib.contextmanager
def file_lock(directory):
    """Hold an exclusive flock on ``<directory>/.lock`` (created owner-only) for the block."""
    fd = os.open(os.path.join(directory, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class LabLayout:
    """Paths of one lab host's files."""

    def __init__(self, lab_directory, host):
        if not host or os.sep in host or host.startswith("."):
            raise ValueError("lab host name %r is not a plain name (no path separators, not starting with '.')" % host)
        self.lab_directory = os.path.abspath(lab_directory)
        self.host = host
        self.host_dir = os.path.join(self.lab_directory, host)
        self.host_file = os.path.join(self.host_dir, HOST_FILE)
        self.vms_dir = os.path.join(self.host_dir, VMS_DIR)

    def exists(self):
        return os.path.isfile(self.host_file)

    def vm_dir(self, vm_id):
        return os.path.join(self.vms_dir, vm_id)

    def vm_file(self, vm_id):
        return os.path.join(self.vms_dir, vm_id, VM_FILE)

    def disks_dir(self, vm_id):
        return os.path.join(self.vms_dir, vm_id, DISKS_DIR)

    def host_lock(self):
        return file_lock(self.host_dir)

    def vm_lock(self, vm_id):
        return file_lock(self.vm_dir(vm_id))

    def read_host(self):
        return read_json(self.host_file)

    def write_host(self, document):
        write_json_atomic(self.host_file, document)

    def read_vm(self, vm_id):
        return read_json(self.vm_file(vm_id))

    def write_vm(self, document):
        write_json_atomic(self.vm_file(document["id"]), document)

    def vm_ids(self):
        """Ids of the VMs whose vm.json exists (the directory is the truth; host.json indexes names)."""
        if not os.path.isdir(self.vms_dir):
            return []
        return sorted(name for name in os.listdir(self.vms_dir) if os.path.isfile(self.vm_file(name)))


def host_document(name, era="2022", cluster=None, csvs=None, hardware_vss_provider=False, locale="en-US",
                  clock_offset_seconds=0, quirks=None):
    """A fresh host.json for a host of ``era``.

    ``locale`` is the host's language (what it localises, see lab_locale); ``clock_offset_seconds`` skews the
    host's clock against real time (lab_files.host_now); ``quirks`` see QUIRKS.
    """
    if era not in ERAS:
        raise ValueError("unknown lab host era %r; choose one of %s" % (era, ", ".join(sorted(ERAS))))
    if locale not in LOCALES:
        raise ValueError("unknown lab host locale %r; choose one of %s" % (locale, ", ".join(LOCALES)))
    services = dict((key, dict(value)) for key, value in SERVICE_DEFAULTS.items())
    return {
        "format": STATE_FORMAT,
        "name": name,
        "era": era,
        "cluster": cluster,
        "csvs": list(csvs or []),
        "hardware_vss_provider": bool(hardware_vss_provider),
        "services": services,
        "faults": [],
        "locale": locale,
        "clock_offset_seconds": clock_offset_seconds,
        "quirks": [validate_quirk(item) for item in quirks or []],
        "vms": {},
        "created": utc_now(),
    }


def cluster_fact(host_doc):
    """The cluster part of get_host_info: {name, functional_level} or None."""
    cluster = host_doc.get("cluster")
    if not cluster:
        return None
    level = cluster.get("functional_level")
    if level is None:
        level = ERAS[host_doc["era"]]["cluster_level"]
    return {"name": cluster["name"], "functional_level": int(level)}


def csv_facts(host_doc):
    """CSVs as get_host_info reports them; names follow the cluster's 'Cluster Disk N' habit."""
    return [{"name": "Cluster Disk %d" % (index + 1), "path": path} for index, path in enumerate(host_doc.get("csvs", []))]


def host_faults(host_doc, vm_doc=None):
    """Faults in effect for a host, or for one VM on it (host faults apply to every VM)."""
    faults = set(host_doc.get("faults", []))
    if vm_doc is not None:
        faults.update(vm_doc.get("faults", []))
    return faults
