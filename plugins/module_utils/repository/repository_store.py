# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where repository objects live: a local directory or an S3-compatible bucket, behind one interface.

An object is named by a ``/``-separated key (``chunks/ab/ab12...``, ``backups/<id>``). Both stores give:
``put`` (atomic and durable: a reader sees the whole object or nothing), ``get``, ``stat``, ``list``,
``delete``, ``touch`` (mark an existing object as used now), ``renew`` (refresh an object that must still
exist, never re-creating it), ``exclusive_lock`` (one prune/GC at a time, with expiry so a crashed holder does
not block forever) and ``chunk_guard``/``sweep_guard`` (a short shared/exclusive section that makes "dedup
hit + touch" and "re-check + delete" atomic against each other where the medium allows it: flock locally; S3
has no such primitive, so GC and writers exclude each other with markers instead, see docs/repository.md).

Time (issue 13, point 2): every age the repository judges is storage time: ``now()`` is the storage's clock
(local: the mtime of a file just created; S3: the ``Date`` of a response), carried forward by the monotonic
clock between measurements, so a proxy's wall clock (``clock``, injectable for tests) never decides whether
a chunk, a session or a lock is old. ``step(name)`` calls ``on_step`` (None by default) at the protocol's
step boundaries so tests can interleave writers, prune and GC deterministically.

Local: files 0600 and directories 0700; ``put`` writes a temp name in the same directory, fsyncs,
renames; directories touched are fsynced by ``flush``. S3: single PUTs are atomic; with Object Lock,
``put`` and ``touch`` set or extend the retention of the object.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import concurrent.futures
import contextlib
import datetime
import email.utils
import errno
import fcntl
import functools
import json
import os
import socket
import threading
import time
import uuid

from ansible_collections.hyperv.backup.plugins.module_utils.errors import RepositoryError
from ansible_collections.hyperv.backup.plugins.module_utils.lazy_import import LazyModule, is_installed

# boto3 is imported on first use (by an S3 repository): see lazy_import.
boto3_session = LazyModule("boto3.session")
botocore_config = LazyModule("botocore.config")
botocore_exceptions = LazyModule("botocore.exceptions")
HAS_BOTO3 = is_installed("boto3")


class ObjectInfo:
    """What a store knows about one object: size, modification time (storage time), Object Lock retention (epoch s)
    and, on S3, its ETag."""

    def __init__(self, key, size, mtime, retain_until=None, etag=None):
        self.key = key
        self.size = size
        self.mtime = mtime
        self.retain_until = retain_until
        self.etag = etag


class LockHeld(Exception):
    """Raised inside the stores when an exclusive lock is taken by someone else."""


CLOCK_RESYNC_SECONDS = 10 * 60      # storage time is measured again after this long (monotonic drift is tiny)


def _system_clock():
    """The proxy's wall clock (looked up at call time, so a test can skew the ``time`` module the stores see)."""
    return time.time()


def _system_sleep(seconds):
    time.sleep(seconds)


class Heartbeat:
    """Keep an object alive while it is held: ``renew()`` every ``interval`` s on a daemon thread.

    ``renew`` returns False when the object is gone or no longer ours (it must never re-create it): the heartbeat
    then stops and ``lost`` is set. ``fresh(margin)`` says whether others still see the object as live: its last
    successful renewal started less than ``ttl - margin`` s ago (monotonic time, which also runs while the process
    is stopped, so a holder woken from SIGSTOP knows it may have been taken over)."""

    def __init__(self, renew, interval, ttl, name="heartbeat"):
        self._renew = renew
        self.interval = interval
        self.ttl = ttl
        self.lost = False
        self.renewed_at = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(self.interval):
            self.beat()

    def beat(self):
        started = time.monotonic()
        try:
            alive = self._renew()
        except Exception:    # pylint: disable=broad-except
            return          # a missed renewal is harmless unless it lasts the ttl; fresh() tells when it matters
        if alive:
            self.renewed_at = started
        else:
            self.lost = True
            self._stop.set()

    def fresh(self, margin=0):
        return not self.lost and time.monotonic() - self.renewed_at < self.ttl - margin

    def stop(self):
        self._stop.set()


SWEEP_MARKER_KEY = "locks/sweeping"
SWEEP_TTL_SECONDS = 2 * 60          # a sweeping marker not renewed for this long belongs to a GC that died
SWEEP_RENEW_SECONDS = 20
SWEEP_FRESH_MARGIN_SECONDS = 30     # GC stops deleting when its last renewal is older than the ttl minus this


