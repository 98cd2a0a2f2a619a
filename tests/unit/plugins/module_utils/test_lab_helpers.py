"""Shared helpers of the lab host tests (no tests here): build a lab host and model what the guest wrote."""
from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_admin
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_disks import churn_data
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_host import LabTransport
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import LabLayout
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vdisk import open_disk

MiB = 1024 * 1024
SMALL_DISK = 64 * MiB
TAG = "hyperv.backup:test-run"


def build_host(lab_dir, host="hv01", era="2022", vms=("web01",), disks=1, size=SMALL_DISK, vss="Running", **host_options):
    """A lab host with running VMs of ``disks`` empty disks each; returns (layout, transport, {name: vm_id})."""
    layout = LabLayout(str(lab_dir), host)
    lab_admin.ensure_host(layout, era=era, services={"vss": vss}, **host_options)
    ids = {}
    for name in vms:
        spec = name if isinstance(name, dict) else {"name": name}
        spec.setdefault("disks", [{"size": size} for _index in range(disks)])
        _changed, vm = lab_admin.ensure_vm(layout, spec)
        ids[spec["name"]] = vm["id"]
    return layout, LabTransport(str(lab_dir), host), ids


class GuestModel:
    """What a disk should read back: a bytearray the same churns are applied to."""

    def __init__(self, size):
        self.data = bytearray(size)

    def apply(self, churned):
        for index, write in enumerate(churned["writes"]):
            offset, length = write["offset"], write["length"]
            self.data[offset:offset + length] = churn_data(churned["seed"], index, length)
        return self

    def copy(self):
        twin = GuestModel(0)
        twin.data = bytearray(self.data)
        return twin


def read_all(path, transport=None):
    """Every byte of a disk; with ``transport``, ``path`` is a Windows path the lab host reported (mapped to its file)."""
    if transport is not None:
        path = transport.local(path)
    with open_disk(path) as disk:
        return disk.read(0, disk.virtual_size)


def granule_ranges(writes, granule=64 * 1024, size=None):
    """The writes rounded out to the lab's RCT granularity and merged: what get_disk_changes must report."""
    spans = sorted((w["offset"] // granule * granule, -(-(w["offset"] + w["length"]) // granule) * granule) for w in writes)
    merged = []
    for start, stop in spans:
        if size is not None:
            stop = min(stop, size)
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], stop)
        else:
            merged.append([start, stop])
    return [(start, stop - start) for start, stop in merged]


def all_changes(transport, path, limit_id, size):
    """Page through get_disk_changes like a backup does; returns ([(offset, length)], pages)."""
    offset, ranges, pages = 0, [], 0
    while offset < size:
        params = {"path": path, "limit_id": limit_id, "byte_offset": offset, "byte_length": size - offset}
        page = transport.run("get_disk_changes", params)
        assert page["processed_byte_length"] > 0
        ranges.extend(zip(page["changed_byte_offsets"], page["changed_byte_lengths"]))
        offset += page["processed_byte_length"]
        pages += 1
    merged = []
    for start, length in ranges:   # a range may continue across a page edge
        if merged and merged[-1][0] + merged[-1][1] == start:
            merged[-1][1] += length
        else:
            merged.append([start, length])
    return [tuple(item) for item in merged], pages
