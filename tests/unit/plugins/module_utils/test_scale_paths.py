"""Issue 14: the parts of the backup path below the repository cost what the data costs, not what the virtual size is.

A 64 TiB VHDX (the format's maximum) opened and its allocated ranges listed, the lab's RCT change list paged at
1 GiB over a 64 TiB disk, and the chunk indexes of a whole-disk range: behaviour and shape, and where the point is
memory, a tracemalloc peak bound (no wall-clock bounds: speed is in benchmarks/bench_scale.py).
"""
import random
import tracemalloc

from ansible_collections.hyperv.backup.plugins.module_utils.backup import backup_planning as planning
from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_rct, wmi_classes
from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge import NAMESPACE_V2
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vdisk import create_vhdx, open_disk
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vhdx import VhdxImage

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB


def peak_of(function):
    """(result, peak bytes allocated while ``function`` ran)."""
    tracemalloc.start()
    try:
        result = function()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# --- vdisk: a 64 TiB VHDX --------------------------------------------------------------------------

def test_a_64_tib_vhdx_opens_and_lists_its_allocated_ranges_in_about_its_bat_bytes(tmp_path):
    path = str(tmp_path / "big.vhdx")
    writes = [0, 17 * TiB + 5 * MiB, 64 * TiB - MiB]
    with create_vhdx(path, 64 * TiB) as writer:       # 32 MiB blocks: 2 Mi BAT entries, 16 MiB of BAT
        for offset in writes:
            writer.write(offset, b"\x01" * MiB)
    image = VhdxImage(path)
    bat_bytes = len(image.bat) * 8
    image.close()

    def open_and_list():
        with open_disk(path) as disk:
            return disk.virtual_size, disk.allocated_ranges(), disk.read(17 * TiB + 5 * MiB, 4)

    (size, ranges, data), peak = peak_of(open_and_list)
    assert size == 64 * TiB
    block = 32 * MiB
    assert ranges == [(0, block), (17 * TiB, block), (64 * TiB - block, block)]
    assert data == b"\x01" * 4
    # the BAT is held once (plus its 1-byte-per-entry state map), not copied whole
    assert peak < 1.5 * bat_bytes, "peak %d bytes for a BAT of %d bytes" % (peak, bat_bytes)


def test_a_bat_over_the_limit_is_read_in_pages_not_held_whole(tmp_path, monkeypatch):
    # a 64 TiB disk of 1 MiB blocks has a 512 MiB BAT; the same path is taken here with a 16 MiB BAT and a lower limit
    from ansible_collections.hyperv.backup.plugins.module_utils.vdisk import vhdx

    path = str(tmp_path / "paged.vhdx")
    with create_vhdx(path, 64 * TiB) as writer:
        writer.write(9 * TiB, b"\x04" * 4096)
        writer.write(63 * TiB, b"\x05" * 4096)
    monkeypatch.setattr(vhdx, "BAT_IN_MEMORY_LIMIT", 4 * MiB, raising=False)
    if hasattr(vhdx, "PagedBat"):       # pages in proportion: 4 of 32 KiB kept (16 MiB of 512 MiB at 64 TiB / 1 MiB blocks)
        monkeypatch.setattr(vhdx.PagedBat, "PAGE_ENTRIES", 4096)
        monkeypatch.setattr(vhdx.PagedBat, "KEEP", 4)

    def open_and_list():
        with open_disk(path) as disk:
            return disk.allocated_ranges(), disk.read(9 * TiB, 4096), disk.read(63 * TiB, 2), disk.read(30 * TiB, 2)

    (ranges, first, second, hole), peak = peak_of(open_and_list)
    assert ranges == [(9 * TiB, 32 * MiB), (63 * TiB, 32 * MiB)]
    assert first == b"\x04" * 4096 and second == b"\x05\x05" and hole == b"\x00\x00"
    bat_bytes = 8 * vhdx.bat_entry_count(64 * TiB, 32 * MiB, 512, False)
    assert peak < bat_bytes // 2, "peak %d bytes for a BAT of %d bytes" % (peak, bat_bytes)


def test_a_64_tib_differencing_chain_lists_child_and_parent_ranges(tmp_path):
    base, child = str(tmp_path / "base.vhdx"), str(tmp_path / "child.avhdx")
    with create_vhdx(base, 64 * TiB) as writer:
        writer.write(40 * TiB, b"\x02" * 4096)
    with create_vhdx(child, None, parent=base) as writer:
        writer.write(3 * TiB, b"\x03" * 4096)
    with open_disk(child) as disk:
        assert disk.allocated_ranges() == [(3 * TiB, 32 * MiB), (40 * TiB, 32 * MiB)]
        assert disk.read(40 * TiB, 4096) == b"\x02" * 4096 and disk.read(3 * TiB, 4096) == b"\x03" * 4096


# --- lab RCT: a change list of a 64 TiB disk in 1 GiB pages ------------------------------------------

