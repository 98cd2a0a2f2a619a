"""The backup engine (backup_engine.py) against a lab host: full, incremental, VSS compare, failures, bounds."""
import threading

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.backup import backup_engine, report

from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_admin
from ansible_collections.hyperv.backup.plugins.module_utils.backup.backup_engine import ChunkCopier, CopyOptions, run_backup
from ansible_collections.hyperv.backup.plugins.module_utils.backup.progress import ProgressReporter
from ansible_collections.hyperv.backup.plugins.module_utils.host.connection import HostSession
from ansible_collections.hyperv.backup.plugins.module_utils.errors import HyperVBackupError
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_host import LabTransport
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import LabLayout
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vdisk import open_disk

KiB = 1024
MiB = 1024 * KiB
CHUNK = 64 * KiB


@pytest.fixture
def lab(tmp_path):
    directory = str(tmp_path / "lab")
    for host, era, vm in (("h19", "2019", "rctvm"), ("h12", "2012r2", "vssvm")):
        layout = LabLayout(directory, host)
        lab_admin.ensure_host(layout, era=era, services={"vss": "Running"})
        lab_admin.ensure_vm(layout, {"name": vm, "disks": [{"size": 4 * MiB, "fill": {"seed": 1, "percent": 50}}]})
    repo = Repository.init(str(tmp_path / "repo"), chunk_size=CHUNK)
    return directory, repo


def backup(lab, host="h19", vm="rctvm", check_mode=False, options=None, **extra):
    directory, repo = lab
    params = dict(transport="lab", host=host, lab_directory=directory, vm=vm)
    params.update(extra)
    with HostSession.from_module_params(params) as session:
        return run_backup(session, repo, params, check_mode=check_mode, options=options)


def vm_facts(lab, host="h19", vm="rctvm"):
    with HostSession.from_module_params(dict(transport="lab", host=host, lab_directory=lab[0])) as session:
        return session.run("get_vms", names=[vm])[0]


def test_check_mode_estimates_and_creates_nothing(lab):
    result = backup(lab, check_mode=True)
    assert result["type"] == "full" and result["estimate"]["bytes_to_read"] > 0
    assert vm_facts(lab)["checkpoints"] == [] and lab[1].list_backups() == []


def test_full_then_rct_incremental_reads_only_changed_chunks(lab):
    full = backup(lab)
    assert full["type"] == "full" and full["bytes_read"] == full["bytes_estimated"]
    # The host reports the disk's Windows path; the lab file behind it is what the backup read.
    with open_disk(LabTransport(lab[0], "h19").local(vm_facts(lab)["disks"][0]["path"])) as disk:
        allocated = sum(n for _o, n in disk.allocated_ranges())
    assert full["bytes_read"] == allocated
    lab_admin.churn(LabLayout(lab[0], "h19"), "rctvm", seed=5, write_size=4096, offsets=[0, 2 * MiB + 8192])
    incr = backup(lab)
    assert incr["type"] == "incremental" and incr["parent_backup_id"] == full["backup_id"]
    assert 2 * 4096 <= incr["bytes_read"] <= 2 * CHUNK
    assert incr["bytes_written"] > 0
    record = lab[1].get_backup(incr["backup_id"])
    assert record.consistency == "application"
    assert record.metadata["configuration"]["name"] == "rctvm"
    assert vm_facts(lab)["checkpoints"] == [] and len(vm_facts(lab)["reference_points"]) == 1


def test_vss_incremental_stores_only_changed_chunks(lab):
    full = backup(lab, host="h12", vm="vssvm")
    lab_admin.churn(LabLayout(lab[0], "h12"), "vssvm", seed=6, write_size=4096, offsets=[CHUNK])
    incr = backup(lab, host="h12", vm="vssvm")
    assert (full["method"], incr["method"], incr["type"]) == ("vss", "vss", "incremental")
    assert incr["bytes_read"] == full["bytes_read"]
    assert incr["bytes_new"] == CHUNK
    disk = incr["disks"][0]
    # every chunk read is either equal to the parent's (reused), zero, or the one the guest changed
    assert disk["new_chunks"] == 1 and disk["unchanged_chunks_compared"] > 0
    assert disk["unchanged_chunks_compared"] + disk["zero_chunks"] + disk["new_chunks"] == disk["bytes_read"] // CHUNK


