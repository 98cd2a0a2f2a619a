"""Many proxies, one repository (issue 13): writers, prune and GC of independent proxies with skewed clocks.

Deterministic part: a writer (an incremental that reuses its parent's chunks, deduplicates against old chunks that
prune makes garbage and against chunks of the kept parent, and writes new ones), a prune (keep_last=1) and a GC run
as three proxies, each with its own Repository and its own clock, on a local directory and on S3 (moto server over
real HTTP). interleaving.py makes every store operation a step boundary; for every boundary k of one proxy the
others run whole at that point:

- ``writer-paused``: the writer stops before its k-th store operation, prune and GC run to the end, the writer ends;
- ``prune-paused``: prune stops at k, the writer runs whole, then prune and GC end;
- ``gc-paused``: prune ran, GC stops at k, the writer runs whole, GC ends.

After each interleaving: the writer committed or failed with a RepositoryError (never committed a backup with a
missing chunk); every listed backup verifies and restores to the bytes written; retention removed what it must.
Clocks: in sync, writer 15 min slow with prune/GC 15 min fast, and the reverse. The storage's time is never skewed;
the repository's history is made old by moving the objects' times back (interleaving.age_repository).

Multi-process part: three writer processes (clocks -15, 0, +15 min) back up into one S3 and one local repository
at the same time while a fourth process (clock +15 min) runs prune+GC in a loop; afterwards every backup
verifies and restores.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import uuid

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.errors import RepositoryError
from ansible_collections.hyperv.backup.plugins.module_utils.repository import repository as repository_module
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository
from ansible_collections.hyperv.backup.plugins.module_utils.repository.retention import RetentionPolicy

import interleaving
from interleaving import (
    CHUNK, Proxy, Scheduler, age_repository, check_repository, clone_repository, digest, disk_bytes, moto_bucket, own_state,
    proxy_clocks, resolve, schedule, shared_boto3_session, write_disk,
)
from s3_server import S3Server
from test_repository import FAST_KDF

pytestmark = [pytest.mark.reliability]

MINUTE = 60
HOUR = 3600

# The repository's history: B1 is three hours old, B2 (an incremental-free full of the same VM) twenty minutes.
# x1, x2: only in B1 (garbage once prune removes B1; old enough for any grace). s1, s2: in both. y1..y3: only in B2.
B1 = ["x1", "x2", "s1", "s2"]
B2 = ["s1", "s2", "y1", "y2", "y3"]
# The writer: an incremental of B2 reusing indexes 0 and 2 (s1, y1), deduplicating x1 and x2 (B1 only), y2 (B2), a
# new chunk z1 written twice, a zero chunk.
WRITER = ["reuse", "x1", "reuse", "z1", "y2", "x2", "z1", "zero"]

SKEWS = {                      # clock offsets of (writer, prune, gc)
    "in-sync": (0, 0, 0),
    "writer-slow": (-15 * MINUTE, 15 * MINUTE, 15 * MINUTE),
    "writer-fast": (15 * MINUTE, -15 * MINUTE, -15 * MINUTE),
}
ROTATION = ["in-sync", "writer-slow", "writer-fast"]
# Local runs every boundary under every skew (~0.05 s an interleaving). On S3 an interleaving costs ~100 requests
# (~0.5 s on moto): every boundary runs once, the skew rotating with k ("rotating"); HYPERV_MANY_PROXIES_FULL=1 runs
# the full product there too (about three times as long).
CASES = [("local", skew) for skew in ROTATION] + (
    [("s3", skew) for skew in ROTATION] if os.environ.get("HYPERV_MANY_PROXIES_FULL") else [("s3", "rotating")])


def skew_at(skew, k):
    return SKEWS[ROTATION[k % len(ROTATION)] if skew == "rotating" else skew]


def plans(direction, writer, prune, gc, k):
    return {
        "writer-paused": [(writer, k), (prune, None), (gc, None), (writer, None)],
        "prune-paused": [(prune, k), (writer, None), (prune, None), (gc, None)],
        "gc-paused": [(prune, None), (gc, k), (writer, None), (gc, None)],
    }[direction]


def gc_grace():
    """The grace period GC runs with: the default (the code may raise it to its enforced minimum)."""
    return repository_module.DEFAULT_GC_GRACE_SECONDS


@pytest.fixture(scope="module")
def s3_server():
    server = S3Server().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def boto3_cache():
    with shared_boto3_session():
        yield


class Backend:
    """Fresh repository locations on one backend, and their removal."""

    def __init__(self, kind, root, s3_server):
        self.kind, self.root, self.s3_server = kind, root, s3_server
        self.client = s3_server.client() if kind == "s3" else None
        self.options = s3_server.options if kind == "s3" else None

    def new_location(self):
        if self.kind == "local":
            return str(self.root / ("repo-%s" % uuid.uuid4().hex[:12]))
        location, _options = self.s3_server.new_bucket()
        return location

    def remove(self, location):
        if self.kind == "local":
            shutil.rmtree(location, ignore_errors=True)
            return
        bucket = moto_bucket(location[len("s3://"):].split("/", 1)[0])
        for name in list(bucket.keys.keys()):
            bucket.keys.pop(name)
        self.client.delete_bucket(Bucket=bucket.name)

    def open(self, location, **kwargs):
        return Repository.open(location, s3_options=self.options, **kwargs)


@pytest.fixture(autouse=True)
def proxy_state(tmp_path, monkeypatch):
    """This test process is a proxy too (it builds and checks repositories): its state stays in the test's directory."""
    monkeypatch.setenv("HYPERV_BACKUP_STATE_DIR", str(tmp_path / "state-test"))


