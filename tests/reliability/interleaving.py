"""Deterministic interleaving of independent repository proxies (issue 13, "Many proxies, one repository").

Several proxies (a backup writer, a prune, a GC) each hold their OWN ``Repository`` (own store object, own state, own
clock), as separate AWX execution nodes would. Every store operation of a proxy is a step boundary: the proxy's
store is wrapped by ``ScheduledStore``, whose methods first ask the ``Scheduler`` for the turn. Each proxy runs in its
own thread, but only the proxy holding the turn runs, and a plan of phases says who has it:
``[(writer, 7), (prune, None), (gc, None), (writer, None)]`` runs the writer up to (not including) its 8th store
operation, then prune and GC to the end, then the rest of the writer. Running the plan for every k gives every
interleaving of "the whole prune+GC at one point of the writer" (and the reverse), the same on every run.

Where a proxy waits for another (a polling ``time.sleep`` in the repository code, or a local flock guard the other
proxy holds), it yields the turn instead of blocking, so that a paused proxy never deadlocks the one that runs:
the flock guards of a LocalStore (``chunk_guard`` shared, ``sweep_guard`` exclusive) are modelled here, because a
real flock would block the thread that holds the turn. S3 guards are not modelled (they exclude nothing on S3).

Clocks: the repository modules read time through their module-level ``time`` (and ``utc_now``); ``proxy_clocks``
replaces those names with dispatchers that give each proxy thread its own offset (+-15 min), and if the stores or
the repository grow an injectable ``clock`` attribute it is set per proxy as well. The storage's own time is
never skewed: ``age_repository`` makes objects older (local: os.utime; S3: the LastModified of the moto server's
objects, moved back in process), which is what the passing of time looks like from the storage.

The same module is the program of one proxy process for the multi-process test: ``python interleaving.py
proxy <json>`` (see ``proxy_main``).
"""
import contextlib
import datetime
import functools
import hashlib
import json
import os
import random
import shutil
import sys
import threading
import time as real_time
import traceback

CHUNK = 64 * 1024
REAL_TIME = real_time.time
REAL_SLEEP = real_time.sleep


# -- proxies and their clocks ---------------------------------------------------------------------

class Proxy:
    """One proxy: a name, a clock offset, and what the scheduler knows of it."""

    def __init__(self, name, offset=0.0):
        self.name = name
        self.offset = float(offset)
        self.ops = 0                # store operations granted so far
        self.done = False
        self.blocked = False
        self.started = False
        self.result = None
        self.error = None
        self.scheduler = None
        self.thread = None

    def clock(self):
        return REAL_TIME() + self.offset

    def __repr__(self):
        return "Proxy(%s, %+ds, %d ops)" % (self.name, self.offset, self.ops)


_PROCESS_PROXY = Proxy("process")         # the clock of every thread no proxy claimed (a proxy process sets its offset)
_THREAD_PROXIES = {}                       # thread ident -> Proxy


def current_proxy():
    return _THREAD_PROXIES.get(threading.get_ident(), _PROCESS_PROXY)


def claim_thread(proxy):
    _THREAD_PROXIES[threading.get_ident()] = proxy


def release_thread():
    _THREAD_PROXIES.pop(threading.get_ident(), None)


class _ProxyTime:
    """Stands in for the module ``time`` inside the repository modules: ``time()`` is the calling proxy's clock,
    ``sleep()`` hands the turn to another proxy when one can run (a proxy that polls is waiting for the others)."""

    def __getattr__(self, name):
        return getattr(real_time, name)

    def time(self):
        return current_proxy().clock()

    def sleep(self, seconds):
        proxy = current_proxy()
        if proxy.scheduler is not None and proxy.scheduler.wait(proxy, "sleep %.2fs" % seconds, blocked=True):
            return
        REAL_SLEEP(seconds)


def _proxy_utc_now():
    return datetime.datetime.fromtimestamp(current_proxy().clock(), datetime.timezone.utc)


def repository_modules():
    from ansible_collections.hyperv.backup.plugins.module_utils.repository import (
        backup_record, backup_session, local_store, repository, repository_prune, repository_store, repository_verify, s3_store,
    )
    return [backup_record, backup_session, repository, repository_prune, repository_store, repository_verify, local_store, s3_store]


