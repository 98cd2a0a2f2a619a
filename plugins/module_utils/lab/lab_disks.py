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

import os
import random
import shutil

from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vdisk import create_disk, disk_info, open_disk, open_disk_for_write

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
    with open_disk(parent_path) as parent:
        extension = CHILD_EXTENSIONS[parent.format]
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


def describe(path):
    """Facts of the disk file at ``path`` read from the file itself: format, type, sizes, disk_id, chain."""
    facts = disk_info(path)
    with open_disk(path) as disk:
        facts["chain"] = list(disk.chain)
    facts["disk_id"] = facts["disk_id"].lower()
    return facts


def create_child(parent_path, child_path):
    """A differencing child (in the parent's format) over the now frozen ``parent_path``; the VM writes there from now on."""
    with open_disk(parent_path) as parent:
        virtual_size, sector = parent.virtual_size, parent.logical_sector_size
        block_size = parent.block_size
    writer = create_disk(child_path, virtual_size, block_size=block_size, logical_sector_size=sector, parent=parent_path)
    writer.close()
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
