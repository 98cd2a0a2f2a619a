"""vdisk API behaviour: format detection, disk_info, chain guards, buffers and closing."""
import os
import uuid

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.errors import VirtualDiskError
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vdisk import create_vhdx, disk_info, open_disk
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vhdx import VhdxImage
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vhdx_format import HEADER_OFFSETS, build_header

from disk_helpers import MiB


def test_missing_file_names_path(tmp_path):
    path = str(tmp_path / "nope.vhdx")
    with pytest.raises(VirtualDiskError, match="cannot open") as err:
        open_disk(path)
    assert err.value.details()["path"] == path and err.value.hint


def test_disk_info_and_readinto(tmp_path):
    path = str(tmp_path / "a.vhdx")
    with create_vhdx(path, 6 * MiB, block_size=2 * MiB, physical_sector_size=512) as writer:
        writer.write(2 * MiB, b"\x07" * 4096)
    info = disk_info(path)
    assert info["format"] == "vhdx" and info["type"] == "dynamic" and info["virtual_size"] == 6 * MiB
    assert info["block_size"] == 2 * MiB and info["physical_sector_size"] == 512 and info["parent_path"] is None
    assert uuid.UUID(info["disk_id"]) and uuid.UUID(info["data_write_guid"])
    disk = open_disk(path)
    buf = bytearray(8192)
    disk.readinto(2 * MiB - 4096, memoryview(buf))
    assert buf == bytes(4096) + b"\x07" * 4096
    assert disk.allocated_ranges() == [(2 * MiB, 2 * MiB)]
    disk.close()
    disk.close()
    with pytest.raises(VirtualDiskError, match="after close"):
        disk.read(0, 1)


def test_parent_cycle_is_refused(tmp_path):
    base = str(tmp_path / "base.vhdx")
    child = str(tmp_path / "c.avhdx")
    create_vhdx(base, 4 * MiB, block_size=1 * MiB).close()
    create_vhdx(child, None, block_size=1 * MiB, parent=base).close()
    image = VhdxImage(child)
    linkage = uuid.UUID(image.parent_locator["parent_linkage"].strip("{}"))
    header = image.header
    image.close()
    with open(child, "r+b") as handle:     # the child claims to be its own parent
        for sequence, offset in enumerate(HEADER_OFFSETS, start=header.sequence + 1):
            handle.seek(offset)
            handle.write(build_header(sequence, uuid.uuid4(), linkage, uuid.UUID(int=0), header.log_offset, header.log_length))
    os.unlink(base)
    os.rename(child, base)
    with pytest.raises(VirtualDiskError, match="loops back"):
        open_disk(base)


def test_smaller_parent_reads_zeros_beyond_its_end(tmp_path):
    base = str(tmp_path / "base.vhdx")
    child = str(tmp_path / "c.avhdx")
    with create_vhdx(base, 2 * MiB, block_size=1 * MiB) as writer:
        writer.write(0, b"\x09" * (2 * MiB))
    create_vhdx(child, 4 * MiB, block_size=1 * MiB, parent=base).close()
    with open_disk(child) as disk:
        assert disk.virtual_size == 4 * MiB
        assert disk.read(MiB, 2 * MiB) == b"\x09" * MiB + bytes(MiB)
        assert disk.allocated_ranges() == [(0, 2 * MiB)]