@contextlib.contextmanager
def proxy_clocks():
    """Give every proxy thread its own clock inside the repository modules (module-level ``time`` and ``utc_now``)."""
    saved = []
    proxy_time = _ProxyTime()
    for module in repository_modules():
        if getattr(module, "time", None) is real_time:
            saved.append((module, "time", module.time))
            module.time = proxy_time
        if callable(getattr(module, "utc_now", None)):
            saved.append((module, "utc_now", module.utc_now))
            module.utc_now = _proxy_utc_now
    try:
        yield
    finally:
        for module, name, value in reversed(saved):
            setattr(module, name, value)


def bind_clock(repo, proxy):
    """Point an injectable clock (``clock`` on the repository or its store, if the code has one) at the proxy's."""
    for owner in (repo, getattr(repo.store, "inner", repo.store)):
        if hasattr(owner, "clock"):
            owner.clock = proxy.clock


# -- the scheduler ----------------------------------------------------------------------------------

class StuckError(AssertionError):
    pass


class Scheduler:
    """Hands the turn from proxy to proxy at store-operation boundaries, following a plan of phases.

    ``plan``: [(proxy, limit)]: the first phase whose proxy is not done and has done fewer than ``limit`` operations
    (None: no limit) has the turn. A proxy that waits (``blocked``) gives the turn to the next proxy that can run; a
    proxy that makes progress wakes the waiting ones. When every remaining proxy waits, the one of the current phase
    really waits (its sleep runs)."""

    def __init__(self, plan, timeout=120.0, max_steps=50000):
        self.plan = list(plan)
        self.proxies = []
        for proxy, _limit in self.plan:
            if proxy not in self.proxies:
                self.proxies.append(proxy)
        self.cond = threading.Condition()
        self.turn = None
        self.trace = []
        self.timeout = timeout
        self.max_steps = max_steps
        self.guards = {}            # (location, name) -> {proxy: "shared"|"exclusive"}
        self.paused = set()         # proxies stopped by a phase limit before they were done

    def _runnable(self, proxy):
        return not proxy.done and not proxy.blocked

    def _pick(self):
        current = None
        for proxy, limit in self.plan:
            if proxy.done:
                continue
            if limit is not None and proxy.ops >= limit:
                self.paused.add(proxy)
                continue
            current = proxy
            break
        if current is None:   # every phase is over: whoever is left
            current = next((p for p in self.proxies if not p.done), None)
        if current is None or self._runnable(current):
            return current
        # the proxy of the phase waits for another: the next phase's proxy that can run, else anyone who can
        ordered = [p for p, _limit in self.plan] + self.proxies
        runnable = next((p for p in ordered if self._runnable(p)), None)
        return runnable or current

    def _hand_over(self, proxy):
        """Give the turn to whoever the plan picks; wait (cond held) until it comes back to ``proxy``."""
        self.turn = self._pick()
        self.cond.notify_all()
        deadline = REAL_TIME() + self.timeout
        while self.turn is not proxy:
            if not self.cond.wait(timeout=max(0.0, deadline - REAL_TIME())) and REAL_TIME() >= deadline:
                raise StuckError("interleaving stuck: %s waits for the turn held by %s; last steps: %s" % (
                    proxy.name, getattr(self.turn, "name", None), self.trace[-12:]))

    def wait(self, proxy, label, blocked=False):
        """A step boundary of ``proxy``: returns once it has the turn. With ``blocked`` (the proxy waits for another)
        returns False, without waiting, when no other proxy can run (the caller then waits for real)."""
        with self.cond:
            if len(self.trace) >= self.max_steps:
                raise StuckError("interleaving did not finish in %d steps: %s" % (self.max_steps, self.trace[-12:]))
            self.trace.append((proxy.name, label, proxy.ops, blocked))
            proxy.blocked = blocked
            if blocked:
                others = [p for p in self.proxies if p is not proxy and self._runnable(p)]
                if not others:
                    proxy.blocked = False
                    return False
            self._hand_over(proxy)
            proxy.blocked = False
            if not blocked:
                proxy.ops += 1
                for other in self.proxies:      # progress: whoever waited may go on now
                    other.blocked = False
            return True

    # -- modelled local flock guards --

    def acquire_guard(self, proxy, key, mode, label):
        while True:
            with self.cond:
                holders = self.guards.setdefault(key, {})
                others = dict((p, m) for p, m in holders.items() if p is not proxy)
                if not others or (mode == "shared" and all(m == "shared" for m in others.values())):
                    holders[proxy] = mode
                    return
            if not self.wait(proxy, label + " (waits for %s)" % ",".join(p.name for p in others), blocked=True):
                REAL_SLEEP(0.01)      # nobody else can run: the holder is itself waiting; wait for real

    def release_guard(self, proxy, key):
        with self.cond:
            self.guards.get(key, {}).pop(proxy, None)

    # -- running --

    def _body(self, proxy, target):
        claim_thread(proxy)
        try:
            with self.cond:
                proxy.started = True
                deadline = REAL_TIME() + self.timeout
                while self.turn is not proxy:
                    if not self.cond.wait(timeout=max(0.0, deadline - REAL_TIME())) and REAL_TIME() >= deadline:
                        raise StuckError("%s never got the turn" % proxy.name)
            proxy.result = target()
        except BaseException as err:    # pylint: disable=broad-except
            proxy.error = err
            proxy.error_trace = traceback.format_exc()
        finally:
            release_thread()
            with self.cond:
                proxy.done = True
                self.trace.append((proxy.name, "done" if proxy.error is None else "error %r" % (proxy.error,), proxy.ops, False))
                for other in self.proxies:
                    other.blocked = False
                self.turn = self._pick()
                self.cond.notify_all()

    def run(self, targets):
        """Run ``targets`` ({proxy: callable}) under the plan; returns when every proxy is done."""
        for proxy in self.proxies:
            proxy.scheduler = self
            proxy.thread = threading.Thread(target=self._body, args=(proxy, targets[proxy]), name="proxy-" + proxy.name)
            proxy.thread.start()
        with self.cond:
            self.turn = self._pick()
            self.cond.notify_all()
        deadline = REAL_TIME() + self.timeout
        for proxy in self.proxies:
            proxy.thread.join(max(0.1, deadline - REAL_TIME()))
        stuck = [p.name for p in self.proxies if p.thread.is_alive()]
        for proxy in self.proxies:
            proxy.scheduler = None
        for ident, proxy in list(_THREAD_PROXIES.items()):     # pool threads that ran for a proxy: their idents get reused
            if proxy in self.proxies:
                _THREAD_PROXIES.pop(ident, None)
        if stuck:
            raise StuckError("proxies %s did not finish; last steps: %s" % (stuck, self.trace[-12:]))