@pytest.fixture
def backends(tmp_path, s3_server, boto3_cache):
    return lambda kind: Backend(kind, tmp_path, s3_server)


def make_base(backend):
    """The repository every interleaving starts from (cloned, object times included). Returns (location, ids)."""
    location = backend.new_location()
    repo = Repository.init(location, chunk_size=CHUNK, s3_options=backend.options)
    b1 = write_disk(repo, "vm-a", "alpha", B1)
    age_repository(location, 3 * HOUR - 20 * MINUTE)
    b2 = write_disk(repo, "vm-a", "alpha", B2)
    age_repository(location, 20 * MINUTE)
    return location, {"b1": b1.backup_id, "b2": b2.backup_id}


def run_interleaving(backend, base, ids, direction, skew, k):
    """One interleaving on a clone of ``base``: whether the plan paused at k, the problems found, notes, the scheduler (its
    trace), the chunks GC removed and whether the writer committed."""
    location = clone_repository(base, backend.new_location())
    writer, prune, gc = (Proxy(name, offset) for name, offset in zip(("writer", "prune", "gc"), skew_at(skew, k)))
    scheduler = Scheduler(plans(direction, writer, prune, gc, k))
    # each proxy keeps its own state (what it has seen of the repository), fresh for every clone of the same repository
    state = backend.root / ("state-" + uuid.uuid4().hex[:12])
    repos = dict((proxy, schedule(backend.open(location, workers=1), proxy, scheduler, state_dir=str(state / proxy.name)))
                 for proxy in (writer, prune, gc))

    def write():
        repo = repos[writer]
        parent = repo.get_backup(ids["b2"])             # the parent's state from the repository, not from a cache
        manifest = repo.load_disk_manifest(ids["b2"], "disk0", parent)
        return write_disk(repo, "vm-a", "alpha", WRITER, parent=(ids["b2"], manifest))

    targets = {writer: write,
               prune: lambda: repos[prune].prune(RetentionPolicy(keep_last=1), gc=False),
               gc: lambda: repos[gc].gc(grace_seconds=gc_grace())}
    with proxy_clocks():
        scheduler.run(targets)
    reached = bool(scheduler.paused)
    problems, notes = [], []
    for proxy in (writer, prune, gc):
        if proxy.error is None:
            continue
        if isinstance(proxy.error, RepositoryError):
            notes.append("%s failed clearly: %s" % (proxy.name, proxy.error.message))
        else:
            problems.append("%s raised %s" % (proxy.name, getattr(proxy, "error_trace", repr(proxy.error)).strip().splitlines()[-1]))
    expected = {ids["b1"]: digest(disk_bytes(B1)), ids["b2"]: digest(disk_bytes(B2))}
    must_list, must_not_list = [], []
    if writer.error is None:
        expected[writer.result.backup_id] = digest(disk_bytes(resolve(WRITER, B2)))
        must_list.append(writer.result.backup_id)
    if prune.error is None:
        must_not_list.append(ids["b1"])
    removed = gc.result.get("chunks_removed", 0) if isinstance(gc.result, dict) else 0
    notes.append("gc removed %d chunk(s)" % removed)
    with proxy_clocks():
        checker = backend.open(location)
        own_state(checker, str(state / "checker"))
        problems.extend(check_repository(checker, expected, must_list, must_not_list))
    backend.remove(location)
    shutil.rmtree(str(state), ignore_errors=True)
    return {"reached": reached, "problems": problems, "notes": notes, "scheduler": scheduler, "gc_removed": removed,
            "committed": writer.error is None}


