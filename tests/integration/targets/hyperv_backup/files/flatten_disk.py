"""Test helper: write a virtual disk (VHDX/AVHDX/VHD with its whole chain) out as a raw image.

Usage: python flatten_disk.py SOURCE OUTPUT.raw -- the integration tests keep the VM's disk state at each
backup this way and compare restores against it with qemu-img compare.
"""
import sys

from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vdisk import open_disk

STEP = 4 * 1024 * 1024


def flatten(source, output):
    with open_disk(source) as disk, open(output, "wb") as out:
        out.truncate(disk.virtual_size)
        for offset, length in disk.allocated_ranges():
            end = offset + length
            while offset < end:
                piece = min(STEP, end - offset)
                out.seek(offset)
                out.write(disk.read(offset, piece))
                offset += piece
        return disk.virtual_size


if __name__ == "__main__":
    print(flatten(sys.argv[1], sys.argv[2]))