# -- the store wrapper ----------------------------------------------------------------------------

_LOCAL_GUARDS = {"chunk_guard": "shared", "sweep_guard": "exclusive"}
# Calls that change nothing another proxy can see, so a boundary before them is the same interleaving as the one after:
# the step hook, reading the storage's clock, and flush (an fsync; nothing else in this process can tell).
_NOT_BOUNDARIES = {"step", "now", "sync_clock", "flush"}


class _SteppedContext:
    """A context manager of the store (a lock or guard): entering and leaving are step boundaries."""

    def __init__(self, store, name, inner, guard_key=None, mode=None):
        self.store, self.name, self.inner, self.guard_key, self.mode = store, name, inner, guard_key, mode

    def __enter__(self):
        proxy, scheduler = self.store.proxy, self.store.scheduler
        if self.guard_key is not None:
            scheduler.acquire_guard(proxy, self.guard_key, self.mode, self.name)
        try:
            return self.inner.__enter__()
        except BaseException:
            if self.guard_key is not None:
                scheduler.release_guard(proxy, self.guard_key)
            raise

    def __exit__(self, *exc):
        if not self.store._background():
            self.store._step("leave " + self.name)
        try:
            return self.inner.__exit__(*exc)
        finally:
            if self.guard_key is not None:
                self.store.scheduler.release_guard(self.store.proxy, self.guard_key)