@pytest.mark.parametrize("kind,skew", CASES)
@pytest.mark.parametrize("direction", ["writer-paused", "prune-paused", "gc-paused"])
def test_every_interleaving_keeps_every_backup_whole(backends, kind, direction, skew):
    backend = backends(kind)
    base, ids = make_base(backend)
    failures, summary = [], []
    removed = committed = 0
    k = 0
    while True:
        outcome = run_interleaving(backend, base, ids, direction, skew, k)
        reached, problems, notes, scheduler = outcome["reached"], outcome["problems"], outcome["notes"], outcome["scheduler"]
        removed += outcome["gc_removed"]
        committed += outcome["committed"]
        clocks = ROTATION[k % len(ROTATION)] if skew == "rotating" else skew
        summary.append("k=%d %s: %s%s" % (k, clocks, "; ".join(notes) or "ok", (" PROBLEMS: " + "; ".join(problems)) if problems else ""))
        if problems:
            steps = ", ".join("%s:%s" % (name, label) for name, label, _ops, blocked in scheduler.trace if not blocked)
            failures.append("k=%d (%s): %s\n    steps: %s" % (k, clocks, "; ".join(problems), steps))
        if not reached or k > 400:
            break
        k += 1
    backend.remove(base)
    print("\n%s %s %s: %d interleavings\n  %s" % (backend.kind, direction, skew, k + 1, "\n  ".join(summary)))
    assert not failures, "%d of %d interleavings (%s, %s, %s) lost data or failed unclearly:\n%s" % (
        len(failures), k + 1, backend.kind, direction, skew, "\n".join(failures))
    # a harness in which GC never deletes or the writer never commits would prove nothing
    assert removed and committed, "GC removed %d chunk(s) and the writer committed %d time(s) over all interleavings" % (removed, committed)


def test_the_same_plan_gives_the_same_interleaving(backends):
    """The harness is deterministic: one plan, run twice, makes the same store operations in the same order."""
    backend = backends("local")
    base, ids = make_base(backend)
    traces = []
    for _run in range(2):
        outcome = run_interleaving(backend, base, ids, "writer-paused", "writer-slow", 9)
        assert outcome["reached"] and not outcome["problems"]
        traces.append([(name, re.sub(r"\d{8}T\d{6}Z-[0-9a-f]{12}", "<backup id>", label), blocked)
                       for name, label, _ops, blocked in outcome["scheduler"].trace])
    assert traces[0] == traces[1]
    names = [name for name, _label, _blocked in traces[0]]
    assert names.index("prune") > 0 and "writer" in names[names.index("gc"):]     # paused, then resumed after prune+GC


# -- several processes at once --------------------------------------------------------------------------------------

PASSPHRASE = "many proxies, one repository"
WRITERS = [("proxy-a", -15 * MINUTE, "vm-1"), ("proxy-b", 0, "vm-2"), ("proxy-c", 15 * MINUTE, "vm-3")]
PRUNER_OFFSET = 15 * MINUTE
# What the rounds of every writer share: chunks only in the pruned base backups (old garbage), chunks of kept
# base backups (twenty minutes old), and chunks the writers write concurrently.
SHARED = [["common-0", "shared-old", "pool-0"], ["common-1", "pool-0", "pool-1"], ["common-2", "shared-old", "pool-2"]]