def test_failure_mid_copy_leaves_no_backup_and_no_recovery_point(lab):
    options = CopyOptions(fault_after_chunks=3)
    with pytest.raises(HyperVBackupError, match="Injected fault"):
        backup(lab, options=options)
    assert lab[1].list_backups(include_in_progress=True) == []
    assert vm_facts(lab)["checkpoints"] == []
    assert backup(lab)["type"] == "full"      # and the next run works


def test_a_missing_disk_file_fails_cleanly(lab, monkeypatch):
    real = backup_engine.open_source_disk

    def vanished(location, *args, **kwargs):
        raise HyperVBackupError("%s: cannot open the file: No such file or directory" % location.path)

    monkeypatch.setattr(backup_engine, "open_source_disk", vanished)
    with pytest.raises(HyperVBackupError, match="No such file"):
        backup(lab)
    monkeypatch.setattr(backup_engine, "open_source_disk", real)
    assert lab[1].list_backups(include_in_progress=True) == [] and vm_facts(lab)["checkpoints"] == []


class RemovePointMidCopy(ProgressReporter):
    """Progress of a copy that, after ``after_chunks`` chunks, takes the run's recovery point away through a second
    session on the host, as another run, an admin or another product would while the copy runs.

    ``how``: 'point' removes the whole point (remove_recovery_point), 'shadow' deletes only a VSS point's shadow copy
    set (vssadmin / diskshadow by another product), leaving our marker behind."""

    def __init__(self, lab, host, vm, how="point", after_chunks=2):
        super().__init__()
        self.params = dict(transport="lab", host=host, lab_directory=lab[0])
        self.vm, self.how, self.after = vm, how, after_chunks * CHUNK
        self.seen = 0
        self.removed = None
        self.lock = threading.Lock()

    def advance(self, nbytes):
        super().advance(nbytes)
        with self.lock:
            self.seen += nbytes
            if self.removed is not None or self.seen < self.after:
                return
            with HostSession.from_module_params(self.params) as other:
                vm_id = other.run("get_vms", names=[self.vm])[0]["id"]
                point = [p for p in other.run("get_recovery_points", vm_id=vm_id) if p.get("ours")][0]
                if self.how == "shadow":
                    other.bridge.diskshadow("delete shadows set {%s}\r\n" % point["shadow_set_id"])
                else:
                    other.run("remove_recovery_point", vm_id=vm_id, id=point["id"])
            self.removed = point["id"]


@pytest.mark.parametrize("host, vm, how", [("h19", "rctvm", "point"), ("h12", "vssvm", "point"), ("h12", "vssvm", "shadow")])
def test_a_recovery_point_removed_during_the_copy_fails_the_backup(lab, host, vm, how):
    full = backup(lab, host=host, vm=vm)
    # guest writes after the point: the ones a removed RCT point merges into the file the copy reads
    lab_admin.churn(LabLayout(lab[0], host), vm, seed=8, write_size=4096, offsets=[0, CHUNK, 2 * MiB])
    remover = RemovePointMidCopy(lab, host, vm, how)
    # one copy thread and a full copy: the point goes away between two chunk reads, with most of the copy still to come
    with pytest.raises(HyperVBackupError) as caught:
        backup(lab, host=host, vm=vm, options=CopyOptions(workers=1, progress=remover), type="full")
    assert remover.removed and remover.removed in str(caught.value)
    assert "was not committed" in str(caught.value) and "during the copy" in str(caught.value) and caught.value.hint
    assert [r.backup_id for r in lab[1].list_backups(include_in_progress=True)] == [full["backup_id"]]
    with HostSession.from_module_params(dict(transport="lab", host=host, lab_directory=lab[0])) as session:
        vm_id = session.run("get_vms", names=[vm])[0]["id"]
        assert [p["id"] for p in session.run("get_recovery_points", vm_id=vm_id)] == []    # a half-gone VSS point too
    assert backup(lab, host=host, vm=vm)["type"] in ("full", "incremental")     # and the next run works


