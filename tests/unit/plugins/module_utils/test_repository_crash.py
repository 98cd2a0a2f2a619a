"""Crash safety: a writer process killed with SIGKILL at several points leaves no visible backup and a
consistent repository (verify passes, the next backup succeeds), on the local and the S3 backend."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository

from s3_server import S3Server
from storage_age import age
from test_repository import CHUNK, image, read_all, write_backup

pytestmark = pytest.mark.reliability

WRITER = r"""
import json, os, signal, sys, time
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository
args = json.loads(sys.argv[1])
repo = Repository.open(args["location"], s3_options=args["s3_options"])
point = args["point"]
real_put = repo.store.put
def put(key, data, **kw):
    if key.startswith(point + "/"):
        os.kill(os.getpid(), signal.SIGKILL)       # die at the moment the first object of this kind is written
    return real_put(key, data, **kw)
repo.store.put = put
session = repo.begin_backup(vm_id="vm-crash", vm_name="crashy", host="hv1", method="rct", backup_type="full")
disk = session.add_disk(disk_key="disk0", virtual_size=40 * args["chunk"])
for index in range(40):
    disk.put_chunk_async(index, os.urandom(args["chunk"]))
    if index == 10:
        print("READY", flush=True)
    time.sleep(0.01)
session.commit()
print("COMMITTED", flush=True)
"""


@pytest.fixture(scope="module")
def s3_server():
    server = S3Server().start()
    yield server
    server.stop()


@pytest.mark.parametrize("backend", ["local", "s3"])
@pytest.mark.parametrize("point", ["chunks-midway", "manifests", "backups"])
def test_killed_writer_leaves_repository_consistent(backend, point, tmp_path, s3_server):
    if backend == "local":
        location, s3_options = str(tmp_path / "repo"), None
    else:
        location, s3_options = s3_server.new_bucket()
    repo = Repository.init(location, s3_options=s3_options, chunk_size=CHUNK)
    before = write_backup(repo, image(30, chunks=6), vm_id="vm-ok", vm_name="fine")
    args = {"location": location, "s3_options": s3_options, "chunk": CHUNK,
            "point": "never" if point == "chunks-midway" else point}
    child = subprocess.Popen([sys.executable, "-c", WRITER, json.dumps(args)], stdout=subprocess.PIPE, text=True)
    if point == "chunks-midway":
        assert child.stdout.readline().strip() == "READY"
        time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    out, _err = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL, out
    assert "COMMITTED" not in out

    assert [r.backup_id for r in repo.list_backups()] == [before.backup_id]     # nothing new is visible
    assert [r.state for r in repo.list_backups(include_in_progress=True) if r.vm_id == "vm-crash"] == ["in_progress"]
    report = repo.verify()
    assert report["ok"] and report["backups_checked"] == 1
    after = write_backup(repo, image(31, chunks=6), vm_id="vm-crash", vm_name="crashy")
    assert read_all(repo, after.backup_id) == image(31, chunks=6)
    age(repo.store, "chunks/", 3600)
    assert repo.gc()["chunks_removed"] == 0    # the dead writer's marker is still live: kept
    assert repo.verify()["ok"]
    assert read_all(repo, before.backup_id) == image(30, chunks=6)


CONCURRENT_WRITER = r"""
import json, os, random, sys
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository
args = json.loads(sys.argv[1])
repo = Repository.open(args["location"], s3_options=args["s3_options"])
chunk = args["chunk"]
shared = random.Random(7).randbytes(chunk * 6)                      # the same in every writer: dedup across processes
own = random.Random(args["seed"]).randbytes(chunk * 6)
data = b"".join(shared[i * chunk:(i + 1) * chunk] + own[i * chunk:(i + 1) * chunk] for i in range(6))
for round_ in range(args["rounds"]):
    with repo.begin_backup(vm_id="vm-%d" % args["seed"], vm_name="w%d" % args["seed"], host="hv", method="rct",
                           backup_type="full") as session:
        disk = session.add_disk(disk_key="disk0", virtual_size=len(data))
        for index in range(disk.chunk_count):
            disk.put_chunk_async(index, data[index * chunk:(index + 1) * chunk])
        record = session.commit()
print(json.dumps({"backup_id": record.backup_id}))
"""


@pytest.mark.parametrize("backend", ["local", pytest.param("s3", marks=pytest.mark.slow)])
def test_concurrent_writers_and_prune(backend, tmp_path, s3_server):
    """Three writer processes back up different VMs (sharing half their data) while prune+GC run repeatedly."""
    from ansible_collections.hyperv.backup.plugins.module_utils.repository.retention import RetentionPolicy
    if backend == "local":
        location, s3_options = str(tmp_path / "repo"), None
    else:
        location, s3_options = s3_server.new_bucket()
    repo = Repository.init(location, s3_options=s3_options, chunk_size=CHUNK)
    writers = [subprocess.Popen([sys.executable, "-c", CONCURRENT_WRITER, json.dumps(
        {"location": location, "s3_options": s3_options, "chunk": CHUNK, "seed": seed, "rounds": 2})],
        stdout=subprocess.PIPE, text=True) for seed in (1, 2, 3)]
    prunes = 0
    while any(w.poll() is None for w in writers):
        age(repo.store, "chunks/", 3600)             # every chunk "old": only the protocol protects the writers' chunks
        age(repo.store, "manifests/", 3600)
        repo.prune(RetentionPolicy(keep_last=1), wait_seconds=30)
        prunes += 1
        time.sleep(0.2)
    outputs = [w.communicate(timeout=120)[0] for w in writers]
    assert [w.returncode for w in writers] == [0, 0, 0], outputs
    assert prunes >= 1
    report = repo.verify()
    assert report["ok"], report
    latest = dict((json.loads(out)["backup_id"], out) for out in outputs)
    listed = [r.backup_id for r in repo.list_backups()]
    assert set(latest) <= set(listed)
    age(repo.store, "chunks/", 3600)
    repo.prune(RetentionPolicy(keep_last=1))
    assert sorted(r.backup_id for r in repo.list_backups()) == sorted(latest)
    assert repo.verify()["ok"]
    for backup_id in latest:
        assert len(read_all(repo, backup_id)) == 12 * CHUNK
