"""Issue 12 point 7: a disk that does not change between backups stays incremental, whatever the host does with RCT ids.

The lab host gives an unchanged disk the same RCT id again and destroying any reference point that holds an id
invalidates it (the default), or, with the host quirk ``rct_id_per_reference_point``, a new id per reference point
(docs/lab_wmi.md, RCT ids). Under both, every backup after the first is incremental, restores to the disk at its
point, and our reference points stay bounded.
"""
import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.backup.backup_engine import run_backup
from ansible_collections.hyperv.backup.plugins.module_utils.backup.restore_engine import run_restore
from ansible_collections.hyperv.backup.plugins.module_utils.host.connection import HostSession
from ansible_collections.hyperv.backup.plugins.module_utils.host.disk_access import map_path
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import recovery_points as rp
from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_admin
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import LabLayout
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vdisk import open_disk

MiB = 1024 * 1024
CHUNK = 64 * 1024
SHARED, PER_POINT = None, "rct_id_per_reference_point"


def flat(path):
    with open_disk(path) as disk:
        return disk.read(0, disk.virtual_size)


class IdleLab:
    """A 2019 lab host with one VM of two disks and a repository (or two); backs up and restores."""

    def __init__(self, tmp_path, quirk):
        self.tmp_path = tmp_path
        self.directory = str(tmp_path / "lab")
        self.layout = LabLayout(self.directory, "h19")
        lab_admin.ensure_host(self.layout, era="2019", quirks=[quirk] if quirk else [])
        disks = [{"size": 2 * MiB, "fill": {"seed": 3, "percent": 40}}, {"size": 1 * MiB, "fill": {"seed": 4, "percent": 50}}]
        lab_admin.ensure_vm(self.layout, {"name": "vm", "disks": disks})
        self.repos = {}
        self.params = dict(transport="lab", host="h19", lab_directory=self.directory, vm="vm")

    def repo(self, name="a"):
        if name not in self.repos:
            self.repos[name] = Repository.init(str(self.tmp_path / ("repo-" + name)), chunk_size=CHUNK)
        return self.repos[name]

    def backup(self, repo="a", **extra):
        params = dict(self.params, **extra)
        with HostSession.from_module_params(params) as session:
            result = run_backup(session, self.repo(repo), params)
            disks = session.run("get_vms", names=["vm"])[0]["disks"]
            states = [flat(map_path(d["path"], session.path_map())) for d in disks]
            ours = [r for r in session.run("get_reference_points", vm_id=result["vm_id"]) if r["ours"]]
        return result, states, ours

    def restored(self, result, repo="a"):
        dest = str(self.tmp_path / ("out-" + result["backup_id"]))
        out = run_restore(self.repo(repo), {"backup_id": result["backup_id"], "destination": dest, "format": "raw"})
        assert all(d["verified"] for d in out["disks"])
        return [open(d["path"], "rb").read() for d in sorted(out["disks"], key=lambda d: d["path"])]


@pytest.mark.parametrize("quirk, keep", [(SHARED, 1), (SHARED, 2), (PER_POINT, 1)])
def test_an_idle_vm_stays_incremental_and_its_reference_points_stay_bounded(tmp_path, quirk, keep):
    lab = IdleLab(tmp_path, quirk)
    first, states, ours = lab.backup(keep_reference_points=keep)
    assert first["type"] == "full" and len(ours) == 1
    for _run in range(3):
        result, now, ours = lab.backup(keep_reference_points=keep)
        assert (result["type"], result["bytes_read"]) == ("incremental", 0), result.get("type_reason")
        assert now == states
        # the newest `keep`, plus (shared ids only) the one older point whose id the newest holds too
        assert len(ours) <= keep + (1 if quirk is SHARED else 0)
    assert lab.restored(result) == states
    # a write after the idle stretch: the next incremental holds exactly that change, the idle disk reads nothing
    lab_admin.churn(lab.layout, "vm", seed=9, writes=2, write_size=4096, offsets=[0, MiB + 8192], disk=0)
    changed, after, ours = lab.backup(keep_reference_points=keep)
    assert changed["type"] == "incremental" and 2 * 4096 <= changed["bytes_read"] <= 2 * CHUNK
    assert after[0] != states[0] and after[1] == states[1]
    assert lab.restored(changed) == after
    assert len(ours) <= keep + (1 if quirk is SHARED else 0)
    # and the disk that stayed idle is still incremental afterwards
    again, _now, ours = lab.backup(keep_reference_points=keep)
    assert (again["type"], again["bytes_read"]) == ("incremental", 0)
    assert lab.restored(again) == after and len(ours) <= keep + (1 if quirk is SHARED else 0)