class ScheduledStore:
    """A LocalStore/S3Store of one proxy whose every public method call is a step boundary of that proxy.

    Listings are read whole at their step (a listing is one operation). Calls from daemon threads (a session's
    heartbeat) pass straight through: they are background work, not steps of the proxy."""

    def __init__(self, inner, proxy, scheduler):
        object.__setattr__(self, "inner", inner)
        object.__setattr__(self, "proxy", proxy)
        object.__setattr__(self, "scheduler", scheduler)
        object.__setattr__(self, "calls", [])

    def __setattr__(self, name, value):
        setattr(self.inner, name, value)

    def _background(self):
        return threading.current_thread().daemon or self.scheduler is None or self.proxy.done or self.proxy.scheduler is None

    def _step(self, label):
        self.calls.append(label)
        self.scheduler.wait(self.proxy, label)

    def __getattr__(self, name):
        value = getattr(self.inner, name)
        if name.startswith("_") or not callable(value) or name == "clock":
            return value
        if name == "sleep":         # the store's injectable sleep: a proxy that polls waits for the others
            return _ProxyTime().sleep
        return functools.partial(self._call, name, value)

    def _call(self, name, method, *args, **kwargs):
        claim_thread(self.proxy)
        if self._background():
            return method(*args, **kwargs)
        if name in _NOT_BOUNDARIES:
            return method(*args, **kwargs)
        label = name + (" " + args[0] if args and isinstance(args[0], str) else "")
        self._step(label)
        if name in _LOCAL_GUARDS and self.inner.kind == "local":
            return _SteppedContext(self, label, method(*args, **kwargs), (self.inner.location, "chunks"), _LOCAL_GUARDS[name])
        result = method(*args, **kwargs)
        if name.startswith("list"):
            return list(result)
        if hasattr(result, "__enter__") and hasattr(result, "__exit__"):
            return _SteppedContext(self, label, result)
        return result


def schedule(repo, proxy, scheduler, state_dir=None):
    """Wrap ``repo``'s store for ``scheduler``, give it the proxy's clock and (``state_dir``) its own proxy state."""
    inner = getattr(repo.store, "inner", repo.store)
    repo.store = ScheduledStore(inner, proxy, scheduler)
    bind_clock(repo, proxy)
    if state_dir is not None:
        own_state(repo, state_dir)
    return repo


def own_state(repo, state_dir):
    """Give ``repo`` the per-proxy state of a proxy whose state directory is ``state_dir`` (repository_memory.py:
    what this proxy has seen of the repository), as a separate proxy with HYPERV_BACKUP_STATE_DIR=state_dir has."""
    try:
        from ansible_collections.hyperv.backup.plugins.module_utils.repository import repository_memory
    except ImportError:
        return          # the code keeps no per-proxy state
    repo._proxy_memory = repository_memory.ProxyMemory(repo.config.get("repository_id") or repo.location, repo.location,
                                                       root=state_dir)


# -- the storage's time ------------------------------------------------------------------------------

def moto_backend(name):
    """(backend, bucket) of the moto server's bucket ``name`` (the server runs in this process: ThreadedMotoServer)."""
    from moto.s3.models import s3_backends
    for account in list(s3_backends.keys()):
        for partition in list(s3_backends[account].keys()):
            backend = s3_backends[account][partition]
            bucket = backend.buckets.get(name)
            if bucket is not None:
                return backend, bucket
    raise KeyError("no moto bucket %s" % name)


def moto_bucket(name):
    return moto_backend(name)[1]


def age_repository(location, seconds):
    """Make every object of the repository ``seconds`` older, as the storage sees it (time passing)."""
    delta = datetime.timedelta(seconds=seconds)
    if location.startswith("s3://"):
        bucket = moto_bucket(location[len("s3://"):].split("/", 1)[0])
        for _key, versions in bucket.keys.lists():
            for version in versions:
                version.last_modified = version.last_modified - delta
        return
    for directory, _dirs, files in os.walk(location):
        for name in files:
            path = os.path.join(directory, name)
            st = os.stat(path)
            os.utime(path, (st.st_atime - seconds, st.st_mtime - seconds))


def clone_repository(location, new_location):
    """A copy of a repository (an empty new location), object times included."""
    if not location.startswith("s3://"):
        # the files only (with their directories, 0700): the 256 empty chunk directories init makes are an optimisation
        for directory, _dirs, files in os.walk(location):
            target = os.path.join(new_location, os.path.relpath(directory, location))
            if files:
                os.makedirs(target, mode=0o700, exist_ok=True)
            for name in files:
                shutil.copy2(os.path.join(directory, name), os.path.join(target, name))
        return new_location
    # In the moto server's process, object by object (the bytes and LastModified of each): the clone is setup, not a
    # step of any proxy, and ~20 HTTP round trips per interleaving would dominate the test's time.
    src_name, _sep, src_prefix = location[len("s3://"):].partition("/")
    dst_name, _sep, dst_prefix = new_location[len("s3://"):].partition("/")
    _backend, src = moto_backend(src_name)
    backend, _dst = moto_backend(dst_name)
    for key, versions in list(src.keys.lists()):
        latest = versions[-1]
        if not key.startswith(src_prefix + "/") or not hasattr(latest, "value"):
            continue        # another repository's object, or a delete marker
        copy = backend.put_object(dst_name, dst_prefix + key[len(src_prefix):], latest.value)
        copy.last_modified = latest.last_modified
    return new_location


