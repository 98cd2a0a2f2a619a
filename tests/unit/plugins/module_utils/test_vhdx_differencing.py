"""Differencing VHDX chains made by our writer (qemu cannot make or read them): expected raw computed here."""
import os
import random
import shutil

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.errors import VirtualDiskError
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vdisk import (
    create_vhdx, disk_info, open_disk, open_vhdx_for_write)
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vhdx import VhdxImage
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vhdx_bat import (
    PAYLOAD_FULLY_PRESENT, PAYLOAD_PARTIALLY_PRESENT, PAYLOAD_ZERO)

from disk_helpers import MiB, assert_reads_match


def apply(expected, writer, offset, data):
    writer.write(offset, data)
    expected[offset:offset + len(data)] = data


def build_chain(directory, sector=512, size=24 * MiB, seed=1):
    """base + child1 + child2 with random writes; returns (paths, expected raw of the top)."""
    rnd = random.Random(seed)
    expected = bytearray(size)
    base, child1, child2 = (os.path.join(directory, name) for name in ("base.vhdx", "c1.avhdx", "c2.avhdx"))
    with create_vhdx(base, size, block_size=2 * MiB, logical_sector_size=sector) as writer:
        apply(expected, writer, 0, rnd.randbytes(size))
    for path, parent in ((child1, base), (child2, child1)):
        with create_vhdx(path, None, block_size=1 * MiB, logical_sector_size=sector, parent=parent) as writer:
            for _write in range(25):
                offset = rnd.randrange(0, size // sector) * sector
                apply(expected, writer, offset, rnd.randbytes(min(size - offset, rnd.randrange(1, 600) * sector)))
            apply(expected, writer, 3 * MiB, rnd.randbytes(MiB))          # one whole block
    return [child2, child1, base], expected


@pytest.mark.parametrize("sector", [512, 4096])
def test_chain_reads_parent_overlaid_with_children(tmp_path, sector):
    paths, expected = build_chain(str(tmp_path), sector=sector, seed=sector)
    with open_disk(paths[0]) as disk:
        assert disk.chain == paths
        assert disk.logical_sector_size == sector
        assert_reads_match(disk, expected, seed=sector, count=250)
        assert disk.allocated_ranges() == [(0, len(expected))]
    image = VhdxImage(paths[0])
    try:
        states = set(image.block_entry(b) & 7 for b in range(image.block_count))
    finally:
        image.close()
    assert PAYLOAD_PARTIALLY_PRESENT in states and PAYLOAD_FULLY_PRESENT in states
    info = disk_info(paths[0])
    assert info["type"] == "differencing" and info["parent_path"] == paths[1]
    assert info["parent_locator"]["parent_linkage"] == "{%s}" % disk_info(paths[1])["data_write_guid"]


def test_zero_block_in_child_reads_zeros(tmp_path):
    base = str(tmp_path / "b.vhdx")
    child = str(tmp_path / "c.avhdx")
    with create_vhdx(base, 4 * MiB, block_size=1 * MiB) as writer:
        writer.write(0, b"\xcd" * (4 * MiB))
    create_vhdx(child, None, block_size=1 * MiB, parent=base).close()
    image = VhdxImage(child, writable=True)      # mark block 1 ZERO (as Hyper-V does after a trim)
    bat_offset = [o for g, (o, _l) in image.regions.items() if str(g).startswith("2dc27766")][0]
    os.pwrite(image.fd, (PAYLOAD_ZERO).to_bytes(8, "little"), bat_offset + 8)
    image.close()
    with open_disk(child) as disk:
        assert disk.read(0, 2 * MiB) == b"\xcd" * MiB + bytes(MiB)
        assert disk.allocated_ranges() == [(0, MiB), (2 * MiB, 2 * MiB)]
    with open_vhdx_for_write(child) as writer:      # a partial write into a ZERO block keeps the rest zero
        writer.write(MiB + 512, b"\x01" * 512)
    with open_disk(child) as disk:
        assert disk.read(MiB, 1024) == bytes(512) + b"\x01" * 512
        assert disk.read(MiB + 1024, MiB - 1024) == bytes(MiB - 1024)


def test_parent_found_by_name_and_search_paths(tmp_path):
    paths, expected = build_chain(str(tmp_path), size=6 * MiB)
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.move(paths[2], moved / "base.vhdx")
    with pytest.raises(VirtualDiskError, match="parent disk was not found") as err:
        open_disk(paths[0])
    assert "search_paths" in str(err.value)
    with open_disk(paths[0], search_paths=[str(moved)]) as disk:
        assert disk.chain[-1] == str(moved / "base.vhdx")
        assert_reads_match(disk, expected, count=40)


def test_linkage_mismatch_raises(tmp_path):
    paths, _expected = build_chain(str(tmp_path), size=6 * MiB)
    with open_vhdx_for_write(paths[1]) as writer:     # changing the parent breaks the child's linkage
        writer.write(0, b"\x00" * 512)
    with pytest.raises(VirtualDiskError, match="parent linkage mismatch") as err:
        open_disk(paths[0])
    assert paths[0] in str(err.value) and "DataWriteGuid" in str(err.value)


def test_child_needs_same_sector_size(tmp_path):
    base = str(tmp_path / "b.vhdx")
    create_vhdx(base, 4 * MiB, logical_sector_size=4096).close()
    with pytest.raises(VirtualDiskError, match="logical sector"):
        create_vhdx(str(tmp_path / "c.avhdx"), None, parent=base)


def test_partial_writes_across_a_sector_bitmap_chunk(tmp_path):
    """With 512-byte sectors and 1 MiB blocks a bitmap chunk is 4 GiB: writes around 4 GiB use two bitmaps."""
    size = 6 * 1024 * MiB
    edge = 4 * 1024 * MiB
    base = str(tmp_path / "big.vhdx")
    child = str(tmp_path / "big.avhdx")
    window = bytearray(b"\xaa" * (4 * MiB))             # the base's data over [edge - 2 MiB, edge + 2 MiB)
    with create_vhdx(base, size, block_size=1 * MiB) as writer:
        writer.write(edge - 2 * MiB, bytes(window))
    with create_vhdx(child, None, block_size=1 * MiB, parent=base) as writer:
        writer.write(edge - 1024, b"\x01" * 2048)             # straddles the chunk edge
        writer.write(edge + 512 * 7, b"\x02" * 512)
        writer.write(edge - MiB, b"\x03" * 512)
    for offset, data in ((edge - 1024, b"\x01" * 2048), (edge + 512 * 7, b"\x02" * 512), (edge - MiB, b"\x03" * 512)):
        start = offset - (edge - 2 * MiB)
        window[start:start + len(data)] = data
    with open_disk(child) as disk:
        assert disk.read(edge - 2 * MiB, 4 * MiB) == bytes(window)
        assert disk.read(0, MiB) == bytes(MiB) and disk.read(size - MiB, MiB) == bytes(MiB)
        assert disk.allocated_ranges() == [(edge - 2 * MiB, 4 * MiB)]
    image = VhdxImage(child)
    try:
        present = [c for c in range(2) if image.bat[c * (image.chunk_ratio + 1) + image.chunk_ratio] & 7 == 6]
    finally:
        image.close()
    assert present == [0, 1]


def test_partial_writes_that_fill_a_block_make_it_fully_present(tmp_path):
    base = str(tmp_path / "b.vhdx")
    child = str(tmp_path / "c.avhdx")
    with create_vhdx(base, 2 * MiB, block_size=1 * MiB) as writer:
        writer.write(0, b"\x0b" * (2 * MiB))
    with create_vhdx(child, None, block_size=1 * MiB, parent=base) as writer:
        writer.write(0, b"\x0c" * (MiB // 2))
        writer.write(MiB // 2, b"\x0d" * (MiB // 2))
        writer.write(MiB, b"\x0e" * 4096)
    image = VhdxImage(child)
    try:
        assert [image.block_entry(b) & 7 for b in range(2)] == [PAYLOAD_FULLY_PRESENT, PAYLOAD_PARTIALLY_PRESENT]
    finally:
        image.close()
    with open_disk(child) as disk:
        assert disk.read(0, 2 * MiB) == b"\x0c" * (MiB // 2) + b"\x0d" * (MiB // 2) + b"\x0e" * 4096 + b"\x0b" * (MiB - 4096)
