"""VHDX writer: files must pass qemu-img check/compare and read back through our reader."""
import os
import random
import struct

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.errors import VirtualDiskError
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vdisk import (
    create_vhdx, disk_info, open_disk, open_vhdx_for_write, write_vhdx_from)
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vhdx import VhdxImage

from disk_helpers import MiB, assert_ranges_cover, assert_reads_match, needs_qemu, qemu_info, random_image, run, write_file


def qemu_accepts(vhdx, raw, size):
    assert run("qemu-img", "check", "-f", "vhdx", vhdx, check=False).returncode == 0
    result = run("qemu-img", "compare", "-f", "vhdx", "-F", "raw", vhdx, raw, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert qemu_info(vhdx)["virtual-size"] == size


@needs_qemu
@pytest.mark.parametrize("block_size", [1 * MiB, 8 * MiB, 32 * MiB])
def test_write_vhdx_from_matches_source(tmp_path, block_size):
    size = 45 * MiB + 7 * 512          # not a multiple of the block size
    source = random_image(size, seed=block_size)
    raw = tmp_path / "src.raw"
    write_file(raw, source)
    out = tmp_path / "out.vhdx"
    result = write_vhdx_from(out, lambda o, n: bytes(source[o:o + n]), size, block_size=block_size)
    assert not os.path.exists(str(out) + ".partial")
    nonzero_blocks = [o for o in range(0, size, block_size) if any(source[o:o + block_size])]
    assert result["allocated_bytes"] == sum(min(block_size, size - o) for o in nonzero_blocks)   # holes skipped
    qemu_accepts(out, raw, size)
    assert qemu_info(out)["cluster-size"] == block_size
    with open_disk(out) as disk:
        assert disk.virtual_size == size and disk.block_size == block_size
        assert_reads_match(disk, source, seed=1, count=60)
        assert_ranges_cover(disk.allocated_ranges(), source)


@needs_qemu
def test_random_writes_after_reopen_match_raw(tmp_path):
    size = 20 * MiB
    expected = bytearray(size)
    path = tmp_path / "rw.vhdx"
    rnd = random.Random(7)
    create_vhdx(path, size, block_size=1 * MiB).close()
    for session in range(3):
        with open_vhdx_for_write(path) as writer:
            for _write in range(15):
                offset = rnd.randrange(0, size // 512) * 512
                data = rnd.randbytes(min(size - offset, rnd.randrange(1, 5000) * 512))
                writer.write(offset, data)
                expected[offset:offset + len(data)] = data
                if rnd.random() < 0.3:
                    writer.flush()
                    assert run("qemu-img", "check", "-f", "vhdx", path, check=False).returncode == 0
    write_file(tmp_path / "rw.raw", expected)
    qemu_accepts(path, tmp_path / "rw.raw", size)
    with open_disk(path) as disk:
        assert_reads_match(disk, expected, seed=session)


@needs_qemu
def test_writes_into_qemu_made_file(tmp_path):
    size = 12 * MiB
    path = tmp_path / "q.vhdx"
    run("qemu-img", "create", "-f", "vhdx", "-o", "subformat=dynamic,block_size=2M", path, size)
    run("qemu-io", "-f", "vhdx", "-c", "write -P 0x11 1M 3M", path)
    expected = bytearray(size)
    expected[1 * MiB:4 * MiB] = b"\x11" * (3 * MiB)
    with open_vhdx_for_write(path) as writer:
        writer.write(3 * MiB, b"\x22" * (4 * MiB))
        writer.write(11 * MiB + 512, b"\x33" * 1024)
    expected[3 * MiB:7 * MiB] = b"\x22" * (4 * MiB)
    expected[11 * MiB + 512:11 * MiB + 1536] = b"\x33" * 1024
    write_file(tmp_path / "q.raw", expected)
    qemu_accepts(path, tmp_path / "q.raw", size)


def test_headers_bump_and_guids_change(tmp_path):
    path = tmp_path / "h.vhdx"
    create_vhdx(path, 4 * MiB, block_size=1 * MiB).close()
    before = VhdxImage(path)
    before.close()
    with open_vhdx_for_write(path) as writer:
        writer.write(0, b"\x01" * 512)
    after = VhdxImage(path)
    after.close()
    assert after.header.sequence > before.header.sequence
    assert after.header.data_write_guid != before.header.data_write_guid
    assert after.header.file_write_guid != before.header.file_write_guid
    assert after.other_header_valid


def test_4096_logical_sectors_read_back(tmp_path):
    size = 9 * MiB
    source = random_image(size, seed=3, extents=5)
    path = tmp_path / "s4k.vhdx"
    write_vhdx_from(path, lambda o, n: bytes(source[o:o + n]), size, block_size=1 * MiB, logical_sector_size=4096)
    info = disk_info(path)
    assert (info["logical_sector_size"], info["physical_sector_size"], info["type"]) == (4096, 4096, "dynamic")
    with open_disk(path) as disk:
        assert disk.logical_sector_size == 4096
        assert_reads_match(disk, source, seed=3, count=50)
    with open_vhdx_for_write(path) as writer:
        with pytest.raises(VirtualDiskError, match="not aligned to the 4096-byte"):
            writer.write(512, b"\x00" * 512)


def test_bad_parameters_and_existing_file(tmp_path):
    path = tmp_path / "x.vhdx"
    with pytest.raises(VirtualDiskError, match="block size"):
        create_vhdx(path, 4 * MiB, block_size=3 * MiB)
    with pytest.raises(VirtualDiskError, match="virtual size"):
        create_vhdx(path, 1000)
    assert not path.exists()
    create_vhdx(path, 4 * MiB).close()
    with pytest.raises(VirtualDiskError, match="already exists"):
        create_vhdx(path, 4 * MiB)
    with open_vhdx_for_write(path) as writer:
        with pytest.raises(VirtualDiskError, match="past the end"):
            writer.write(4 * MiB - 512, b"\x00" * 1024)


def test_write_vhdx_from_failure_leaves_no_file(tmp_path):
    path = tmp_path / "fail.vhdx"

    def broken(offset, length):
        if offset >= 2 * MiB:
            raise IOError("source went away")
        return b"\x01" * length

    with pytest.raises(IOError):
        write_vhdx_from(path, broken, 8 * MiB, block_size=1 * MiB)
    assert not path.exists() and not os.path.exists(str(path) + ".partial")
    with pytest.raises(VirtualDiskError, match="returned 10 bytes"):
        write_vhdx_from(path, lambda o, n: b"x" * 10, 8 * MiB, block_size=1 * MiB)
    assert not path.exists()


def test_bat_layout_on_disk(tmp_path):
    """Written blocks are FULLY_PRESENT at unique 1 MiB-aligned offsets; untouched ones NOT_PRESENT."""
    path = tmp_path / "l.vhdx"
    with create_vhdx(path, 10 * MiB, block_size=1 * MiB) as writer:
        writer.write(5 * MiB, b"\x05" * 512)
        writer.write(2 * MiB, b"\x02" * MiB)
    image = VhdxImage(path)
    try:
        states = [image.block_entry(b) & 7 for b in range(10)]
        offsets = [image.block_entry(b) >> 20 << 20 for b in (5, 2)]
        bat_offset = [offset for guid, (offset, _length) in image.regions.items() if str(guid).startswith("2dc27766")][0]
        raw_bat = os.pread(image.fd, 8 * 6, bat_offset)
    finally:
        image.close()
    assert states == [0, 0, 6, 0, 0, 6, 0, 0, 0, 0]
    assert len(set(offsets)) == 2 and all(o % MiB == 0 and o >= 4 * MiB for o in offsets)
    assert os.path.getsize(path) % MiB == 0
    assert struct.unpack("<6Q", raw_bat) == (0, 0, offsets[1] | 6, 0, 0, offsets[0] | 6)
