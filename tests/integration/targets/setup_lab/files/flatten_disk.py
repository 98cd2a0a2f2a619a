"""Test helper: write a virtual disk (VHDX/AVHDX/VHD with its whole chain) out as a raw image.

Usage: python flatten_disk.py SOURCE OUTPUT.raw [HOST] -- the integration tests keep the VM's disk state at each
backup this way and compare restores against it with qemu-img compare. A SOURCE that is a Windows path (what a
lab host reports, e.g. C:\\Hyper-V\\<vm id>\\...) is read from the lab file behind it on lab host HOST, in the lab
directory of $HYPERV_LAB_DIRECTORY.
"""
import os
import re
import sys

from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_host import LabTransport
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


def local_path(source, host=None):
    if not re.match(r"^[A-Za-z]:\\", source):
        return source
    if not host or not os.environ.get("HYPERV_LAB_DIRECTORY"):
        sys.exit("flatten_disk.py: %s is a Windows path: give the lab host (3rd argument) and HYPERV_LAB_DIRECTORY" % source)
    return LabTransport(os.environ["HYPERV_LAB_DIRECTORY"], host).local(source)


if __name__ == "__main__":
    print(flatten(local_path(sys.argv[1], sys.argv[3] if len(sys.argv) > 3 else None), sys.argv[2]))