def base_layouts(vm_id):
    return ([vm_id + "-base-0", vm_id + "-base-1", "common-0", "common-1"],
            [vm_id + "-b1-0", "common-1", "common-2", "shared-old"])


@pytest.mark.slow
@pytest.mark.frozen_guard(passphrase=PASSPHRASE)
def test_three_proxy_processes_and_a_pruner_lose_nothing(tmp_path, s3_server, boto3_cache):
    locations = [{"location": str(tmp_path / "shared-local")}]
    s3_location, s3_options = s3_server.new_bucket()
    locations.append({"location": s3_location, "s3_options": s3_options})
    names = {}                                    # backup id -> chunk names
    for entry in locations:
        repo = Repository.init(entry["location"], passphrase=PASSPHRASE, chunk_size=CHUNK, s3_options=entry.get("s3_options"),
                               scrypt_params=FAST_KDF)
        for _name, _offset, vm_id in WRITERS:
            old, _recent = base_layouts(vm_id)
            names[write_disk(repo, vm_id, vm_id, old).backup_id] = old
        age_repository(entry["location"], 3 * HOUR - 20 * MINUTE)
        for _name, _offset, vm_id in WRITERS:
            _old, recent = base_layouts(vm_id)
            names[write_disk(repo, vm_id, vm_id, recent).backup_id] = recent
        age_repository(entry["location"], 20 * MINUTE)
    stop_file = str(tmp_path / "stop")
    script = interleaving.__file__
    common = {"locations": locations, "passphrase": PASSPHRASE, "stop_file": stop_file}
    procs = []
    for name, offset, vm_id in WRITERS:
        spec = dict(common, name=name, offset=offset, role="writer", vm_id=vm_id, vm_name=vm_id, rounds=3, shared=SHARED,
                    names=names, result_file=str(tmp_path / (name + ".json")), state_dir=str(tmp_path / ("state-" + name)))
        procs.append((spec, subprocess.Popen([sys.executable, script, "proxy", json.dumps(spec)])))
    pruner = dict(common, name="pruner", offset=PRUNER_OFFSET, role="pruner", keep_last=1, grace_seconds=gc_grace(),
                  result_file=str(tmp_path / "pruner.json"), state_dir=str(tmp_path / "state-pruner"))
    pruner_proc = subprocess.Popen([sys.executable, script, "proxy", json.dumps(pruner)])
    try:
        for _spec, proc in procs:
            assert proc.wait(timeout=120) == 0
        with open(stop_file, "w"):
            pass
        assert pruner_proc.wait(timeout=120) == 0
    finally:
        for proc in [p for _s, p in procs] + [pruner_proc]:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    problems, committed, last = [], {}, {}
    for spec, _proc in procs + [(pruner, pruner_proc)]:
        with open(spec["result_file"]) as handle:
            results = json.load(handle)
        for item in results:
            if "crashed" in item:
                problems.append("%s crashed: %s" % (spec["name"], item["crashed"].strip().splitlines()[-1]))
            elif "failed" in item:
                problems.append("%s: %s failed: %s" % (spec["name"], item["location"], item["failed"]))
            elif "backup_id" in item:
                names[item["backup_id"]] = item["names"]
                committed.setdefault(item["location"], []).append(item["backup_id"])
                last[(item["location"], spec["vm_id"])] = item["backup_id"]
        if spec["role"] == "pruner":
            removed = sum(item.get("chunks_removed", 0) for item in results)
            print("pruner: %d runs, %d chunks removed" % (len(results), removed))
    expected = dict((backup_id, digest(disk_bytes(chunks))) for backup_id, chunks in names.items())
    with proxy_clocks():
        for entry in locations:
            repo = Repository.open(entry["location"], passphrase=PASSPHRASE, s3_options=entry.get("s3_options"))
            must_list = [backup_id for (location, _vm), backup_id in last.items() if location == entry["location"]]
            problems.extend("%s: %s" % (entry["location"], p) for p in check_repository(repo, expected, must_list))
    assert sum(len(ids) for ids in committed.values()) == 2 * 3 * len(WRITERS) or problems
    assert not problems, "\n".join(problems)