class CountingSource:
    """A fake source disk that records how many reads run at once."""

    def __init__(self, size):
        self.virtual_size = size
        self.lock = threading.Lock()
        self.active = 0
        self.peak = 0

    def readinto(self, offset, buf):
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        buf[:8] = offset.to_bytes(8, "little")      # distinct non-zero chunks
        with self.lock:
            self.active -= 1


class SlowWriter:
    """A DiskWriter stand-in: counts chunks alive between read and store."""

    def __init__(self, copier):
        self.copier = copier
        self.lock = threading.Lock()
        self.stored = []

    def put_chunk(self, index, data):
        with self.lock:
            self.stored.append(index)


def test_in_flight_chunks_are_bounded_whatever_the_disk_size(lab):
    repo = lab[1]
    options = CopyOptions(workers=4)
    copier = ChunkCopier(repo, options)
    assert copier.in_flight * repo.chunk_size <= backup_engine.MAX_IN_FLIGHT_BYTES
    big = Repository.__new__(Repository)
    big.chunk_size = 64 * MiB
    big.keys = repo.keys
    assert ChunkCopier(big, CopyOptions(workers=64)).in_flight == 2    # 64 MiB chunks: 2 in flight
    source = CountingSource(500 * CHUNK)
    writer = SlowWriter(copier)
    copier.copy(source, writer, list(range(500)))
    assert sorted(writer.stored) == list(range(500))
    assert source.peak <= options.workers
    assert copier.read_bytes == 500 * CHUNK


def test_run_id_is_stored_with_the_backup_and_groups_it_in_reports(lab, monkeypatch):
    named = []
    real_create = backup_engine.rp.create_recovery_point

    def create(session, vm, method, consistency, run_id, **kwargs):
        named.append(run_id)
        return real_create(session, vm, method, consistency, run_id, **kwargs)

    monkeypatch.setattr(backup_engine.rp, "create_recovery_point", create)
    first = backup(lab, run_id="nightly-42")
    lab_admin.churn(LabLayout(lab[0], "h19"), "rctvm", seed=7, write_size=4096, offsets=[0])
    second = backup(lab, run_id="nightly-42")
    assert first["run_id"] == second["run_id"] == "nightly-42"
    records = [lab[1].get_backup(r["backup_id"]) for r in (first, second)]
    assert [r.metadata["run_id"] for r in records] == ["nightly-42", "nightly-42"]
    runs = report.history_from_catalog([r.as_dict() for r in records])
    assert [(run["run_id"], run["vms"]) for run in runs] == [("nightly-42", 1)]
    assert named == ["nightly-42", "nightly-42"]        # the recovery points were named after the run


def test_run_id_comes_from_the_environment_or_stays_empty(lab, monkeypatch):
    monkeypatch.delenv(backup_engine.RUN_ID_ENV, raising=False)
    monkeypatch.delenv(backup_engine.AWX_JOB_ENV, raising=False)
    plain = backup(lab)
    assert plain["run_id"] == "" and lab[1].get_backup(plain["backup_id"]).metadata["run_id"] is None
    assert vm_facts(lab)["checkpoints"] == [] and plain["recovery_point_id"]    # a point was still made and handed back
    monkeypatch.setenv(backup_engine.AWX_JOB_ENV, "1234")
    assert backup(lab)["run_id"] == "awx-job-1234"
    monkeypatch.setenv(backup_engine.RUN_ID_ENV, "from-env")
    assert backup(lab)["run_id"] == "from-env"
    assert backup(lab, run_id="given")["run_id"] == "given"      # the task's own wins
    assert backup_engine.run_id_from_environment({"JOB_ID": "not-a-number"}) == ""


def test_bad_run_id_and_negative_knobs_are_refused_before_anything_happens(lab):
    with pytest.raises(HyperVBackupError, match="run_id") as caught:
        backup(lab, run_id="../../etc")
    assert "letters, digits" in str(caught.value)
    with pytest.raises(HyperVBackupError, match="read_rate_limit"):
        CopyOptions(read_rate_limit=-1)
    with pytest.raises(HyperVBackupError, match="workers"):
        CopyOptions(workers=-2)
    assert CopyOptions(read_rate_limit=0).limiter.waited_seconds == 0
    assert lab[1].list_backups(include_in_progress=True) == [] and vm_facts(lab)["checkpoints"] == []
