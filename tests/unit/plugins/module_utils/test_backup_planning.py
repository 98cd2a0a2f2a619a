"""Backup type decision, disk selection and estimate (backup_planning.py)."""
import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.backup import backup_planning as planning
from ansible_collections.hyperv.backup.plugins.module_utils.errors import HyperVBackupError
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv.recovery_points import ChangeList
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import BackupRecord

KiB = 1024
MiB = 1024 * KiB


def disk(location, size=8 * MiB, disk_id=None, path=None):
    return {"controller_type": "SCSI", "controller_number": 0, "controller_location": location, "virtual_size": size,
            "disk_id": disk_id or "id-%d" % location, "path": path or "/lab/vm/Virtual Hard Disks/vm_disk%d.vhdx" % location,
            "windows_path": "C:\\Hyper-V\\vm\\Virtual Hard Disks\\vm_disk%d.vhdx" % location}


def keyed(*disks):
    return [dict(d, disk_key=planning.disk_key(d)) for d in disks]


def parent(method="rct", disks=None, created="2026-11-25T06:00:00.000000Z", stats=None):
    return BackupRecord({"backup_id": "b1", "vm_id": "v", "method": method, "type": "full", "stats": stats or {},
                         "disks": disks if disks is not None else [{"disk_key": "scsi0-0", "virtual_size": 8 * MiB}],
                         "metadata": {"recovery_point": {"created": created}}})


def test_disk_key_is_the_controller_slot():
    assert planning.disk_key(disk(1)) == "scsi0-1"
    assert planning.disk_key({"path": "/x.vhdx", "disk_id": "abc"}) == "abc"


@pytest.mark.parametrize("pattern", ["SCSI 0:1", "scsi0-1", "vm_disk1.vhdx", "C:/Hyper-V/vm/Virtual Hard Disks/vm_disk1.vhdx",
                                     "/lab/vm/Virtual Hard Disks/vm_disk1.vhdx"])
def test_exclude_by_slot_path_or_name(pattern):
    kept, excluded = planning.select_disks([disk(0), disk(1)], [pattern])
    assert [d["controller_location"] for d in kept] == [0]
    assert [d["controller_location"] for d in excluded] == [1]


@pytest.mark.parametrize("text, key", [("SCSI 0:1", "scsi0-1"), ("scsi0-1", "scsi0-1"), (" Scsi 0 - 1 ", "scsi0-1"),
                                       ("IDE 1:0", "ide1-0"), ("scsi 00:01", "scsi0-1"), ("vm_disk1.vhdx", None),
                                       ("scsi0", None), ("sata0-1", None)])
def test_one_parser_of_slot_spellings(text, key):
    """exclude_disks and hyperv_restore's disk_names both go through parse_slot (issue 12, point 3)."""
    assert planning.parse_slot(text) == key


def test_names_disk_matches_a_key_without_slot_and_ignores_case():
    assert planning.names_disk("ABC-Id", "abc-id")
    assert planning.names_disk("SCSI 0:1", "scsi0-1") and not planning.names_disk("SCSI 0:1", "scsi0-2")
    assert planning.names_disk("VM_DISK1.VHDX", "scsi0-1", ["C:\\vm\\vm_disk1.vhdx"])
    assert not planning.names_disk("scsi0-1", "abc-id", ["C:\\vm\\vm_disk1.vhdx"])


def test_exclude_that_matches_nothing_is_an_error_naming_the_disks():
    with pytest.raises(HyperVBackupError) as err:
        planning.select_disks([disk(0)], ["SCSI 0:5"])
    assert "SCSI 0:5" in str(err.value) and "scsi0-0" in str(err.value)


def test_excluding_every_disk_is_an_error():
    with pytest.raises(HyperVBackupError, match="nothing to back up"):
        planning.select_disks([disk(0)], ["scsi0-0"])


