# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab host's virtual disk files: real VHDX or VHD files written through ``vdisk.py``.

Creating base disks (empty, seeded fill, or copied in from a user's image), guest writes (churn)
into the VM's current file, checkpoint children (.avhdx over a VHDX parent, .avhd over a VHD one, as
Hyper-V names them), merging a child back into its parent, and growing a disk. Every function works
on either format: new base disks get the format their file name says (the era decides the name),
children and grown copies keep their parent's format. No locking and no JSON here: ``lab_host.py`` calls these while
it holds the VM's lock and records what they return.

Guest data is deterministic: write number ``i`` of a churn with seed ``s`` is ``churn_data(s, i, n)``,
so tests can regenerate and compare what the guest wrote.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import copy
import os
import random
import shutil
import time

from ansible_collections.hyperv.backup.plugins.module_utils.errors import VirtualDiskError
from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_state
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vdisk import (
    MAX_CHAIN_DEPTH, create_disk, disk_info, open_disk, open_disk_for_write)

MIB = 1024 * 1024
# File name extensions Hyper-V gives base disks and checkpoint children of each format.
BASE_EXTENSIONS = {"vhdx": ".vhdx", "vhd": ".vhd"}
CHILD_EXTENSIONS = {"vhdx": ".avhdx", "vhd": ".avhd"}
# Guest writes start on 4 KiB boundaries, as a file system in the guest issues them.
WRITE_ALIGNMENT = 4096
FILL_CHUNK = MIB
COPY_CHUNK = 4 * MIB


def churn_data(seed, index, length):
    """The bytes of write ``index`` of a churn seeded with ``seed`` (never all zeros)."""
    data = bytearray(random.Random("%s/%d" % (seed, index)).randbytes(length))
    data[0] |= 1  # a zero-filled write would be indistinguishable from unallocated space
    return bytes(data)


