"""A copy killed with SIGKILL and run again (issue 15): after every kill only complete copies are listed in the target
(each verifies and restores exactly), and the last run finishes the rest; a run after that copies nothing.

The copy runs in a child process that kills itself at the N-th object it writes to the target (N drawn at random
from the writes a whole copy makes), or is killed by the test at a random moment; then the next run resumes.
"""
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.repository import repository_copy
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository

from s3_server import S3Server
from test_repository import CHUNK, FAST_KDF, read_all
from test_repository_copy import source_with_chain

pytestmark = pytest.mark.reliability

COPIER = r"""
import json, os, signal, sys, time
from ansible_collections.hyperv.backup.plugins.module_utils.repository import repository_copy
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository
args = json.loads(sys.argv[1])
source = Repository.open(args["source"], passphrase="source pass", s3_options=args["source_s3"])
target = Repository.open(args["target"], passphrase="target pass", s3_options=args["target_s3"])
writes = [0]
real_put = target.store.put
def put(key, data, **kw):
    writes[0] += 1
    if writes[0] == args["kill_at"]:
        os.kill(os.getpid(), signal.SIGKILL)       # die just before this write reaches the store
    time.sleep(args["delay"])                      # stretch the copy so that a kill at a random moment lands inside it
    return real_put(key, data, **kw)
target.store.put = put
print("READY", flush=True)
report = repository_copy.copy_backups(source, target, verify=False)
print("DONE " + json.dumps({"copied": len(report["copied"]), "writes": writes[0]}), flush=True)
"""


@pytest.fixture(scope="module")
def s3_server():
    server = S3Server().start()
    yield server
    server.stop()


def run_copier(args, kill_after=None, timed=None):
    """Run the copy in a child; ``kill_after``: seconds after it is ready to SIGKILL it. Returns (killed, out).

    ``timed``: a list that receives the seconds from ready to exit, for drawing kill moments inside a copy.
    """
    child = subprocess.Popen([sys.executable, "-c", COPIER, json.dumps(args)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "READY"
    ready = time.monotonic()
    if kill_after is not None:
        time.sleep(kill_after)
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
    # Not communicate(): with a timeout it reads the pipe's descriptor, and a line that readline() above already
    # buffered with READY (a quick run prints READY and DONE together) would be lost.
    guard = threading.Timer(120, child.kill)
    guard.start()
    try:
        out = child.stdout.read()
        child.wait()
    finally:
        guard.cancel()
    if timed is not None:
        timed.append(time.monotonic() - ready)
    assert child.returncode in (0, -signal.SIGKILL), out
    return child.returncode == -signal.SIGKILL, out


def only_complete_copies_listed(source, target, images_by_id):
    """Every backup the target lists is a whole copy: it verifies and restores byte for byte."""
    listed = [r.backup_id for r in target.list_backups()]
    assert set(listed) <= set(images_by_id)
    if listed:
        report = target.verify(listed, record_status=False)
        assert report["ok"], report
    for backup_id in listed:
        assert read_all(target, backup_id) == images_by_id[backup_id]
        assert target.get_backup(backup_id).created == source.get_backup(backup_id).created
    return listed


@pytest.mark.parametrize("keys,backend,mode", [
    ("same", "local", "at_writes"), ("different", "local", "at_writes"), ("different", "s3", "at_writes"),
    ("same", "s3", "at_moments"), ("different", "local", "at_moments"),
])
def test_copy_killed_at_random_points_resumes_and_lists_only_complete_copies(tmp_path, s3_server, keys, backend, mode):
    rng = random.Random("%s-%s-%s" % (keys, backend, mode))
    if backend == "local":
        (src, src_s3), (dst, dst_s3) = (str(tmp_path / "src"), None), (str(tmp_path / "dst"), None)
    else:
        (src, src_s3), (dst, dst_s3) = s3_server.new_bucket(prefix="src"), s3_server.new_bucket(prefix="dst")
    source = Repository.init(src, passphrase="source pass", s3_options=src_s3, chunk_size=CHUNK, scrypt_params=FAST_KDF)
    records, images = source_with_chain(source)
    images_by_id = dict((r.backup_id, data) for r, data in zip(records, images))

    def new_target(location, s3_options):
        if keys == "same":
            return repository_copy.init_with_keys_of(source, location, passphrase="target pass", s3_options=s3_options,
                                                     scrypt_params=FAST_KDF)
        return Repository.init(location, passphrase="target pass", s3_options=s3_options, chunk_size=CHUNK, scrypt_params=FAST_KDF)

    # how many writes a whole copy makes (to a scratch target of the same kind)
    scratch = new_target(*((str(tmp_path / "scratch"), None) if backend == "local" else s3_server.new_bucket(prefix="scratch")))
    # a delay stretches each write so that a kill at a random moment lands inside the copy; the writes run in
    # parallel, so the moments are drawn from how long a whole stretched copy took, not from writes x delay
    delay = 0.03 if mode == "at_moments" else 0
    args = {"source": src, "source_s3": src_s3, "target": scratch.location, "target_s3": dst_s3, "kill_at": -1, "delay": delay}
    whole_copy = []
    killed, out = run_copier(args, timed=whole_copy)
    total = json.loads(out.split("DONE ", 1)[1])["writes"]
    assert not killed and total > 20

    target = new_target(dst, dst_s3)
    args.update(target=dst)
    kills, seen = 0, []
    for _attempt in range(6):
        if mode == "at_writes":
            args["kill_at"] = rng.randrange(1, total)
            killed, out = run_copier(args)
        else:
            # the first moment falls in the first half of a whole copy, later ones anywhere in what is left
            share = 0.5 if _attempt == 0 else 1.0
            killed, out = run_copier(args, kill_after=rng.uniform(0.0, share * whole_copy[0]))
        kills += killed
        seen.append(len(only_complete_copies_listed(source, Repository.open(dst, passphrase="target pass", s3_options=dst_s3),
                                                    images_by_id)))
        if not killed:
            break
    assert kills >= 1, "no run was killed: %s" % out
    args.update(kill_at=-1, delay=0)
    killed, out = run_copier(args)
    assert not killed and "DONE" in out
    final = Repository.open(dst, passphrase="target pass", s3_options=dst_s3)
    assert sorted(only_complete_copies_listed(source, final, images_by_id)) == sorted(images_by_id)
    assert final.verify()["ok"]
    for record in records:
        assert final.get_backup(record.backup_id).parent_backup_id == record.parent_backup_id
    again = repository_copy.copy_backups(source, final)
    assert again["copied"] == [] and again["chunks_uploaded"] == 0
    assert seen == sorted(seen)         # copies only ever appear, never vanish