def test_chunk_indexes_cover_ranges_at_chunk_granularity():
    chunk = 64 * KiB
    assert planning.chunk_indexes([(0, 1), (chunk - 1, 2), (10 * chunk, chunk)], chunk, 100 * chunk) == [0, 1, 10]
    # a range past the end is clipped to the last chunk; zero-length ranges count for nothing
    assert planning.chunk_indexes([(99 * chunk, 5 * chunk), (3 * chunk, 0)], chunk, 100 * chunk) == [99]
    assert planning.chunk_bytes([0, 1], chunk, chunk + 100) == chunk + 100


def decide(requested="auto", method="rct", parent_record=None, disks=None, changes=None, problem=None):
    return planning.decide_type(requested, method, "reason", parent_record, disks or keyed(disk(0)), changes, problem)


def valid_changes(ranges=((0, 4096),)):
    return {"id-0": ChangeList(True, ranges=list(ranges), changed_bytes=4096)}


def test_first_backup_is_full():
    decision = decide()
    assert decision.type == "full" and "first backup" in decision.reason and decision.parent is None


def test_later_rct_backup_with_valid_change_list_is_incremental():
    decision = decide(parent_record=parent(), changes=valid_changes())
    assert decision.type == "incremental" and decision.parent.backup_id == "b1"


def test_later_vss_backup_is_incremental_by_comparison():
    decision = decide(method="vss", parent_record=parent("vss"))
    assert decision.type == "incremental" and "only chunks that differ" in decision.reason


@pytest.mark.parametrize("kwargs, expected", [
    ({"requested": "full"}, "type: full"),
    ({"method": "vss"}, "method changed from rct"),
    ({"disks": keyed(disk(0), disk(1))}, "disk set changed since backup b1 (added: scsi0-1"),
    ({"disks": keyed(disk(0, size=16 * MiB))}, "changed size from 8388608 to 16777216"),
    ({"changes": {"id-0": ChangeList(False, reason="id rct-1 is invalid")}}, "id rct-1 is invalid"),
    ({"changes": None, "problem": "the RCT reference point of the parent backup b1 is gone"}, "reference point"),
])
def test_reasons_for_a_full_backup(kwargs, expected):
    args = {"parent_record": parent(), "changes": valid_changes()}
    args.update(kwargs)
    decision = decide(**args)
    assert decision.type == "full"
    assert expected in decision.reason


def test_incremental_asked_but_impossible_is_refused_with_the_reason():
    with pytest.raises(HyperVBackupError) as err:
        decide(requested="incremental")
    assert "first backup" in str(err.value) and "type: auto" in str(err.value)


def test_reference_rct_ids_match_the_parent_point_by_creation_time():
    references = [{"created": "2026-11-25T05:00:00.000000Z", "rct_ids": {"id-0": "old"}},
                  {"created": "2026-11-25T06:00:00.000000Z", "rct_ids": {"id-0": "rct-7"}}]
    assert planning.reference_rct_ids(parent(), references) == ({"id-0": "rct-7"}, None)
    ids, why = planning.reference_rct_ids(parent(created="2026-11-25T07:00:00.000000Z"), references)
    assert ids is None and "gone" in why


def test_estimate_uses_parent_compression_ratio():
    estimate = planning.estimate_disk("scsi0-0", 8 * MiB, 64 * KiB, "rct_change_list", [(0, 4096), (MiB, 4096)])
    assert estimate["bytes_to_read"] == 128 * KiB and estimate["chunks_to_read"] == 2
    summary = planning.summarise_estimate([estimate], parent(stats={"new_bytes": 1000, "stored_bytes": 250}), "incremental", "rct")
    assert summary["bytes_to_read"] == 128 * KiB and summary["bytes_to_write"] == 32 * KiB
    assert "indexes" not in summary["disks"][0]
    vss = planning.summarise_estimate([estimate], None, "incremental", "vss")
    assert vss["bytes_to_write"] == 128 * KiB and "upper bound" in vss["write_basis"]