@contextlib.contextmanager
def shared_boto3_session():
    """One boto3 session for every S3Store of this process (a client then takes ~10 ms instead of ~200 ms).

    Each proxy still has its own store and client; only the loaded service models are shared."""
    from ansible_collections.hyperv.backup.plugins.module_utils.repository import s3_store
    import boto3.session
    sessions = {}

    class _Shim:
        @staticmethod
        def Session(**kwargs):      # noqa: N802 (boto3's name)
            key = tuple(sorted(kwargs.items()))
            if key not in sessions:
                sessions[key] = boto3.session.Session(**kwargs)
            return sessions[key]

    saved = getattr(s3_store, "boto3_session", None)
    if saved is None:
        yield
        return
    s3_store.boto3_session = _Shim
    try:
        yield
    finally:
        s3_store.boto3_session = saved


# -- data ------------------------------------------------------------------------------------------------

def chunk_bytes(name):
    """64 KiB of random bytes named ``name`` (the same name, the same bytes, in every process)."""
    if name == "zero":
        return bytes(CHUNK)
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
    return random.Random(seed).randbytes(CHUNK)


def resolve(layout, parent_names=None):
    """The chunk names a disk holds: "reuse" is the parent's name at that index."""
    return [parent_names[index] if name == "reuse" else name for index, name in enumerate(layout)]


def disk_bytes(names):
    return b"".join(chunk_bytes(name) for name in names)


def write_disk(repo, vm_id, vm_name, layout, parent=None, host="hv1"):
    """One backup of one disk laid out as chunk names; "reuse" takes the parent's chunk at that index (no read).

    ``parent``: (backup id, its DiskManifest) for an incremental. Returns the committed record."""
    parent_id, manifest = parent if parent else (None, None)
    with repo.begin_backup(vm_id=vm_id, vm_name=vm_name, host=host, method="rct", backup_type="incremental" if parent else "full",
                           parent_backup_id=parent_id, consistency="application") as session:
        disk = session.add_disk(disk_key="disk0", virtual_size=len(layout) * CHUNK, source_path="C:\\VMs\\%s.vhdx" % vm_name)
        for index, name in enumerate(layout):
            if name == "reuse":
                disk.reuse_chunk(index, manifest)
            else:
                disk.put_chunk(index, chunk_bytes(name))
        return session.commit()


def read_disk(repo, backup_id, disk_key="disk0"):
    reader = repo.open_disk_reader(backup_id, disk_key)
    out = bytearray(reader.virtual_size)
    for offset, data in reader.iter_chunks():
        out[offset:offset + len(data)] = data
    return bytes(out)


def digest(data):
    return hashlib.sha256(data).hexdigest()


def check_repository(repo, expected, must_list=(), must_not_list=()):
    """Problems (sentences) of a repository after an interleaving: every listed backup verifies and reads back the
    bytes written (``expected``: backup id -> sha256 of its disk); ``must_list`` are listed, ``must_not_list`` not."""
    from ansible_collections.hyperv.backup.plugins.module_utils.errors import RepositoryError
    problems = []
    listed = [record.backup_id for record in repo.list_backups()]
    for backup_id in must_list:
        if backup_id not in listed:
            problems.append("backup %s is not listed" % backup_id)
    for backup_id in must_not_list:
        if backup_id in listed:
            problems.append("backup %s is still listed (retention removes it)" % backup_id)
    report = repo.verify(listed, record_status=False) if listed else {"ok": True, "backups": []}
    for entry in report["backups"]:
        if not entry["ok"]:
            problems.append("verify: backup %s has %d missing / %d corrupt chunk(s) %s" % (
                entry["backup_id"], entry.get("missing_count", 0), entry.get("corrupt_count", 0), entry.get("problems") or ""))
    for backup_id in listed:
        if backup_id not in expected:
            problems.append("backup %s is listed but nobody wrote it" % backup_id)
            continue
        try:
            got = digest(read_disk(repo, backup_id))
        except RepositoryError as err:
            problems.append("restore of %s failed: %s" % (backup_id, err.message))
            continue
        if got != expected[backup_id]:
            problems.append("restore of %s returned other bytes than were written" % backup_id)
    return problems


