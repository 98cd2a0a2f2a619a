"""Test helper: make repository objects look older *to the storage* (issue 13, point 2).

Since GC judges every age by storage time (file mtimes, S3 LastModified) against the storage's own clock, a test
that needs "this chunk was written an hour ago" moves the object's time back instead of waiting or faking a
clock: ``os.utime`` on a local file, ``last_modified`` of the object inside the in-process moto server
(s3_server.py runs moto's threaded server in this process, so its backend is reachable here).

``skewed_proxy_clock`` moves the *proxy's* clock (the ``time`` module as the store and session modules see it)
while the storage keeps real time: the clock-skew experiments of issue 13.
"""
import contextlib
import datetime
import os
import time
import types

from ansible_collections.hyperv.backup.plugins.module_utils.repository import backup_session as backup_session_module
from ansible_collections.hyperv.backup.plugins.module_utils.repository import local_store as local_store_module
from ansible_collections.hyperv.backup.plugins.module_utils.repository import repository_store as repository_store_module
from ansible_collections.hyperv.backup.plugins.module_utils.repository import s3_store as s3_store_module

MOTO_ACCOUNT = "123456789012"


def _moto_bucket(bucket):
    from moto.s3.models import s3_backends
    for partition in s3_backends[MOTO_ACCOUNT].values():
        if bucket in partition.buckets:
            return partition.buckets[bucket]
    raise KeyError(bucket)


def age(store, prefix, seconds):
    """Move the storage time of every object whose key starts with ``prefix`` back by ``seconds``; returns the count."""
    count = 0
    if store.kind == "local":
        paths = []
        exact = store._path(prefix.rstrip("/"))
        if os.path.isfile(exact):
            paths.append(exact)
        else:
            paths.extend(store._path(info.key) for info in store.list(prefix))
        for path in paths:
            try:
                st = os.stat(path)
                os.utime(path, (st.st_atime - seconds, st.st_mtime - seconds))
            except FileNotFoundError:
                continue            # deleted meanwhile (a GC running beside the test)
            count += 1
        return count
    bucket = _moto_bucket(store.bucket)
    full = store.prefix + prefix
    for key in list(bucket.keys.keys()):
        if key.startswith(full):
            for version in bucket.keys.getlist(key):
                version.last_modified = version.last_modified - datetime.timedelta(seconds=seconds)
                count += 1
    return count


@contextlib.contextmanager
def skewed_proxy_clock(seconds):
    """Inside the block the proxy's clock (time.time as the repository modules call it) is off by ``seconds``."""
    fake = types.SimpleNamespace(**dict((name, getattr(time, name)) for name in dir(time) if not name.startswith("__")))
    fake.time = lambda: time.time() + seconds
    modules = (repository_store_module, local_store_module, s3_store_module, backup_session_module)
    saved = [module.time for module in modules]
    for module in modules:
        module.time = fake
    try:
        yield
    finally:
        for module, value in zip(modules, saved):
            module.time = value