class CountingRecords(list):
    """The records list of a tracking document that counts how often it is scanned."""

    scans = 0

    def __iter__(self):
        CountingRecords.scans += 1
        return super(CountingRecords, self).__iter__()


def test_lab_rct_pages_a_64_tib_disk_without_scanning_every_record_per_page():
    tracking = lab_rct.new_tracking("disk-64t")
    writes = [(7 * GiB + 4096, 64 * KiB), (7 * GiB + 96 * KiB, 4096), (40 * TiB, MiB), (64 * TiB - 64 * KiB, 64 * KiB)]
    writes += [(n * 13 * GiB, 4096) for n in range(300)]
    since = lab_rct.record_writes(tracking, writes[:1])
    upto = lab_rct.record_writes(tracking, writes[1:])
    tracking["records"] = CountingRecords(tracking["records"])
    CountingRecords.scans = 0
    size, offset, pages, found = 64 * TiB, 0, 0, []
    while offset < size:
        processed, offsets, lengths = lab_rct.changes(tracking, since, upto, offset, size - offset, size)
        assert processed == GiB                                      # the lab's page size, unchanged
        assert all(offset <= o and o + n <= offset + processed for o, n in zip(offsets, lengths))
        found.extend(zip(offsets, lengths))
        offset += processed
        pages += 1
    assert pages == 65536
    assert CountingRecords.scans <= 1, "the records were scanned %d times for %d pages" % (CountingRecords.scans, pages)
    # record 1 (before ``since``) is left out; record 2 is one 64 KiB granule at 7 GiB + 64 KiB
    expected = [(n * 13 * GiB, 64 * KiB) for n in range(300)]
    expected += [(7 * GiB + 64 * KiB, 64 * KiB), (40 * TiB, MiB), (64 * TiB - 64 * KiB, 64 * KiB)]
    assert found == sorted(set(expected))


def test_lab_rct_page_clips_a_whole_disk_record_to_the_page():
    tracking = lab_rct.new_tracking("disk-whole")
    upto = lab_rct.record_writes(tracking, [(0, 64 * TiB)])
    assert lab_rct.changes(tracking, 0, upto, 5 * GiB, 64 * TiB - 5 * GiB, 64 * TiB) == (GiB, [5 * GiB], [GiB])
    assert lab_rct.changes(tracking, upto, upto, 5 * GiB, GiB, 64 * TiB) == (GiB, [], [])