# -- one proxy process (the multi-process test) -------------------------------------------------------

def _open(spec, location):
    from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository
    repo = Repository.open(location["location"], passphrase=spec.get("passphrase"), s3_options=location.get("s3_options"),
                           workers=2)
    bind_clock(repo, _PROCESS_PROXY)
    return repo


def _writer(spec, out):
    """Backups of one VM into each repository in turn; every other one an incremental of the VM's latest backup (read
    from the repository, never from a cache) that reuses its first chunks; all share chunks with the other VMs' and
    with backups that prune removes. ``spec["names"]``: backup id -> chunk names of the backups made before."""
    from ansible_collections.hyperv.backup.plugins.module_utils.errors import RepositoryError
    names = dict(spec["names"])
    for round_ in range(spec["rounds"]):
        for location in spec["locations"]:
            layout = ["%s-r%d-%d" % (spec["vm_id"], round_, i) for i in range(2)] + list(spec["shared"][round_ % len(spec["shared"])])
            try:
                repo = _open(spec, location)
                parent = repo.latest_backup(spec["vm_id"])
                parent_arg = parent_names = None
                if parent is not None and round_ % 2 and parent.backup_id in names:
                    manifest = repo.load_disk_manifest(parent.backup_id, "disk0", parent)
                    layout = ["reuse" if i < 2 else name for i, name in enumerate(layout)]
                    parent_arg, parent_names = (parent.backup_id, manifest), names[parent.backup_id]
                written = resolve(layout, parent_names)
                record = write_disk(repo, spec["vm_id"], spec["vm_name"], layout, parent=parent_arg, host=spec["name"])
                names[record.backup_id] = written
                out.append({"location": location["location"], "backup_id": record.backup_id, "names": written,
                            "round": round_, "incremental": bool(parent_arg)})
            except RepositoryError as err:
                out.append({"location": location["location"], "failed": err.message, "round": round_})


def _pruner(spec, out):
    """prune (keep_last per VM) + GC on every repository, in a loop until the stop file appears."""
    from ansible_collections.hyperv.backup.plugins.module_utils.errors import RepositoryError
    from ansible_collections.hyperv.backup.plugins.module_utils.repository.retention import RetentionPolicy
    from ansible_collections.hyperv.backup.plugins.module_utils.repository import repository as repository_module
    grace = spec.get("grace_seconds") or repository_module.DEFAULT_GC_GRACE_SECONDS
    runs = 0
    while True:
        stop = os.path.exists(spec["stop_file"])
        for location in spec["locations"]:
            repo = _open(spec, location)
            try:
                report = repo.prune(RetentionPolicy(keep_last=spec["keep_last"]), grace_seconds=grace, wait_seconds=30)
                gc = report.get("gc") or {}
                out.append({"location": location["location"], "removed": len(report["removed"]),
                            "chunks_removed": gc.get("chunks_removed", 0)})
            except RepositoryError as err:
                out.append({"location": location["location"], "failed": err.message})
        runs += 1
        if stop and runs >= 2:
            return


def proxy_main(spec):
    """The program of one proxy process: its clock offset applies to everything the repository code reads."""
    _PROCESS_PROXY.name = spec["name"]
    _PROCESS_PROXY.offset = spec["offset"]
    if spec.get("state_dir"):       # what this proxy has seen of the repositories: its own, as on its own machine
        os.environ["HYPERV_BACKUP_STATE_DIR"] = spec["state_dir"]
    out = []
    try:
        with proxy_clocks():
            (_writer if spec["role"] == "writer" else _pruner)(spec, out)
    except BaseException:   # pylint: disable=broad-except
        out.append({"crashed": traceback.format_exc()})
    with open(spec["result_file"], "w") as handle:
        json.dump(out, handle)


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "proxy":
    proxy_main(json.loads(sys.argv[2]))
