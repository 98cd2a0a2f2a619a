"""VHD writer: qemu-img (format vpc) is the oracle for dynamic files; our reader checks differencing chains."""
import os
import random
import struct

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.errors import VirtualDiskError
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vdisk import (
    create_disk, create_vhd, disk_info, open_disk, open_disk_for_write, open_vhd_for_write, write_vhd_from)
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vhd import VhdImage, vhd_checksum
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vhd_writer import chs_geometry, vhd_timestamp

from disk_helpers import MiB, assert_ranges_cover, assert_reads_match, needs_qemu, qemu_info, qemu_to_raw, random_image, run, write_file


def read_back(path):
    with open_disk(path) as disk:
        return disk.read(0, disk.virtual_size)


def random_writes(writer, expected, rnd, count, max_sectors=5000):
    size = len(expected)
    for _write in range(count):
        offset = rnd.randrange(0, size // 512) * 512
        data = rnd.randbytes(min(size - offset, rnd.randrange(1, max_sectors) * 512))
        writer.write(offset, data)
        expected[offset:offset + len(data)] = data


@needs_qemu
@pytest.mark.parametrize("size, block_size", [(45 * MiB + 7 * 512, 2 * MiB), (16 * MiB, 2 * MiB), (3 * MiB + 512, 512 * 1024),
                                              (9 * MiB, 8 * MiB)])
def test_write_vhd_from_is_what_qemu_reads(tmp_path, size, block_size):
    source = random_image(size, seed=size)
    raw = tmp_path / "src.raw"
    write_file(raw, source)
    out = tmp_path / "out.vhd"
    result = write_vhd_from(out, lambda o, n: bytes(source[o:o + n]), size, block_size=block_size)
    assert not os.path.exists(str(out) + ".partial")
    nonzero_blocks = [o for o in range(0, size, block_size) if any(source[o:o + block_size])]
    assert result["allocated_bytes"] == sum(min(block_size, size - o) for o in nonzero_blocks)
    info = qemu_info(out, fmt="vpc")
    assert info["virtual-size"] == size                 # from Current Size, not the CHS geometry
    assert info["cluster-size"] == block_size
    assert qemu_to_raw(out, tmp_path / "back.raw", fmt="vpc") == bytes(source)
    compared = run("qemu-img", "compare", "-f", "vpc", "-F", "raw", out, raw, check=False)
    assert compared.returncode == 0, compared.stdout + compared.stderr
    with open_disk(out) as disk:
        assert disk.virtual_size == size and disk.format == "vhd"
        assert_reads_match(disk, source, seed=2, count=60)
        assert_ranges_cover(disk.allocated_ranges(), source)


def test_footer_header_fields(tmp_path):
    path = tmp_path / "f.vhd"
    size = 127 * MiB + 512
    create_vhd(path, size).close()
    with open(path, "rb") as handle:
        data = handle.read()
    head, tail = data[:512], data[-512:]
    assert head == tail and head[:8] == b"conectix"
    assert vhd_checksum(tail, 64) == struct.unpack_from(">I", tail, 64)[0]
    assert struct.unpack_from(">Q", tail, 16)[0] == 512           # data offset -> dynamic header
    assert struct.unpack_from(">QQ", tail, 40) == (size, size)      # original and current size
    assert struct.unpack_from(">HBB", tail, 56) == chs_geometry(size)
    assert tail[28:32] == b"win " and struct.unpack_from(">I", tail, 60)[0] == 3
    assert abs(struct.unpack_from(">I", tail, 24)[0] - vhd_timestamp()) < 60
    header = data[512:1536]
    assert header[:8] == b"cxsparse" and vhd_checksum(header, 36) == struct.unpack_from(">I", header, 36)[0]
    assert struct.unpack_from(">QQIII", header, 8) == (0xFFFFFFFFFFFFFFFF, 1536, 0x00010000, 64, 2 * MiB)
    assert data[1536:1536 + 256] == b"\xff" * 256                  # every block unallocated


# Worked by hand from the specification's algorithm (it truncates the cylinders; qemu-img create rounds
# them up so the geometry covers the size, hence one cylinder more there).
@pytest.mark.parametrize("size, expected", [
    (10 * MiB, (301, 4, 17)),                     # 20480 sectors: 17 per track, 1204 cyl*heads, 4 heads minimum
    (127 * MiB, (1019, 15, 17)),                  # 15299 cyl*heads -> 15 heads
    (1024 * MiB, (2080, 16, 63)),                 # 17 then 31 sectors overflow 1024 cylinders -> 63
    (127 * 1024 * MiB, (65278, 16, 255)),         # over 65535*16*63 sectors: 255 per track
    (2040 * 1024 * MiB, (65535, 16, 255)),        # capped at the largest geometry
])
def test_chs_geometry_follows_spec(size, expected):
    assert chs_geometry(size) == expected


@needs_qemu
def test_random_writes_across_sessions_match_qemu(tmp_path):
    size = 21 * MiB + 1536                          # last block is partial
    expected = bytearray(size)
    path = tmp_path / "rw.vhd"
    rnd = random.Random(11)
    create_vhd(path, size).close()
    for _session in range(3):
        with open_vhd_for_write(path) as writer:
            for _round in range(5):
                random_writes(writer, expected, rnd, 4)
                if rnd.random() < 0.5:
                    writer.flush()
    assert qemu_to_raw(path, tmp_path / "rw.raw", fmt="vpc") == bytes(expected)
    assert read_back(path) == bytes(expected)


@needs_qemu
@pytest.mark.parametrize("how", ["create", "convert", "convert-fixed"])
def test_qemu_made_vhd_takes_our_writes(tmp_path, how):
    size = 24 * MiB
    path = tmp_path / "q.vhd"
    expected = bytearray(size)
    if how == "create":
        run("qemu-img", "create", "-f", "vpc", "-o", "subformat=dynamic", path, size)
        size = qemu_info(path, fmt="vpc")["virtual-size"]        # qemu rounds to the CHS geometry
        expected = bytearray(size)
    else:
        expected[:] = random_image(size, seed=5)
        write_file(tmp_path / "src.raw", expected)
        subformat = "fixed" if how == "convert-fixed" else "dynamic"
        run("qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", "subformat=%s,force_size=on" % subformat, tmp_path / "src.raw", path)
    with open_disk_for_write(path) as writer:
        assert writer.format_name == "vhd"
        random_writes(writer, expected, random.Random(3), 25)
    assert qemu_to_raw(path, tmp_path / "back.raw", fmt="vpc") == bytes(expected)
    assert read_back(path) == bytes(expected)


def test_differencing_chain_overlays_child_writes(tmp_path):
    size = 10 * MiB + 512 * 5
    rnd = random.Random(8)
    base = tmp_path / "base.vhd"
    expected = bytearray(size)
    with create_vhd(base, size, block_size=1 * MiB) as writer:
        random_writes(writer, expected, rnd, 10)
    parent_bytes = bytes(expected)
    child = tmp_path / "vm_ABC.avhd"
    with create_disk(child, None, parent=base) as writer:        # the format follows the parent
        assert writer.format_name == "vhd" and writer.block_size == 1 * MiB
        random_writes(writer, expected, rnd, 12, max_sectors=300)
        writer.write(512 * 3, b"\x00" * 512)                     # written zeros hide the parent's data
        expected[512 * 3:512 * 4] = bytes(512)
    grandchild = tmp_path / "vm_DEF.avhd"
    with create_vhd(grandchild, None, parent=child) as writer:
        random_writes(writer, expected, rnd, 6, max_sectors=40)
    with open_disk(grandchild) as disk:
        assert disk.chain == [str(grandchild), str(child), str(base)]
        assert disk.read(0, size) == bytes(expected)
    assert read_back(base) == parent_bytes                        # the parent is untouched
    info = disk_info(child)
    assert info["type"] == "differencing" and info["parent_path"] == str(base)
    assert info["parent_locator"]["relative"] == ".\\base.vhd"
    assert info["parent_locator"]["absolute"] == str(base)
    child_image, base_image = VhdImage(child), VhdImage(base)
    try:
        assert child_image.parent_unique_id == base_image.unique_id and child_image.parent_name == "base.vhd"
    finally:
        child_image.close()
        base_image.close()
    header = child.read_bytes()[512:1536]
    assert header[576:580] == b"W2ku" and header[600:604] == b"W2ru"
    assert struct.unpack_from(">I", header, 56)[0] == vhd_timestamp(os.stat(base).st_mtime)   # parent time stamp


def test_reopened_child_keeps_parent_sectors(tmp_path):
    size = 4 * MiB
    base = tmp_path / "base.vhd"
    with create_vhd(base, size) as writer:
        writer.write(0, b"P" * size)
    child = tmp_path / "c.avhd"
    create_vhd(child, None, parent=base, parent_absolute_path="D:\\VMs\\base.vhd").close()
    with open_vhd_for_write(child) as writer:
        writer.write(4096 + 512, b"C" * 1024)
    with open_vhd_for_write(child) as writer:                    # second session, same block
        writer.write(8192, b"D" * 512)
    expected = bytearray(b"P" * size)
    expected[4608:5632] = b"C" * 1024
    expected[8192:8704] = b"D" * 512
    assert read_back(child) == bytes(expected)
    assert disk_info(child)["parent_locator"]["absolute"] == "D:\\VMs\\base.vhd"


def test_unflushed_new_block_is_invisible_and_file_stays_valid(tmp_path):
    """A crash after a block's data but before flush: the file opens and reads its last flushed state."""
    size = 8 * MiB
    path = tmp_path / "crash.vhd"
    with create_vhd(path, size) as writer:
        writer.write(0, b"A" * 512)
    writer = open_vhd_for_write(path)
    writer.write(6 * MiB, b"B" * 4096)        # allocates a new block; BAT not yet written
    snapshot = tmp_path / "snap.vhd"
    with open(path, "rb") as src, open(snapshot, "wb") as dst:
        dst.write(src.read())
    writer.close()
    expected = bytearray(size)
    expected[:512] = b"A" * 512
    assert read_back(snapshot) == bytes(expected)
    expected[6 * MiB:6 * MiB + 4096] = b"B" * 4096
    assert read_back(path) == bytes(expected)
    with open_vhd_for_write(snapshot) as again:                 # the crashed file still takes writes
        again.write(7 * MiB, b"C" * 512)
    expected[6 * MiB:6 * MiB + 4096] = bytes(4096)
    expected[7 * MiB:7 * MiB + 512] = b"C" * 512
    assert read_back(snapshot) == bytes(expected)


def test_bad_input_is_refused_without_damage(tmp_path):
    path = tmp_path / "x.vhd"
    with pytest.raises(VirtualDiskError, match="multiple of 512"):
        create_vhd(path, 1000)
    with pytest.raises(VirtualDiskError, match="block size"):
        create_vhd(path, MiB, block_size=3 * MiB)
    with pytest.raises(VirtualDiskError, match="2040 GiB"):
        create_vhd(path, 2041 * 1024 * MiB)
    assert not path.exists()
    create_vhd(path, MiB).close()
    before = path.read_bytes()
    with pytest.raises(VirtualDiskError, match="already exists"):
        create_vhd(path, MiB)
    with open_vhd_for_write(path) as writer:
        with pytest.raises(VirtualDiskError, match="aligned"):
            writer.write(100, b"x" * 512)
        with pytest.raises(VirtualDiskError, match="past the end"):
            writer.write(MiB - 512, b"x" * 1024)
    assert path.read_bytes() == before
    with pytest.raises(VirtualDiskError, match="512-byte sectors"):
        create_disk(tmp_path / "y.vhd", MiB, logical_sector_size=4096)
    with pytest.raises(VirtualDiskError, match="cannot tell"):
        create_disk(tmp_path / "y.img", MiB)


def test_fixed_vhd_takes_writes(tmp_path):
    size = 2 * MiB
    path = tmp_path / "fixed.vhd"
    source = create_vhd(tmp_path / "d.vhd", size)
    source.close()
    footer = (tmp_path / "d.vhd").read_bytes()[-512:]
    raw = bytearray(footer)
    struct.pack_into(">Q", raw, 16, 0xFFFFFFFFFFFFFFFF)
    struct.pack_into(">I", raw, 60, 2)
    struct.pack_into(">I", raw, 64, vhd_checksum(raw, 64))
    write_file(path, bytes(size) + bytes(raw))
    with open_disk_for_write(path) as writer:
        writer.write(512, b"F" * 1024)
    expected = bytearray(size)
    expected[512:1536] = b"F" * 1024
    assert read_back(path) == bytes(expected)


@needs_qemu
def test_qemu_reads_our_child_alone(tmp_path):
    """qemu's vpc driver does not follow VHD parents: it reads a child's own blocks whole and zeros elsewhere."""
    size = 6 * MiB
    base = tmp_path / "base.vhd"
    with create_vhd(base, size) as writer:
        writer.write(0, b"P" * size)
    child = tmp_path / "c.avhd"
    with create_vhd(child, None, parent=base) as writer:
        writer.write(512, b"C" * 512)
    seen_by_qemu = qemu_to_raw(child, tmp_path / "c.raw", fmt="vpc")
    assert seen_by_qemu[:512] == bytes(512) and seen_by_qemu[512:1024] == b"C" * 512
    assert seen_by_qemu[2 * MiB:] == bytes(size - 2 * MiB)
    with open_disk(child) as disk:                                # ours overlays the parent
        assert disk.read(0, 1536) == b"P" * 512 + b"C" * 512 + b"P" * 512


@needs_qemu
@pytest.mark.parametrize("size", [10 * MiB, 127 * MiB, 1024 * MiB, 3000000000])
def test_chs_geometry_differs_from_qemu_only_by_its_rounding_up(tmp_path, size):
    """qemu-img create picks the same sectors/heads and one cylinder more (it rounds up, the spec truncates)."""
    path = tmp_path / "g.vhd"
    run("qemu-img", "create", "-q", "-f", "vpc", "-o", "subformat=dynamic", path, size)
    cylinders, heads, sectors = struct.unpack_from(">HBB", path.read_bytes()[-512:], 56)
    assert chs_geometry(size) == (cylinders - 1, heads, sectors)