class _StoreClock:
    """Storage time, the injectable proxy clock, the step hook and the sweeping marker, shared by both stores."""

    @contextlib.contextmanager
    def sweeping(self, purpose):
        """Hold the sweeping marker (``locks/sweeping``) while GC deletes: writers that find it live wait before they
        make any dedup decision. Renewed by a heartbeat; ``fresh()`` of the yielded Heartbeat says whether writers
        still see it (GC stops deleting when it does not)."""
        body = json.dumps({"owner": _owner_text(), "purpose": purpose, "since": self.clock(), "ttl": SWEEP_TTL_SECONDS}).encode()
        try:
            etag = self.put(SWEEP_MARKER_KEY, body)
        except RepositoryError as err:
            if self.kind != "local" or err.extra.get("errno") not in (errno.ENOSPC, errno.EDQUOT):
                raise
            # A full local disk: GC (which frees space) must still run. No writer can start meanwhile (its marker
            # cannot be written either), a running one is listed and defers the sweep, and the chunk flock still makes
            # a writer's check-and-touch and GC's re-check-and-delete exclude each other.
            unmarked = Heartbeat(lambda: True, interval=SWEEP_RENEW_SECONDS, ttl=SWEEP_TTL_SECONDS, name="sweep-heartbeat")
            try:
                yield unmarked
            finally:
                unmarked.stop()
            return
        heartbeat = Heartbeat(lambda: self.renew(SWEEP_MARKER_KEY, body, etag), interval=SWEEP_RENEW_SECONDS,
                              ttl=SWEEP_TTL_SECONDS, name="sweep-heartbeat")
        try:
            yield heartbeat
        finally:
            heartbeat.stop()
            self.delete(SWEEP_MARKER_KEY)

    def sweep_in_progress(self):
        """Who is sweeping (text), if a live sweeping marker exists; None otherwise (none, or its GC died)."""
        info = self.stat(SWEEP_MARKER_KEY)
        if info is None or info.mtime + SWEEP_TTL_SECONDS < self.now() or self._sweeper_gone():
            return None
        try:
            fields = json.loads(self.get(SWEEP_MARKER_KEY))
            return "%s (%s)" % (fields.get("owner", "unknown"), fields.get("purpose", "gc"))
        except (KeyError, ValueError, AttributeError, RepositoryError):
            return "unknown"

    def _sweeper_gone(self):
        """True when the GC that wrote a live-looking sweeping marker is known to be dead (local: its flock is free)."""
        return False

    def _init_clock(self):
        self.clock = _system_clock      # the proxy's wall clock: notes for people only, never an age
        self.sleep = _system_sleep
        self.on_step = None
        self._measured = None           # (storage time, monotonic time) of the last measurement

    def step(self, name, **facts):
        """A step boundary of the writer/GC/lock protocol: tests hook ``on_step`` to interleave proxies."""
        if self.on_step is not None:
            self.on_step(name, **facts)

    def sync_clock(self):
        """Measure the storage's clock now (one round trip) and return it."""
        before = time.monotonic()
        storage = self._storage_time()
        after = time.monotonic()
        self._measured = (storage, (before + after) / 2.0)
        return storage + (after - self._measured[1])

    def now(self):
        """The storage's time (epoch s): the last measurement carried forward by the monotonic clock."""
        measured = self._measured
        if measured is None or time.monotonic() - measured[1] > CLOCK_RESYNC_SECONDS:
            return self.sync_clock()
        return measured[0] + (time.monotonic() - measured[1])


def open_store(location, s3_options=None, create=False):
    """The store for ``location``: ``s3://bucket/prefix`` or a local directory path."""
    if str(location).startswith("s3://"):
        return S3Store(location, s3_options or {})
    if s3_options:
        raise RepositoryError("S3 options were given but the repository location %s is not an s3:// URL." % location,
                              hint="Use s3://bucket/prefix as the location, or drop the S3 options.")
    return LocalStore(location, create=create)


def make_private_dirs(directory):
    """Create ``directory`` and any missing parents as 0700 (os.makedirs gives parents the default mode)."""
    missing = []
    while directory and not os.path.isdir(directory):
        missing.append(directory)
        directory = os.path.dirname(directory)
    for path in reversed(missing):
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass


def _write_all(fd, parts):
    """Write every buffer of ``parts`` in order (os.writev, resuming after short writes)."""
    views = [memoryview(part).cast("B") for part in parts if len(part)]
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


