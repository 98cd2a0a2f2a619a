"""Issue 14: a big VHDX reads its BAT in pages as they are used (an incremental of a 64 TiB disk reads the few pages its
changed blocks fall in; a writer the pages it writes in), checks each page as it is read, and checks the whole layout
the first time the whole table is read. A damaged entry is still refused with the file and the problem named."""
import os
import shutil
import subprocess

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.errors import VirtualDiskError
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk import vhdx_bat
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vdisk import create_vhdx, open_disk, open_disk_for_write
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vhdx import VhdxImage
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vhdx_format import BAT_REGION, METADATA_REGION

MiB = 1024 * 1024
GiB = 1024 * MiB
TiB = 1024 * GiB
BLOCK = 32 * MiB


@pytest.fixture
def big(tmp_path):
    """A 64 TiB VHDX (16 MiB of BAT) with three blocks written far apart."""
    path = str(tmp_path / "big.vhdx")
    with create_vhdx(path, 64 * TiB) as writer:
        writer.write(0, b"\x01" * MiB)
        writer.write(17 * TiB, b"\x02" * MiB)
        writer.write(63 * TiB, b"\x03" * MiB)
    return path


def bat_bytes_read(monkeypatch):
    """A list that receives the size of every structure read that lands in a BAT region."""
    seen = []
    real = VhdxImage.read_structure_into

    def counting(image, view, offset):
        bat_offset, bat_length = getattr(image, "regions", {}).get(BAT_REGION, (0, 0))    # none yet: the region table
        if bat_offset <= offset < bat_offset + bat_length:
            seen.append(len(view))
        return real(image, view, offset)

    monkeypatch.setattr(VhdxImage, "read_structure_into", counting)
    return seen


