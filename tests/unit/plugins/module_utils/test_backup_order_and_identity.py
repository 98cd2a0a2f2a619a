"""Issue 12, points 2 and 6: which VM a backup is of across hosts (lineage), and the order of backups (commit sequence).

Point 2: a restored copy registered on another host with the VM's id must not share the original's chain and
retention; a VM that moves (migration) keeps its chain. Point 6: a clock stepped back must not make a run prune
its own new backup, nor make "latest" (restore, parent) return an older backup.
"""
import datetime
from unittest import mock

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.backup.backup_engine import run_backup
from ansible_collections.hyperv.backup.plugins.module_utils.backup.restore_engine import run_restore, select_backup
from ansible_collections.hyperv.backup.plugins.module_utils.errors import HyperVBackupError
from ansible_collections.hyperv.backup.plugins.module_utils.host.connection import HostSession
from ansible_collections.hyperv.backup.plugins.module_utils.host.disk_access import map_path
from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_admin
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import LabLayout
from ansible_collections.hyperv.backup.plugins.module_utils.repository import backup_session as backup_session_module
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository
from ansible_collections.hyperv.backup.plugins.module_utils.repository.retention import RetentionPolicy
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vdisk import open_disk

MiB = 1024 * 1024
CHUNK = 64 * 1024
UTC = datetime.timezone.utc


@pytest.fixture
def lab(tmp_path):
    directory = str(tmp_path / "lab")
    for host in ("hv-a", "hv-b"):
        lab_admin.ensure_host(LabLayout(directory, host), era="2019", services={"vss": "Running"})
    lab_admin.ensure_vm(LabLayout(directory, "hv-a"), {"name": "web", "disks": [{"size": 2 * MiB, "fill": {"seed": 3, "percent": 60}}]})
    return directory, Repository.init(str(tmp_path / "repo"), chunk_size=CHUNK)


def session_for(lab, host):
    return HostSession.from_module_params(dict(transport="lab", host=host, lab_directory=lab[0]))


def backup(lab, host, vm="web", **extra):
    params = dict(transport="lab", host=host, lab_directory=lab[0], vm=vm)
    params.update(extra)
    with session_for(lab, host) as session:
        return run_backup(session, lab[1], params)


def disk_content(lab, host, vm="web"):
    with session_for(lab, host) as session:
        facts = [v for v in session.run("get_vms") if v["name"] == vm][0]
        with open_disk(map_path(facts["disks"][0]["path"], session.path_map())) as disk:
            return disk.read(0, disk.virtual_size)


def restored_content(repo, backup_id, tmp_path):
    target = tmp_path / ("restore-" + backup_id)
    result = run_restore(repo, {"backup_id": backup_id, "destination": str(target), "format": "raw"})
    return open(result["disks"][0]["path"], "rb").read()


# --- point 2: two hosts, one VM id ----------------------------------------------------------------------------

def register_copy_on_other_host(lab, backup_id):
    """What the issue did: restore the backup and register it on hv-b keeping the VM id (generate_new_id: false)."""
    with session_for(lab, "hv-b") as session:
        return run_restore(lab[1], {"backup_id": backup_id, "destination": "C:\\Restores\\web", "register": True,
                                    "generate_new_id": False}, session=session)


def test_a_copy_with_the_same_id_on_another_host_is_a_vm_of_its_own(lab, tmp_path):
    repo = lab[1]
    first = backup(lab, "hv-a")
    registered = register_copy_on_other_host(lab, first["backup_id"])
    assert registered["registered_vm"]["vm_id"] == first["vm_id"]          # the twin: same id on hv-b
    lab_admin.churn(LabLayout(lab[0], "hv-b"), "web", seed=21, write_size=4096, offsets=[0])
    copy = backup(lab, "hv-b")
    # a separate lineage, its own full backup, and the operator is told
    assert copy["lineage"] == "%s@hv-b" % first["vm_id"] and copy["type"] == "full" and copy["parent_backup_id"] is None
    assert any("kept apart" in w for w in copy["warnings"])
    lab_admin.churn(LabLayout(lab[0], "hv-a"), "web", seed=22, write_size=4096, offsets=[MiB])
    original = backup(lab, "hv-a")
    # the original's chain is untouched by the copy's backup
    assert original["lineage"] == first["vm_id"] and original["parent_backup_id"] == first["backup_id"]
    assert original["type"] == "incremental"
    report = repo.prune(RetentionPolicy(keep_last=1))
    kept = set(r.backup_id for r in repo.list_backups())
    # before: keep_last 1 per VM id deleted one host's latest backup
    assert kept == {copy["backup_id"], original["backup_id"]}, report
    assert restored_content(repo, copy["backup_id"], tmp_path) == disk_content(lab, "hv-b")
    assert restored_content(repo, original["backup_id"], tmp_path) == disk_content(lab, "hv-a")
    # a vm: lookup that names both refuses instead of picking one; source_host says which
    with pytest.raises(HyperVBackupError, match="names 2 different VMs"):
        select_backup(repo, vm="web")
    assert select_backup(repo, vm="web", source_host="hv-b").backup_id == copy["backup_id"]
    assert select_backup(repo, vm=first["vm_id"], source_host="HV-A").backup_id == original["backup_id"]
    assert sorted(v["lineage"] for v in repo.list_vms()) == sorted([first["vm_id"], copy["lineage"]])


