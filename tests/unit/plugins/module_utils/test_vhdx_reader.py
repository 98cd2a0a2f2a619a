"""VHDX reader against qemu-img as the oracle: qemu-made files of every subformat and block state."""
import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vdisk import disk_info, open_disk

from disk_helpers import MiB, assert_ranges_cover, assert_reads_match, needs_qemu, qemu_to_raw, random_image, run, write_file


@needs_qemu
@pytest.mark.parametrize("subformat", ["dynamic", "fixed"])
@pytest.mark.parametrize("block_size", ["1M", "8M", "32M"])
@pytest.mark.parametrize("zero_state", ["on", "off"])
def test_qemu_io_writes_read_back(tmp_path, subformat, block_size, zero_state):
    path = tmp_path / "d.vhdx"
    size = 40 * MiB + 3 * 512
    run("qemu-img", "create", "-q", "-f", "vhdx", "-o",
        "subformat=%s,block_size=%s,block_state_zero=%s" % (subformat, block_size, zero_state), path, size)
    # Out of order and straddling block edges.
    for command in ("write -P 0x5a 15M 2M", "write -P 0x22 8M 512", "write -P 0x33 31M 2M", "write -P 0x44 40M 1536"):
        run("qemu-io", "-f", "vhdx", "-c", command, path)
    expected = qemu_to_raw(path, tmp_path / "d.raw")
    assert len(expected) == size
    with open_disk(path) as disk:
        assert disk.virtual_size == size and disk.chain == [str(path)]
        assert disk.read(15 * MiB, 2 * MiB) == b"\x5a" * (2 * MiB)
        assert_reads_match(disk, expected, seed=len(block_size), count=120)
        assert_ranges_cover(disk.allocated_ranges(), expected)
    info = disk_info(path)
    assert info["format"] == "vhdx" and info["virtual_size"] == size
    assert info["block_size"] == int(block_size[:-1]) * MiB
    assert info["type"] == ("fixed" if subformat == "fixed" else "dynamic")


@needs_qemu
@pytest.mark.parametrize("options", ["subformat=dynamic,block_size=1M", "subformat=dynamic,block_size=32M,block_state_zero=off",
                                     "subformat=fixed,block_size=8M,block_state_zero=off"])
def test_qemu_convert_random_image_with_holes(tmp_path, options):
    size = 50 * MiB
    source = random_image(size, seed=len(options), extents=15)
    write_file(tmp_path / "src.raw", source)
    path = tmp_path / "c.vhdx"
    run("qemu-img", "convert", "-f", "raw", "-O", "vhdx", "-o", options, tmp_path / "src.raw", path)
    assert qemu_to_raw(path, tmp_path / "back.raw") == bytes(source)
    with open_disk(path) as disk:
        assert_reads_match(disk, source, seed=5, count=150)
        ranges = disk.allocated_ranges()
        assert_ranges_cover(ranges, source)
        if "dynamic" in options:   # holes are not reported as allocated: exactly the blocks with data
            block = disk.block_size
            nonzero = [o for o in range(0, size, block) if any(source[o:o + block])]
            assert sum(length for _o, length in ranges) == sum(min(block, size - o) for o in nonzero)
        buf = bytearray(3 * MiB)
        disk.readinto(size - len(buf), buf)
        assert buf == source[size - len(buf):]


@needs_qemu
def test_reads_past_end_raise(tmp_path):
    path = tmp_path / "e.vhdx"
    run("qemu-img", "create", "-q", "-f", "vhdx", path, "4M")
    from ansible_collections.hyperv.backup.plugins.module_utils.errors import VirtualDiskError
    with open_disk(path) as disk:
        assert disk.read(4 * MiB - 1, 1) == b"\x00"
        assert disk.read(4 * MiB, 0) == b""
        with pytest.raises(VirtualDiskError, match="outside"):
            disk.read(4 * MiB - 1, 2)
        with pytest.raises(VirtualDiskError, match="outside"):
            disk.read(-1, 1)
