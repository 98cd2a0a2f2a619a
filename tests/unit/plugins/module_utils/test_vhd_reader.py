"""VHD reader: qemu-made fixed/dynamic files and hand-built differencing chains."""
import os
import random

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.errors import VirtualDiskError
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vdisk import disk_info, open_disk

from disk_helpers import (
    MiB, assert_ranges_cover, assert_reads_match, make_vhd, needs_qemu, qemu_to_raw, random_image, run, write_file)


@needs_qemu
@pytest.mark.parametrize("subformat", ["dynamic", "fixed"])
def test_qemu_vpc_reads_back(tmp_path, subformat):
    size = 30 * MiB + 512 * 5
    source = random_image(size, seed=11, extents=8)
    write_file(tmp_path / "s.raw", source)
    path = tmp_path / "d.vhd"
    run("qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", "subformat=%s,force_size=on" % subformat, tmp_path / "s.raw", path)
    assert qemu_to_raw(path, tmp_path / "back.raw", fmt="vpc") == bytes(source)
    with open_disk(path) as disk:
        assert disk.virtual_size == size
        assert_reads_match(disk, source, seed=2, count=150)
        assert_ranges_cover(disk.allocated_ranges(), source)
    info = disk_info(path)
    assert (info["format"], info["type"], info["virtual_size"]) == ("vhd", subformat, size)


def test_differencing_vhd_chain(tmp_path):
    rnd = random.Random(5)
    size = 8 * MiB
    block = 2 * MiB
    base_data = [rnd.randbytes(block) for _block in range(4)]
    base = str(tmp_path / "base.vhd")
    base_id = make_vhd(base, size, {0: (None, base_data[0]), 1: (None, base_data[1]), 3: (None, base_data[3])})
    # Child: block 1 has sectors 0-7 and 9 from the child (MSB-first bitmap), block 2 fully from the child.
    bitmap = bytearray(block // 512 // 8)
    bitmap[0] = 0xFF
    bitmap[1] = 0x40
    child_block1 = rnd.randbytes(block)
    child_block2 = rnd.randbytes(block)
    child = str(tmp_path / "child.vhd")
    make_vhd(child, size, {1: (bytes(bitmap), child_block1), 2: (None, child_block2)},
             parent=(base, base_id, ".\\base.vhd"))
    expected = bytearray(base_data[0] + base_data[1] + bytes(block) + base_data[3])
    expected[block:block + 8 * 512] = child_block1[:8 * 512]
    expected[block + 9 * 512:block + 10 * 512] = child_block1[9 * 512:10 * 512]
    expected[2 * block:3 * block] = child_block2
    with open_disk(child) as disk:
        assert disk.chain == [child, base]
        assert_reads_match(disk, expected, seed=9, count=150)
        assert disk.allocated_ranges() == [(0, size)]
    assert disk_info(child)["parent_path"] == base


def test_differencing_vhd_wrong_parent_and_missing(tmp_path):
    base = str(tmp_path / "base.vhd")
    make_vhd(base, 4 * MiB, {})
    child = str(tmp_path / "child.vhd")
    import uuid
    make_vhd(child, 4 * MiB, {}, parent=(base, uuid.uuid4(), ".\\base.vhd"))
    with pytest.raises(VirtualDiskError, match="ParentUniqueId"):
        open_disk(child)
    os.unlink(base)
    with pytest.raises(VirtualDiskError, match="not found"):
        open_disk(child)


def test_bad_footer_checksum(tmp_path):
    path = str(tmp_path / "d.vhd")
    make_vhd(path, 4 * MiB, {})
    size = os.path.getsize(path)
    for offset in (size - 512 + 70, 70):      # both footer copies
        with open(path, "r+b") as handle:
            handle.seek(offset)
            handle.write(b"\x99")
    with pytest.raises(VirtualDiskError, match="checksum"):
        open_disk(path)
