"""Crash safety: a writer process killed with SIGKILL at several points leaves no visible backup and a
consistent repository (verify passes, the next backup succeeds), on the local and the S3 backend."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.repository import Repository

from s3_server import S3Server
from test_repository import CHUNK, image, read_all, write_backup

WRITER = r"""
import json, os, signal, sys, time
from ansible_collections.hyperv.backup.plugins.module_utils.repository import Repository
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
    assert repo.gc(grace_seconds=0)["chunks_removed"] == 0    # the dead writer's marker is still live: kept
    assert repo.verify()["ok"]
    assert read_all(repo, before.backup_id) == image(30, chunks=6)