def test_lab_rct_page_equals_a_granule_by_granule_reading_of_the_records():
    # the page is found by bisection over merged byte ranges; a plain reading of every granule is the reference:
    # windows at unaligned offsets, ranges that straddle a window's edges, windows past the end and of no length
    rng = random.Random(14)
    size = 64 * MiB
    granule = lab_rct.GRANULE
    for _trial in range(40):
        tracking = lab_rct.new_tracking("disk-%d" % _trial)
        writes = [(rng.randrange(0, size - 1), rng.choice((1, 4096, 100 * KiB, 3 * MiB))) for _n in range(rng.randrange(0, 30))]
        writes = [(offset, min(length, size - offset)) for offset, length in writes]
        split = rng.randrange(0, len(writes) + 1)
        since = lab_rct.record_writes(tracking, writes[:split])
        upto = lab_rct.record_writes(tracking, writes[split:])
        changed = set()
        for offset, length in writes[split:]:
            changed.update(range(offset // granule, (offset + length + granule - 1) // granule))
        for _window in range(30):
            offset = rng.choice((0, rng.randrange(0, size), rng.randrange(0, size // granule) * granule, size))
            length = rng.choice((1, granule - 1, rng.randrange(1, size + 1), size - offset if offset < size else 1))
            processed, offsets, lengths = lab_rct.changes(tracking, since, upto, offset, length, size)
            assert processed == max(0, min(length, size - offset, lab_rct.MAX_PAGE_BYTES))
            expected, start = [], None
            for number in range(offset // granule, (offset + processed + granule - 1) // granule + 1):
                inside = number in changed and number * granule < offset + processed
                if inside and start is None:
                    start = max(number * granule, offset)
                if not inside and start is not None:
                    expected.append((start, min(number * granule, offset + processed) - start))
                    start = None
            assert list(zip(offsets, lengths)) == expected, (writes, split, offset, length)


def test_lab_class_tables_are_built_once_per_namespace_and_era():
    # the lab answers every bridge call (65536 for one 64 TiB change list) through these tables
    first = wmi_classes.class_table(NAMESPACE_V2, "2022")
    assert wmi_classes.class_table(NAMESPACE_V2, "2022") is first
    assert "Msvm_ImageManagementService" in first
    assert wmi_classes.class_table(NAMESPACE_V2, "2008r2") is None


# --- planning: chunk indexes of a whole 64 TiB disk ---------------------------------------------------

def test_chunk_indexes_of_a_whole_64_tib_range_are_runs_not_a_list():
    def plan():
        return planning.estimate_disk("scsi0-0", 64 * TiB, MiB, "allocated_ranges", [(0, 64 * TiB)])

    estimate, peak = peak_of(plan)
    indexes = estimate["indexes"]
    assert estimate["chunks_to_read"] == len(indexes) == 64 * MiB
    assert estimate["bytes_to_read"] == 64 * TiB
    assert list(indexes.runs()) == [(0, 64 * MiB)]
    assert indexes[0] == 0 and indexes[-1] == 64 * MiB - 1 and (64 * MiB - 1) in indexes and 64 * MiB not in indexes
    assert peak < 64 * KiB, "peak %d bytes" % peak


def test_chunk_indexes_of_a_1_tib_range_stay_small():
    # the same at 1 TiB, where the old set-then-sorted-list of 1 Mi ints took about 100 MiB
    indexes, peak = peak_of(lambda: planning.chunk_indexes([(0, TiB)], MiB, TiB))
    assert len(indexes) == MiB and peak < 64 * KiB, "peak %d bytes" % peak


def test_chunk_indexes_are_a_sorted_sequence_equal_to_the_list():
    chunk = 64 * KiB
    indexes = planning.chunk_indexes([(10 * chunk, 3 * chunk), (0, 1), (chunk - 1, 2), (11 * chunk, 4 * chunk)], chunk, 100 * chunk)
    assert indexes == [0, 1, 10, 11, 12, 13, 14]
    assert list(indexes) == [0, 1, 10, 11, 12, 13, 14] and len(indexes) == 7
    assert list(indexes.runs()) == [(0, 2), (10, 15)]
    assert indexes[2] == 10 and indexes[-1] == 14 and indexes[1:3] == [1, 10]
    assert 12 in indexes and 2 not in indexes and 15 not in indexes
    assert planning.chunk_bytes(indexes, chunk, 100 * chunk) == 7 * chunk
    # the last chunk of a disk whose size is not a multiple of the chunk size is short
    tail = planning.chunk_indexes([(0, 2 * chunk + 100)], chunk, 2 * chunk + 100)
    assert list(tail) == [0, 1, 2] and planning.chunk_bytes(tail, chunk, 2 * chunk + 100) == 2 * chunk + 100


# --- lab state: a file read again unchanged is not parsed again --------------------------------------

def test_lab_read_json_parses_an_unchanged_file_once_and_hands_out_fresh_documents(tmp_path, monkeypatch):
    import json
    import time
    from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_state

    path = str(tmp_path / "vm.json")
    lab_state.write_json_atomic(path, {"id": "v", "disks": [{"rct_file": "a"}]})
    time.sleep(0.3)     # written a while ago (lab_state.SETTLED_NS): its times tell a later write apart
    parsed = []
    real_load = json.load
    monkeypatch.setattr(lab_state.json, "load", lambda handle: parsed.append(1) or real_load(handle))
    first = lab_state.read_json(path)
    first["disks"].append("changed by the caller")
    second = lab_state.read_json(path)
    assert second == {"id": "v", "disks": [{"rct_file": "a"}]}       # the caller's change is not shared
    assert len(parsed) == 1, "parsed %d times" % len(parsed)
    lab_state.write_json_atomic(path, {"id": "v", "disks": []})      # replaced: read afresh
    assert lab_state.read_json(path) == {"id": "v", "disks": []} and len(parsed) == 2


def test_lab_read_json_does_not_trust_a_file_written_just_now(tmp_path):
    from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_state

    path = str(tmp_path / "host.json")
    for number in range(20):     # same size, same coarse time stamp, possibly the same inode number again
        lab_state.write_json_atomic(path, {"n": number % 10})
        assert lab_state.read_json(path) == {"n": number % 10}


# --- vdisk: the largest VHD ---------------------------------------------------------------------------

def test_a_2040_gib_vhd_lists_its_allocated_blocks_without_a_walk_over_the_bat(tmp_path):
    from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vdisk import create_vhd
    from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vhd import VhdImage

    path, size = str(tmp_path / "big.vhd"), 2040 * GiB            # the VHD format's maximum
    with create_vhd(path, size) as writer:                          # 2 MiB blocks: 1,044,480 BAT entries
        writer.write(0, b"\x06" * 512)
        writer.write(1000 * GiB + 2 * MiB, b"\x07" * 4096)
        writer.write(size - 512, b"\x08" * 512)
    image = VhdImage(path)
    try:
        assert list(image.allocated_blocks()) == [0, 500 * 1024 + 1, size // (2 * MiB) - 1]
    finally:
        image.close()
    with open_disk(path) as disk:
        assert disk.allocated_ranges() == [(0, 2 * MiB), (1000 * GiB + 2 * MiB, 2 * MiB), (size - 2 * MiB, 2 * MiB)]
        assert disk.read(size - 512, 512) == b"\x08" * 512