# What to do about the storage errors a repository directory meets in practice.
_FS_HINTS = {
    errno.ENOSPC: ("no space left on the repository's filesystem",
                   "Free space there (prune old backups with hyperv_backup_repository state=pruned, or grow the volume), "
                   "then run the backup again; the failed backup is not visible and its chunks are reclaimed by GC."),
    errno.EDQUOT: ("the disk quota of the repository's filesystem is exhausted",
                   "Raise the quota or prune old backups, then run the backup again."),
    errno.EROFS: ("the repository's filesystem is read-only",
                  "Remount it read-write (restore, list and verify work from a read-only repository; backups and prune "
                  "need to write)."),
    errno.EACCES: ("permission denied",
                   "Run the module as the user that owns the repository directory, or fix its ownership (files 0600, "
                   "directories 0700)."),
    errno.EPERM: ("operation not permitted",
                  "Check the ownership and attributes (immutable, append-only) of the repository directory."),
}


def filesystem_error(err, action, path):
    """A RepositoryError for an OSError met while ``action`` on ``path``: what happened and what to do."""
    problem, hint = _FS_HINTS.get(err.errno, (err.strerror or str(err),
                                              "Check the repository's storage (mount, permissions, free space)."))
    return RepositoryError("Cannot %s %s: %s (%s)." % (action, path, problem, errno.errorcode.get(err.errno, err.errno)),
                           hint=hint, path=path, errno=err.errno)


FLUSH_THREADS = 16