def entry_offset(path, block):
    """The file offset of the BAT entry of payload ``block``."""
    image = VhdxImage(path)
    try:
        return image.regions[BAT_REGION][0] + 8 * (block + block // image.chunk_ratio)
    finally:
        image.close()


def test_reading_a_few_blocks_of_a_64_tib_disk_reads_a_few_bat_pages(big, monkeypatch):
    seen = bat_bytes_read(monkeypatch)
    with open_disk(big) as disk:
        assert disk.read(17 * TiB, 4) == b"\x02" * 4
        assert disk.read(40 * TiB, 4) == bytes(4)
    page = vhdx_bat.PagedBat.PAGE_ENTRIES * 8
    assert 0 < sum(seen) <= 2 * page, "read %d bytes of a 16 MiB BAT" % sum(seen)


def test_the_whole_table_is_read_and_checked_once_something_needs_all_of_it(big, monkeypatch):
    seen = bat_bytes_read(monkeypatch)
    with open_disk(big) as disk:
        assert disk.allocated_ranges() == [(0, BLOCK), (17 * TiB, BLOCK), (63 * TiB, BLOCK)]
        assert disk.read(63 * TiB, 2) == b"\x03\x03"
    assert sum(seen) >= 16 * MiB
    plain = VhdxImage(big)
    try:
        assert isinstance(plain.bat, vhdx_bat.PagedBat) and not plain.layout_checked
        plain.entry_states()
        assert plain.layout_checked and not isinstance(plain.bat, vhdx_bat.PagedBat)    # 16 MiB: now held whole
    finally:
        plain.close()


def test_a_small_bat_is_read_and_checked_whole_at_open(tmp_path):
    path = str(tmp_path / "small.vhdx")
    with create_vhdx(path, 64 * GiB) as writer:
        writer.write(GiB, b"\x01" * 4096)
    image = VhdxImage(path)
    try:
        assert not isinstance(image.bat, vhdx_bat.PagedBat) and image.layout_checked
    finally:
        image.close()


def test_a_writer_of_a_big_disk_reads_the_pages_it_writes_in_and_the_file_stays_valid(big, monkeypatch, tmp_path):
    seen = bat_bytes_read(monkeypatch)
    writer = open_disk_for_write(big)
    try:
        writer.write(17 * TiB + 4096, b"\x07" * 4096)            # inside an existing block
        writer.write(30 * TiB, b"\x08" * MiB)                    # a new block, appended
        writer.flush()
        page = vhdx_bat.PagedBat.PAGE_ENTRIES * 8
        assert 0 < sum(seen) <= 2 * page, "read %d bytes of a 16 MiB BAT" % sum(seen)
        writer.image.entry_states()         # the whole table now checks too: the appended block is inside the grown file
        writer.write(40 * TiB, b"\x09" * 4096)                   # and writes go on into the table now held whole
        writer.flush()
    finally:
        writer.close()
    monkeypatch.undo()
    with open_disk(big) as disk:
        assert disk.read(17 * TiB, 4096) == b"\x02" * 4096 and disk.read(17 * TiB + 4096, 4096) == b"\x07" * 4096
        assert disk.read(30 * TiB, MiB) == b"\x08" * MiB and disk.read(40 * TiB, 4096) == b"\x09" * 4096
        assert disk.allocated_ranges() == [(0, BLOCK), (17 * TiB, BLOCK), (30 * TiB, BLOCK), (40 * TiB, BLOCK), (63 * TiB, BLOCK)]
    if shutil.which("qemu-img"):
        done = subprocess.run(["qemu-img", "check", "-f", "vhdx", big], capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stdout + done.stderr


def test_an_entry_into_the_metadata_region_is_refused_when_its_page_is_read(big):
    image = VhdxImage(big)
    metadata_offset = image.regions[METADATA_REGION][0]
    image.close()
    with open(big, "r+b") as handle:                  # block at 17 TiB now claims to live over the metadata region
        handle.seek(entry_offset(big, 17 * TiB // BLOCK))
        handle.write((metadata_offset | vhdx_bat.PAYLOAD_FULLY_PRESENT).to_bytes(8, "little"))
    with open_disk(big) as disk:
        assert disk.read(0, 2) == b"\x01\x01"         # another page: read as before
        with pytest.raises(VirtualDiskError, match="payload block %d .* overlaps (the )?(metadata|BAT) region" % (17 * TiB // BLOCK)) as err:
            disk.read(17 * TiB, 2)
    assert big in str(err.value)


def test_an_entry_past_the_end_of_the_file_is_refused_when_its_page_is_read(big):
    size = os.path.getsize(big)
    with open(big, "r+b") as handle:
        handle.seek(entry_offset(big, 40 * TiB // BLOCK))
        handle.write(((size + 64 * MiB) | vhdx_bat.PAYLOAD_FULLY_PRESENT).to_bytes(8, "little"))
    with open_disk(big) as disk:
        with pytest.raises(VirtualDiskError, match="points beyond the end of the file"):
            disk.read(40 * TiB, 2)


def test_a_reserved_state_is_refused_when_its_page_is_read(big):
    with open(big, "r+b") as handle:
        handle.seek(entry_offset(big, 50 * TiB // BLOCK))
        handle.write((4).to_bytes(8, "little"))
    with open_disk(big) as disk:
        with pytest.raises(VirtualDiskError, match="reserved state 4"):
            disk.read(50 * TiB, 2)


def test_two_blocks_sharing_file_space_are_refused_once_the_whole_table_is_read(big):
    image = VhdxImage(big)
    first = image.block_entry(0)
    image.close()
    with open(big, "r+b") as handle:                  # the block at 63 TiB now points at block 0's data
        handle.seek(entry_offset(big, 63 * TiB // BLOCK))
        handle.write(first.to_bytes(8, "little"))
    with open_disk(big) as disk:
        # a reader of one page reads what the file says there, as Hyper-V would
        assert disk.read(63 * TiB, 2) == b"\x01\x01"
        with pytest.raises(VirtualDiskError, match="overlaps payload block 0"):
            disk.allocated_ranges()
    writer = open_disk_for_write(big)
    try:
        with pytest.raises(VirtualDiskError, match="overlaps"):
            writer.image.entry_states()               # whoever reads the whole table is refused
    finally:
        writer.close()