@pytest.mark.parametrize("quirk", [SHARED, PER_POINT])
def test_one_idle_disk_beside_a_busy_one_stays_incremental(tmp_path, quirk):
    lab = IdleLab(tmp_path, quirk)
    lab.backup()
    for seed in range(3):
        lab_admin.churn(lab.layout, "vm", seed=20 + seed, writes=1, write_size=4096, offsets=[CHUNK * seed], disk=0)
        result, states, ours = lab.backup()
        assert result["type"] == "incremental" and 4096 <= result["bytes_read"] <= CHUNK, result.get("type_reason")
        assert sorted(d["bytes_read"] for d in result["disks"]) == [0, CHUNK]
        assert len(ours) <= (2 if quirk is SHARED else 1)
    assert lab.restored(result) == states


def test_two_repositories_taking_turns_on_an_idle_vm_stay_incremental(tmp_path):
    """Repository b's point holds the idle disk's id; repository a's backups never lose it for b (issue point 3)."""
    lab = IdleLab(tmp_path, SHARED)
    lab.backup("a")
    lab.backup("b")
    for turn in range(3):
        if turn == 2:       # a change: the points holding the old ids go once both repositories moved past them
            lab_admin.churn(lab.layout, "vm", seed=31, writes=1, write_size=4096, disk=0)
        for name in ("a", "b"):
            result, states, ours = lab.backup(name)
            assert result["type"] == "incremental", result.get("type_reason")
            assert result["bytes_read"] == (CHUNK if turn == 2 else 0)
            assert lab.restored(result, name) == states
            assert len(ours) <= 2 + (1 if (turn, name) == (2, "a") else 0)      # one per repository


def _ref(point_id, ids, repositories=(), ours=True):
    return {"id": point_id, "ours": ours, "type": "RCT", "rct_ids": dict(ids), "repositories": list(repositories)}


def test_retention_plan_never_destroys_a_point_sharing_an_id_with_one_that_stays():
    old = _ref("old", {"d0": "rctX:d0:5", "d1": "rctX:d1:2"})
    stale = _ref("stale", {"d0": "rctX:d0:1"})
    new = _ref("new", {"d0": "rctX:d0:9", "d1": "rctX:d1:2"})
    destroy, kept = rp.plan_reference_retention([stale, old, new], 0, "repo-a", new_point=new)
    assert [r["id"] for r in destroy] == ["stale"]
    assert [k["id"] for k in kept] == ["old"] and "rctX:d1:2" in kept[0]["reason"]
    # another product's point holding an id protects ours holding it too, before and after a conversion
    foreign = _ref("foreign", {"d0": "rctX:d0:1"}, ours=False)
    for plan in (rp.plan_reference_retention([foreign, stale, new], 0, "repo-a", new_point=new),
                 rp.plan_reference_retention([foreign, stale, new], 1, "repo-a", protect_kept=False)):
        assert plan[0] == [] and [k["id"] for k in plan[1]] == ["stale"]
    # ahead of a conversion, the newest `keep` stay and older duplicates of them may go
    destroy, _kept = rp.plan_reference_retention([old, new], 1, "repo-a", protect_kept=False)
    assert [r["id"] for r in destroy] == ["old"]
    # fewer points than to keep: all stay
    assert rp.plan_reference_retention([stale, new], 3, "repo-a", protect_kept=False) == ([], [])