def plan_writes(seed, writes, write_size, virtual_size, offsets=None):
    """[(offset, length)] of a churn: the given offsets, or ``writes`` seeded random aligned ones."""
    if offsets is not None:
        planned = [(int(offset), int(write_size)) for offset in offsets]
    else:
        rng = random.Random("offsets/%s" % (seed,))
        slots = max(1, (virtual_size - write_size) // WRITE_ALIGNMENT + 1)
        planned = [(rng.randrange(slots) * WRITE_ALIGNMENT, int(write_size)) for _index in range(writes)]
    for offset, length in planned:
        if offset < 0 or length <= 0 or offset + length > virtual_size:
            raise ValueError("write of %d bytes at offset %d does not fit a disk of %d bytes" % (length, offset, virtual_size))
    return planned


# Characters no Windows file name may hold (a VM name may): Hyper-V Manager / New-VHD would refuse such a disk name,
# and the lab's host files refuse them too (lab_files), so disk files are named with them replaced.
_NOT_IN_WINDOWS_FILE_NAMES = set('<>:"|?*/\\') | set(chr(code) for code in range(32))


def disk_file_stem(vm_name):
    """The VM name as it can appear in a Windows file name: invalid characters become '_'."""
    return "".join("_" if c in _NOT_IN_WINDOWS_FILE_NAMES else c for c in str(vm_name))


def base_disk_path(disks_dir, vm_name, index, disk_format):
    """Where the lab creates the VM's ``index``-th disk in ``disk_format`` ('vhdx' or 'vhd')."""
    return os.path.join(disks_dir, "%s_disk%d%s" % (disk_file_stem(vm_name), index, BASE_EXTENSIONS[disk_format]))


def child_disk_path(base_path, parent_path, checkpoint_id):
    """The checkpoint child's name: ``<base stem>_<CHECKPOINT ID>.avhdx`` (or ``.avhd`` over a VHD parent)."""
    stem = os.path.splitext(os.path.basename(base_path))[0]
    extension = CHILD_EXTENSIONS[disk_info(parent_path)["format"]]
    return os.path.join(os.path.dirname(base_path), "%s_%s%s" % (stem, checkpoint_id.upper(), extension))


def create_base_disk(path, virtual_size, block_size=None, logical_sector_size=512):
    """An empty dynamic VHDX or VHD (as the extension of ``path`` says) at ``path``, owner-only.

    ``block_size`` None is the format's default (VHDX 32 MiB, VHD 2 MiB, what Hyper-V uses).
    """
    writer = create_disk(path, virtual_size, block_size=block_size, logical_sector_size=logical_sector_size)
    writer.close()
    os.chmod(path, 0o600)
    return path


def write_ranges(path, seed, planned, first_index=0):
    """Write churn data for each planned (offset, length) into the disk file (VHDX or VHD) at ``path``."""
    writer = open_disk_for_write(path)
    try:
        for index, (offset, length) in enumerate(planned, first_index):
            writer.write(offset, churn_data(seed, index, length))
        writer.flush()
    finally:
        writer.close()
    return planned


def fill_plan(seed, percent, virtual_size):
    """1 MiB chunks covering ``percent`` of the disk, picked by ``seed``."""
    chunks = virtual_size // FILL_CHUNK
    count = int(chunks * float(percent) / 100.0)
    picked = sorted(random.Random("fill/%s" % (seed,)).sample(range(chunks), count)) if count else []
    return [(chunk * FILL_CHUNK, FILL_CHUNK) for chunk in picked]


def copy_in(source, destination):
    """Copy a user's VHDX/VHD into the lab (owner-only), checking first that it opens as a disk."""
    with open_disk(source) as disk:
        if len(disk.chain) > 1:
            raise ValueError("%s is a differencing disk over %s; copy in a merged (standalone) image"
                             % (source, disk.chain[1]))
    shutil.copyfile(source, destination)
    os.chmod(destination, 0o600)
    return destination


# describe() answers per process from here while no file of the chain changed (inode, size, mtime, ctime; remembered
# only once the files have settled): one backup asks for the facts of each disk a dozen times.
_DESCRIBED = {}


def _file_key(path):
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _settled(keys):
    """True when no file of ``keys`` changed within the last moments (lab_state's "racy" rule): a later write then
    carries a later time, so a remembered answer cannot hide it."""
    return all(max(key[3], key[4]) < time.time_ns() - lab_state.SETTLED_NS for _path, key in keys)


def _chain(path, facts):
    """The files of the differencing chain from ``path`` up, found from each file's metadata (no BAT is read)."""
    chain, seen = [path], {os.path.realpath(path)}
    while facts.get("parent_path"):
        parent = facts["parent_path"]
        if os.path.realpath(parent) in seen or len(chain) >= MAX_CHAIN_DEPTH:
            raise VirtualDiskError(path, "the differencing chain loops or is deeper than %d files" % MAX_CHAIN_DEPTH)
        chain.append(parent)
        seen.add(os.path.realpath(parent))
        facts = disk_info(parent)
    if facts.get("type") == "differencing":
        raise VirtualDiskError(chain[-1], "the parent disk was not found")
    return chain


def describe(path):
    """Facts of the disk file at ``path`` read from the file itself: format, type, sizes, disk_id, chain."""
    known = _DESCRIBED.get(path)
    try:
        if known is not None and all(_file_key(member) == key for member, key in known[0]):
            return copy.deepcopy(known[1])
    except OSError:
        pass
    facts = disk_info(path)
    facts["chain"] = _chain(path, facts)
    facts["disk_id"] = facts["disk_id"].lower()
    try:
        keys = [(member, _file_key(member)) for member in facts["chain"]]
        if _settled(keys):
            _DESCRIBED[path] = (keys, copy.deepcopy(facts))
    except OSError:
        _DESCRIBED.pop(path, None)
    return facts


def create_child(parent_path, child_path):
    """A differencing child (in the parent's format) over the now frozen ``parent_path``; the VM writes there from now on."""
    parent = disk_info(parent_path)         # sizes from the metadata: a 64 TiB parent's BAT is not read
    virtual_size, sector, block_size = parent["virtual_size"], parent["logical_sector_size"], parent["block_size"]
    create_disk(child_path, virtual_size, block_size=block_size, logical_sector_size=sector, parent=parent_path,
                open_writer=False)
    os.chmod(child_path, 0o600)
    return child_path


def merge_child(child_path, parent_path, ranges):
    """Copy what the guest wrote into ``child_path`` (the given ranges) into its parent, then delete the child.

    Reading through the child gives the child's data over the parent's, so copying whole ranges is
    exact even where the child holds only some sectors of a range.
    """
    writer = open_disk_for_write(parent_path)
    try:
        with open_disk(child_path) as child:
            for offset, length in ranges:
                position, end = offset, offset + length
                while position < end:
                    step = min(COPY_CHUNK, end - position)
                    writer.write(position, child.read(position, step))
                    position += step
        writer.flush()
    finally:
        writer.close()
    os.unlink(child_path)


def grow(path, new_size):
    """Give the disk at ``path`` a larger virtual size (a new file with the same data, renamed over)."""
    temp = path + ".resize-tmp"
    with open_disk(path) as disk:
        if len(disk.chain) > 1:
            raise ValueError("%s has checkpoints (differencing children); remove them before resizing" % path)
        if new_size < disk.virtual_size:
            raise ValueError("cannot shrink %s from %d to %d bytes; the lab only grows disks" % (path, disk.virtual_size, new_size))
        writer = create_disk(temp, new_size, block_size=disk.block_size, logical_sector_size=disk.logical_sector_size,
                             disk_format=disk.format)
        try:
            for offset, length in disk.allocated_ranges():
                position, end = offset, offset + length
                while position < end:
                    step = min(COPY_CHUNK, end - position)
                    data = disk.read(position, step)
                    if data.count(0) != len(data):
                        writer.write(position, data)
                    position += step
            writer.flush()
        finally:
            writer.close()
    os.chmod(temp, 0o600)
    os.replace(temp, path)