def test_a_migrated_vm_keeps_its_chain_and_retention(lab):
    repo = lab[1]
    first = backup(lab, "hv-a")
    lab_admin.migrate_vm(LabLayout(lab[0], "hv-a"), "web", "hv-b")
    lab_admin.churn(LabLayout(lab[0], "hv-b"), "web", seed=23, write_size=4096, offsets=[0])
    moved = backup(lab, "hv-b")
    # the same VM: its chain continues (whether this one is incremental is the reference point's business: the
    # lab does not move reference points with the VM, so it is full here, with that reason)
    assert moved["lineage"] == first["vm_id"] and moved["previous_backup_id"] == first["backup_id"]
    assert "moved from host hv-a" in moved["lineage_reason"]
    assert not any("kept apart" in w for w in moved["warnings"])
    repo.prune(RetentionPolicy(keep_last=1))
    assert [r.backup_id for r in repo.list_backups()] == [moved["backup_id"]]


def test_two_lineages_that_both_match_are_refused(lab):
    """Both lineages of one id have the VM's host: the backup cannot tell which chain it continues."""
    from ansible_collections.hyperv.backup.plugins.module_utils.repository import vm_lineage
    from ansible_collections.hyperv.backup.plugins.module_utils.repository.backup_record import BackupRecord

    def record(lineage, host, sequence):
        return BackupRecord({"backup_id": "20261201T000000Z-00000000000%d" % sequence, "vm_id": "v", "host": host,
                             "lineage": lineage, "sequence": sequence, "disks": []})
    vm = {"id": "v", "name": "web", "disks": []}
    assert vm_lineage.choose_lineage([record("v", "hv-a", 1), record("v@hv-b", "hv-b", 2)], vm, "hv-b").name == "v@hv-b"
    with pytest.raises(HyperVBackupError, match="matches 2 VMs"):
        vm_lineage.choose_lineage([record("v", "hv-a", 1), record("v@x", "hv-a", 2)], vm, "hv-a")
    # no match at all: a new lineage named after the host, not clashing with an existing one
    assert vm_lineage.choose_lineage([record("v", "hv-a", 1), record("v@hv-c", "hv-b", 2)], vm, "hv-c").name == "v@hv-c-2"


# --- point 6: clocks --------------------------------------------------------------------------------------------

def at(hour):
    return datetime.datetime(2026, 11, 30, hour, 0, tzinfo=UTC)


def test_a_clock_stepped_back_does_not_prune_the_new_backup_nor_hide_it(lab, tmp_path):
    """Runs at 10:00, 12:00, then 11:00 (clock corrected). Before: keep_last 1 kept 12:00 and deleted the new one,
    and 'latest' returned the 12:00 data."""
    repo = lab[1]
    made = []
    for seed, hour in ((31, 10), (32, 12), (33, 11)):
        lab_admin.churn(LabLayout(lab[0], "hv-a"), "web", seed=seed, write_size=4096, offsets=[(seed % 16) * CHUNK])
        with mock.patch.object(backup_session_module, "utc_now", return_value=at(hour)):
            made.append(backup(lab, "hv-a"))
    newest = made[-1]
    assert repo.latest_backup(newest["vm_id"]).backup_id == newest["backup_id"]
    assert newest["parent_backup_id"] == made[1]["backup_id"]       # the parent is the last committed, not the latest clock
    assert select_backup(repo, vm="web").backup_id == newest["backup_id"]
    report = repo.prune(RetentionPolicy(keep_last=1))
    assert [r.backup_id for r in repo.list_backups()] == [newest["backup_id"]], report
    assert restored_content(repo, newest["backup_id"], tmp_path) == disk_content(lab, "hv-a")


def test_daily_buckets_use_the_recovery_point_time_and_a_run_keeps_what_it_made(lab):
    repo = lab[1]
    ids = []
    for day, seed in ((1, 41), (2, 42), (2, 43)):
        lab_admin.churn(LabLayout(lab[0], "hv-a"), "web", seed=seed, write_size=4096, offsets=[0])
        ids.append(backup(lab, "hv-a")["backup_id"])
        record = repo.get_backup(ids[-1])
        assert record.sequence == len(ids)
    records = repo.list_backups()
    # the periods come from the recovery point's recorded time: give the three backups two days of data
    stamped = [(r.backup_id, r.order_key, datetime.datetime(2026, 11, day, 6, tzinfo=UTC))
               for r, day in zip(records, (1, 2, 2))]
    keep, remove = RetentionPolicy(keep_daily=2).apply(stamped)
    assert set(keep) == {ids[0], ids[2]} and remove == [ids[1]]
    # a run never prunes what it made, whatever the policy says
    report = repo.prune(RetentionPolicy(keep_last=1), protect=[ids[1]])
    assert set(r.backup_id for r in repo.list_backups()) == {ids[1], ids[2]}
    assert any(k["backup_id"] == ids[1] and k["reasons"] == ["made by this run"] for k in report["kept"])