def _fsync_path(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return          # removed since (a chunk deleted by GC after its writer died)
    try:
        os.fsync(fd)
    except OSError as err:
        raise filesystem_error(err, "flush", path)
    finally:
        os.close(fd)


def _owner_text():
    return "%s pid %d" % (socket.gethostname(), os.getpid())


class LocalStore(_StoreClock):
    """Objects as files under a directory."""

    kind = "local"

    def __init__(self, root, create=False):
        self._init_clock()
        self.root = os.path.abspath(str(root))
        self.location = self.root
        self._dirty_dirs = set()
        self._unsynced = []
        self._dirty_lock = threading.Lock()
        self._known_dirs = set()
        if create:
            os.makedirs(self.root, mode=0o700, exist_ok=True)
            os.chmod(self.root, 0o700)

    def _path(self, key):
        parts = key.split("/")
        if any(part in ("", ".", "..") for part in parts):
            # Keys are built from ids the callers check; this is the last line of defence, so that no key can ever
            # name a file outside the repository directory (or the config, from status/../config).
            raise RepositoryError("Refusing the object key %r of repository %s: it is not a plain relative name." % (key, self.root),
                                  hint="This is a bug or a hostile id; report it with the task that caused it.", key=key)
        return os.path.join(self.root, *parts)

    def _ensure_dir(self, directory):
        if directory in self._known_dirs:
            return
        make_private_dirs(directory)
        self._known_dirs.add(directory)

    def put(self, key, data, retain_until=None, durable=True):
        """Write atomically: temp name, rename; fsync now (``durable``) or in the next ``flush`` (batched)."""
        path = self._path(key)
        directory = os.path.dirname(path)
        try:
            self._ensure_dir(directory)
            tmp = os.path.join(directory, ".tmp-%s" % uuid.uuid4().hex)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                try:
                    _write_all(fd, data if isinstance(data, (list, tuple)) else [data])
                    if durable:
                        os.fsync(fd)
                finally:
                    os.close(fd)
                os.rename(tmp, path)
            except BaseException:
                # Nothing half-written stays behind, not even under the temporary name (a full directory can
                # also fail the rename).
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as err:
            raise filesystem_error(err, "write", path)
        with self._dirty_lock:
            self._dirty_dirs.add(directory)
            if not durable:
                self._unsynced.append(path)

    def flush(self):
        """Make everything written so far durable: fsync of the files written lazily, then of the directories.

        Chunks are written without an fsync each and synced here in one batch before the manifest that refers to
        them is written: the kernel then writes them back together, which is several times faster on this kind of
        disk than one synchronous flush per chunk, with the same guarantee at commit.
        """
        with self._dirty_lock:
            dirs, self._dirty_dirs = self._dirty_dirs, set()
            files, self._unsynced = self._unsynced, []
        # Files first, then the directories that name them. The fsyncs of one group run concurrently: the
        # filesystem then commits them in a few journal transactions instead of one per file.
        for group in (files, sorted(dirs)):
            if len(group) > 4:
                with concurrent.futures.ThreadPoolExecutor(FLUSH_THREADS) as pool:
                    list(pool.map(_fsync_path, group))
            else:
                for path in group:
                    _fsync_path(path)

    def get(self, key):
        try:
            with open(self._path(key), "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            raise KeyError(key)

    def stat(self, key):
        try:
            st = os.stat(self._path(key))
        except FileNotFoundError:
            return None
        return ObjectInfo(key, st.st_size, st.st_mtime)

    def list(self, prefix):
        """Yield ObjectInfo for every object whose key starts with ``prefix`` (a directory path ending in /)."""
        base = self._path(prefix.rstrip("/")) if prefix else self.root
        for directory, _dirs, files in os.walk(base):
            rel = os.path.relpath(directory, self.root)
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                key = name if rel == "." else "/".join(rel.split(os.sep) + [name])
                try:
                    st = os.stat(os.path.join(directory, name))
                except FileNotFoundError:
                    continue
                yield ObjectInfo(key, st.st_size, st.st_mtime)

    def list_temporary(self, prefix, older_than):
        """Temp files left by a crash (never visible as objects); GC removes those older than ``older_than``."""
        base = self._path(prefix.rstrip("/"))
        for directory, _dirs, files in os.walk(base):
            for name in files:
                path = os.path.join(directory, name)
                if name.startswith(".tmp-"):
                    try:
                        if os.stat(path).st_mtime < older_than:
                            yield path
                    except FileNotFoundError:
                        continue

    def remove_temporary(self, path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def delete(self, key):
        try:
            os.unlink(self._path(key))
            return True
        except FileNotFoundError:
            return False
        except OSError as err:
            raise filesystem_error(err, "delete", self._path(key))

    def delete_prefix(self, prefix):
        for info in list(self.list(prefix)):
            self.delete(info.key)
        with contextlib.suppress(OSError):
            os.rmdir(self._path(prefix.rstrip("/")))

    def touch(self, key, retain_until=None):
        """Mark an existing object as used now; False if it is gone."""
        try:
            os.utime(self._path(key))
            return True
        except FileNotFoundError:
            return False
        except OSError as err:
            raise filesystem_error(err, "mark as used", self._path(key))

    def renew(self, key, data=None, etag=None):
        """Refresh the mtime of an object that must still exist; False if it is gone (utime never creates a file)."""
        return self.touch(key)

    def list_versions(self, key):
        """A local directory keeps no earlier versions of an object."""
        raise RepositoryError("Repository %s is a local directory: it keeps no earlier versions of %s to recover from." % (self.root, key),
                              hint="Restore the file from a copy of the directory, or write the config back from a key export "
                                   "(state: key_imported with key_file).", location=self.root)

    def get_version(self, key, version_id):
        return self.list_versions(key)

    def _storage_time(self):
        """The filesystem's clock: the mtime of a file created now (on NFS the server's). A repository that cannot
        be written (read-only mount: listing, restore, verify) falls back to the kernel clock, the same clock on a
        local disk."""
        directory = self._path("locks")
        path = os.path.join(directory, ".tmp-clock-%s" % uuid.uuid4().hex)
        try:
            self._ensure_dir(directory)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError:
            return time.time()
        try:
            return os.fstat(fd).st_mtime
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)

    def probe_conditional_writes(self):
        """Nothing to probe: local files are renamed into place and locked with flock."""

    @contextlib.contextmanager
    def _flock(self, name, mode):
        path = self._path("locks/" + name)
        fd = self._open_lock_file(path)
        try:
            fcntl.flock(fd, mode)
            yield fd
        finally:
            os.close(fd)

    def _open_lock_file(self, path):
        """The lock file, created if needed; on a read-only repository an existing one is opened read-only
        (flock works on it), so restores and verify still take their shared locks."""
        try:
            self._ensure_dir(os.path.dirname(path))
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as err:
            if err.errno in (errno.EROFS, errno.EACCES) and os.path.exists(path):
                try:
                    return os.open(path, os.O_RDONLY)
                except OSError:
                    pass
            raise filesystem_error(err, "open the lock file", path)

    @contextlib.contextmanager
    def sweeping(self, purpose):
        """The sweeping marker, with an exclusive flock on ``locks/sweep-holder`` held from before it is written until
        after it is removed: a writer that finds the marker but can take the flock knows that GC died (the kernel
        released its flock) and does not wait for the marker to expire."""
        # Both context managers release in their own ``finally``; pylint cannot see that through super().
        with self._flock("sweep-holder", fcntl.LOCK_EX):
            with super(LocalStore, self).sweeping(purpose) as heartbeat:  # pylint: disable=contextmanager-generator-missing-cleanup
                yield heartbeat

    def _sweeper_gone(self):
        fd = self._open_lock_file(self._path("locks/sweep-holder"))
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno in (errno.EAGAIN, errno.EACCES):
                    return False        # held: the GC that wrote the marker is alive
                raise
            # Free: no GC is sweeping. One that starts after this takes the flock first and then lists the sessions,
            # and our marker is already written: it sees us and defers.
            return True
        finally:
            os.close(fd)

    def chunk_guard(self):
        """Shared section for a writer's "exists? then touch" on a chunk."""
        return self._flock("chunks", fcntl.LOCK_SH)

    def sweep_guard(self):
        """Exclusive section for GC's "re-check age, then delete" on chunks."""
        return self._flock("chunks", fcntl.LOCK_EX)

    @contextlib.contextmanager
    def exclusive_lock(self, name, purpose, wait_seconds=0, ttl_seconds=None):
        """Hold the repository-wide lock ``name`` (flock: released by the kernel if the holder dies)."""
        path = self._path("locks/" + name)
        fd = self._open_lock_file(path)
        try:
            deadline = time.monotonic() + wait_seconds
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as err:
                    if err.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if time.monotonic() >= deadline:
                        holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
                        raise LockHeld(holder or "another process")
                    self.sleep(0.2)
            # The owner note only helps a person who finds the lock held; the flock is the lock. On a full
            # disk the note cannot be written, and prune/GC (which frees space) must still run.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps({"owner": _owner_text(), "purpose": purpose, "since": self.clock()}).encode(), 0)
            yield
        finally:
            os.close(fd)


def _unreachable(location, what, err):
    return RepositoryError("S3 %s failed on %s: the endpoint did not answer properly (%s)." % (what, location, err),
                           hint="Check endpoint_url, the network and the S3 service; the backup was not committed and "
                                "can be run again once the endpoint answers.", s3_error=type(err).__name__)


def _network_errors(what):
    """Decorator for S3Store methods: botocore's connection-level failures (refused, dropped, timed out), which are
    not ClientError, become a RepositoryError naming the endpoint instead of escaping raw."""
    def wrap(method):
        @functools.wraps(method)
        def guarded(self, *args, **kwargs):
            try:
                return method(self, *args, **kwargs)
            except botocore_exceptions.BotoCoreError as err:
                raise _unreachable(self.location, "%s of %s" % (what, args[0] if args else ""), err)
        return guarded
    return wrap


def _epoch(value):
    if value is None:
        return None
    return value.timestamp()


class S3Store(_StoreClock):
    """Objects in an S3-compatible bucket under an optional prefix (boto3)."""

    kind = "s3"

    def __init__(self, location, options):
        self._init_clock()
        if not HAS_BOTO3:
            raise RepositoryError("An S3 repository needs the Python library boto3.",
                                  hint="Install it on the host that runs the module: pip install boto3")
        rest = location[len("s3://"):]
        self.bucket, _sep, prefix = rest.partition("/")
        if not self.bucket:
            raise RepositoryError("S3 location %s has no bucket name." % location, hint="Use s3://bucket/prefix.")
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.location = location
        self.lock_mode = (options.get("object_lock_mode") or "COMPLIANCE").upper()
        session = boto3_session.Session(
            aws_access_key_id=options.get("access_key"), aws_secret_access_key=options.get("secret_key"),
            aws_session_token=options.get("session_token"), profile_name=options.get("profile"),
            region_name=options.get("region") or "us-east-1")
        config = botocore_config.Config(max_pool_connections=int(options.get("max_connections") or 16),
                                        retries={"max_attempts": 5, "mode": "standard"})
        self.client = session.client("s3", endpoint_url=options.get("endpoint_url"),
                                     verify=options.get("ca_bundle") or options.get("validate_certs", True),
                                     config=config)

    def _key(self, key):
        return self.prefix + key

    def _error(self, err, what):
        code = err.response.get("Error", {}).get("Code", "")
        return RepositoryError("S3 %s failed on %s: %s" % (what, self.location, code or err),
                               hint="Check the bucket name, endpoint, credentials and permissions.", s3_error=code)

    def check_bucket(self):
        """Return the bucket's Object Lock state (True/False); clear error if it cannot be reached."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except botocore_exceptions.ClientError as err:
            raise self._error(err, "access to bucket %s" % self.bucket)
        except botocore_exceptions.BotoCoreError as err:
            raise RepositoryError("Cannot reach S3 endpoint for %s: %s" % (self.location, err),
                                  hint="Check endpoint_url and the network.")
        try:
            conf = self.client.get_object_lock_configuration(Bucket=self.bucket)
            return conf.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
        except botocore_exceptions.ClientError:
            return False

    def _lock_args(self, retain_until):
        if retain_until is None:
            return {}
        return {"ObjectLockMode": self.lock_mode,
                "ObjectLockRetainUntilDate": datetime.datetime.fromtimestamp(retain_until, datetime.timezone.utc)}

    @_network_errors("upload")
    def put(self, key, data, retain_until=None, durable=True):
        try:
            body = b"".join(data) if isinstance(data, (list, tuple)) else bytes(data)
            answer = self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=body, **self._lock_args(retain_until))
        except botocore_exceptions.ClientError as err:
            raise self._error(err, "upload of %s" % key)
        return answer.get("ETag")

    def flush(self):
        """Nothing to do: an acknowledged PUT is durable."""

    @_network_errors("download")
    def get(self, key):
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except botocore_exceptions.ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise KeyError(key)
            raise self._error(err, "download of %s" % key)

    @_network_errors("stat")
    def stat(self, key):
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except botocore_exceptions.ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise self._error(err, "stat of %s" % key)
        return ObjectInfo(key, head["ContentLength"], _epoch(head["LastModified"]), _epoch(head.get("ObjectLockRetainUntilDate")),
                          etag=head.get("ETag"))

    def list(self, prefix):
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
                for item in page.get("Contents", []):
                    yield ObjectInfo(item["Key"][len(self.prefix):], item["Size"], _epoch(item["LastModified"]))
        except botocore_exceptions.ClientError as err:
            raise self._error(err, "listing of %s" % prefix)
        except botocore_exceptions.BotoCoreError as err:
            raise _unreachable(self.location, "listing of %s" % prefix, err)

    def list_temporary(self, prefix, older_than):
        """S3 has no temp objects: an interrupted PUT leaves nothing."""
        return iter(())

    def remove_temporary(self, path):
        """Nothing to remove on S3."""

    @_network_errors("delete")
    def delete(self, key):
        """Delete (on a versioned/locked bucket this adds a delete marker; locked versions stay)."""
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except botocore_exceptions.ClientError as err:
            if err.response.get("Error", {}).get("Code") == "AccessDenied":
                return False
            raise self._error(err, "delete of %s" % key)

    def delete_prefix(self, prefix):
        for info in list(self.list(prefix)):
            self.delete(info.key)

    @_network_errors("touch")
    def touch(self, key, retain_until=None):
        """Mark an existing object as used now: extend its retention (Object Lock) or copy it onto itself."""
        try:
            if retain_until is not None:
                info = self.stat(key)
                if info is None:
                    return False
                if info.retain_until is None or info.retain_until < retain_until:
                    self.client.put_object_retention(
                        Bucket=self.bucket, Key=self._key(key),
                        Retention={"Mode": self.lock_mode, "RetainUntilDate": datetime.datetime.fromtimestamp(
                            retain_until, datetime.timezone.utc)})
                return True
            self.client.copy_object(Bucket=self.bucket, Key=self._key(key), MetadataDirective="REPLACE",
                                    CopySource={"Bucket": self.bucket, "Key": self._key(key)},
                                    Metadata={"touched": "%d" % self.clock()})
            return True
        except botocore_exceptions.ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return False
            raise self._error(err, "touch of %s" % key)

    @_network_errors("retention")
    def extend_retention(self, key, retain_until, mode=None):
        """Set the Object Lock retention of the current version of ``key`` to ``retain_until`` (epoch s) in ``mode``
        (default: the store's). Compliance retention can be extended, never shortened: callers only ever extend."""
        try:
            self.client.put_object_retention(
                Bucket=self.bucket, Key=self._key(key),
                Retention={"Mode": mode or self.lock_mode,
                           "RetainUntilDate": datetime.datetime.fromtimestamp(retain_until, datetime.timezone.utc)})
        except botocore_exceptions.ClientError as err:
            raise self._error(err, "retention of %s" % key)

    @_network_errors("upload")
    def put_retained(self, key, data, retain_until, mode=None):
        """``put`` with Object Lock retention in ``mode`` (default: the store's), e.g. the repository's own mode for config."""
        try:
            answer = self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=bytes(data), ObjectLockMode=mode or self.lock_mode,
                                            ObjectLockRetainUntilDate=datetime.datetime.fromtimestamp(retain_until, datetime.timezone.utc))
        except botocore_exceptions.ClientError as err:
            raise self._error(err, "upload of %s" % key)
        return answer.get("ETag")

    @_network_errors("listing of versions")
    def list_versions(self, key):
        """Every version and delete marker of ``key``, newest first: dicts with version_id, mtime (storage time), latest,
        delete_marker and size (None for a marker). On a bucket without versioning there is one version, id "null"."""
        found = []
        paginator = self.client.get_paginator("list_object_versions")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(key)):
                for kind, items in (("version", page.get("Versions", [])), ("marker", page.get("DeleteMarkers", []))):
                    for item in items:
                        if item["Key"] != self._key(key):
                            continue        # another key with this one as prefix (config.bak...)
                        found.append({"version_id": item.get("VersionId"), "mtime": _epoch(item["LastModified"]),
                                      "latest": bool(item.get("IsLatest")), "delete_marker": kind == "marker",
                                      "size": item.get("Size")})
        except botocore_exceptions.ClientError as err:
            raise self._error(err, "listing of the versions of %s" % key)
        # Newest first; the latest flag breaks ties of equal LastModified (one-second resolution on some endpoints).
        found.sort(key=lambda version: (version["mtime"], version["latest"]), reverse=True)
        return found

    @_network_errors("download")
    def get_version(self, key, version_id):
        """The bytes of one version of ``key``; KeyError if that version does not exist (or is a delete marker)."""
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key), VersionId=version_id)["Body"].read()
        except botocore_exceptions.ClientError as err:
            if _code(err) in ("NoSuchKey", "NoSuchVersion", "404", "MethodNotAllowed", "405", "InvalidArgument"):
                raise KeyError(key)
            raise self._error(err, "download of version %s of %s" % (version_id, key))

    def _conditional_put(self, key, body, what, **condition):
        """PUT only if ``condition`` (IfNoneMatch="*" or IfMatch=<etag>) holds: the new ETag, or None if it did not
        (412, or 404/409 for an If-Match on an object that is gone or being written)."""
        try:
            return self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=body, **condition).get("ETag") or "?"
        except botocore_exceptions.ClientError as err:
            if _code(err) in _CONDITION_FAILED:
                return None
            raise self._error(err, what)
        except botocore_exceptions.BotoCoreError as err:
            raise _unreachable(self.location, what, err)

    def renew(self, key, data, etag):
        """Rewrite an object that must still be the one we wrote (If-Match: its ETag; the same body keeps the same
        ETag), which refreshes its LastModified. False when it is gone or replaced: a renewal never re-creates an
        object that GC or a lock taker has removed (a COPY onto itself could)."""
        return self._conditional_put(key, data, "renewal of %s" % key, IfMatch=etag) is not None

    def _storage_time(self):
        """The S3 endpoint's clock: the Date header of a response (whole seconds, hence +0.5)."""
        try:
            answer = self.client.head_bucket(Bucket=self.bucket)
        except botocore_exceptions.ClientError as err:
            raise self._error(err, "access to bucket %s" % self.bucket)
        except botocore_exceptions.BotoCoreError as err:
            raise _unreachable(self.location, "clock of the endpoint", err)
        date = (answer.get("ResponseMetadata") or {}).get("HTTPHeaders", {}).get("date")
        if date:
            return email.utils.parsedate_to_datetime(date).timestamp() + 0.5
        # No Date header: the LastModified of an object written now.
        self.put("locks/clock-%s" % uuid.uuid4().hex[:12], b"")
        infos = list(self.list("locks/clock-"))
        latest = max(info.mtime for info in infos)
        for info in infos:
            self.delete(info.key)
        return latest + 0.5

    def probe_conditional_writes(self):
        """Refuse an endpoint that ignores conditional writes: the lock and the markers rely on them.

        Two PUTs with If-None-Match: * on one probe key (the second must fail with 412), and a PUT with If-Match on a
        wrong ETag (must fail too)."""
        key = "locks/probe-%s" % uuid.uuid4().hex[:12]
        try:
            first = self._conditional_put(key, b"probe", "conditional write probe", IfNoneMatch="*")
            second = self._conditional_put(key, b"probe again", "conditional write probe", IfNoneMatch="*")
            wrong = self._conditional_put(key, b"probe again", "conditional write probe", IfMatch='"0123456789abcdef0123456789abcdef"')
        finally:
            self.delete(key)
        if first is None or second is not None or wrong is not None:
            raise RepositoryError(
                "The S3 endpoint of %s ignores conditional writes (a second PUT with If-None-Match: * or a PUT with a wrong "
                "If-Match succeeded): the repository lock and the exclusion between GC and backups need them." % self.location,
                hint="Use an S3 implementation that supports conditional writes (AWS S3, MinIO, Ceph RGW and others do); "
                     "a repository cannot be created on this endpoint.", location=self.location)

    def chunk_guard(self):
        return contextlib.nullcontext()

    def sweep_guard(self):
        return contextlib.nullcontext()

    def _read_lock(self, key):
        """(fields, ETag, LastModified epoch) of a lock object, or None if there is none."""
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            body = answer["Body"].read()
        except botocore_exceptions.ClientError as err:
            if _code(err) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise self._error(err, "reading the lock %s" % key)
        except botocore_exceptions.BotoCoreError as err:
            raise _unreachable(self.location, "reading the lock %s" % key, err)
        try:
            fields = json.loads(body)
            if not isinstance(fields, dict):
                raise ValueError("not an object")
        except ValueError:
            fields = {}         # unreadable: judged by its age alone
        return fields, answer.get("ETag"), _epoch(answer["LastModified"])

    @contextlib.contextmanager
    def exclusive_lock(self, name, purpose, wait_seconds=0, ttl_seconds=3600):
        """A lock object created only if absent (If-None-Match: *), renewed by a heartbeat while held (If-Match: our
        ETag), taken over when expired only if it is still the expired one (If-Match: its ETag), released only if it
        is still ours. Expired means LastModified + its ttl is before the storage's now: no proxy clock is involved.
        """
        key = "locks/" + name
        token = uuid.uuid4().hex
        body = json.dumps({"owner": _owner_text(), "purpose": purpose, "token": token, "ttl": ttl_seconds,
                           "since": self.clock()}).encode()
        deadline = time.monotonic() + wait_seconds
        what = "lock %s" % name
        while True:
            etag = self._conditional_put(key, body, what, IfNoneMatch="*")
            if etag is not None:
                break
            held = self._read_lock(key)
            if held is None:
                continue                                # released meanwhile: race for it again
            fields, held_etag, modified = held
            ttl = fields.get("ttl") if isinstance(fields.get("ttl"), (int, float)) else ttl_seconds
            if modified + ttl < self.now():
                # Expired (its holder died or stalled past the ttl). Replace exactly that object: if another proxy
                # took it over or its holder renewed it since we read it, the ETag differs and this PUT fails.
                etag = self._conditional_put(key, body, what, IfMatch=held_etag)
                if etag is not None:
                    break
                continue
            if time.monotonic() >= deadline:
                raise LockHeld("%s (%s)" % (fields.get("owner", "unknown"), fields.get("purpose", "")))
            self.sleep(0.5)
        self.step("lock.acquired", lock=name, purpose=purpose)
        heartbeat = Heartbeat(lambda: self.renew(key, body, etag), interval=min(ttl_seconds / 4.0, 60.0), ttl=ttl_seconds,
                              name="lock-heartbeat")
        try:
            yield heartbeat
        finally:
            heartbeat.stop()
            # If the endpoint is gone now, the lock object stays until it expires (ttl_seconds); raising here would
            # hide the outcome of the work done under the lock.
            with contextlib.suppress(RepositoryError, botocore_exceptions.ClientError, botocore_exceptions.BotoCoreError):
                self._release(key, token, etag)

    def _release(self, key, token, etag):
        """Delete the lock only if it is still ours: compare the token, then DELETE with If-Match (endpoints that ignore
        If-Match on DELETE leave the short window between the two requests; see docs/repository.md)."""
        held = self._read_lock(key)
        if held is None or held[0].get("token") != token:
            return False
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key), IfMatch=held[1] or etag)
        except botocore_exceptions.ClientError as err:
            if _code(err) in _CONDITION_FAILED:
                return False
            raise
        return True


def _code(err):
    return str(err.response.get("Error", {}).get("Code", ""))


# What an endpoint answers when a conditional request's condition does not hold.
_CONDITION_FAILED = ("PreconditionFailed", "ConditionalRequestConflict", "412", "409", "NoSuchKey", "404", "NotFound")
