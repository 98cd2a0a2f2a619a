"""The S3 exclusive lock (prune/GC one at a time) against moto's server over real HTTP (issue 13, point 4).

The lock is renewed by a heartbeat while held, taken over only conditionally (If-Match on the expired lock's ETag),
released only if it is still ours, and judged expired by storage time (LastModified + ttl against the storage's
clock), never by a proxy's clock. A store that ignores conditional requests is refused when the repository is created.
"""
import contextlib
import json
import time

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.errors import RepositoryError
from ansible_collections.hyperv.backup.plugins.module_utils.repository import s3_store
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_store import LockHeld
from ansible_collections.hyperv.backup.plugins.module_utils.repository.s3_store import S3Store

from s3_server import S3Server
from storage_age import age, skewed_proxy_clock

LOCK = "locks/exclusive"


@pytest.fixture(scope="module")
def s3_server():
    server = S3Server().start()
    yield server
    server.stop()


@pytest.fixture
def stores(s3_server):
    """Two proxies' stores on one fresh bucket (each its own boto3 client)."""
    location, options = s3_server.new_bucket()

    def make():
        return S3Store(location, dict(options))
    return make


def lock_body(store):
    return json.loads(store.get(LOCK))


def plant_expired_lock(store):
    """A lock left by a holder that died two hours ago (by its own clock and by the storage's)."""
    store.client.put_object(Bucket=store.bucket, Key=store._key(LOCK), Body=json.dumps(
        {"owner": "dead host pid 1", "purpose": "prune", "token": "dead", "expires": time.time() - 3600, "ttl": 60}).encode())
    age(store, LOCK, 2 * 3600)


def test_a_held_lock_is_renewed_and_not_taken_over_after_its_ttl(stores):
    a, b = stores(), stores()
    with a.exclusive_lock("exclusive", "prune", ttl_seconds=3):
        time.sleep(4.5)                          # longer than the ttl: only the heartbeat keeps it
        with pytest.raises(LockHeld):
            with b.exclusive_lock("exclusive", "gc", ttl_seconds=3):
                pass
    with b.exclusive_lock("exclusive", "gc", ttl_seconds=3):       # released: free for the next one
        assert lock_body(b)["purpose"] == "gc"


def test_expired_lock_is_taken_over_by_exactly_one_of_two_racers(stores):
    b, c = stores(), stores()
    plant_expired_lock(b)
    held_by_c = contextlib.ExitStack()
    real_get = b.client.get_object

    def get_object(**kwargs):
        answer = real_get(**kwargs)
        if kwargs.get("Key") == b._key(LOCK) and not held_by_c._exit_callbacks:
            held_by_c.enter_context(c.exclusive_lock("exclusive", "gc by c"))   # c takes the expired lock over first
        return answer
    b.client.get_object = get_object
    with held_by_c:
        with pytest.raises(LockHeld, match="gc by c"):
            with b.exclusive_lock("exclusive", "prune by b"):
                pass
        assert lock_body(c)["purpose"] == "gc by c"                 # b did not delete c's fresh lock
    assert b.stat(LOCK) is None                                      # c released it


def test_release_leaves_a_lock_that_is_no_longer_ours(stores):
    a, b = stores(), stores()
    first = a.exclusive_lock("exclusive", "prune by a", ttl_seconds=3600)
    first.__enter__()
    age(a, LOCK, 2 * 3600)                      # a stalled past its ttl (no heartbeat for two hours)
    with b.exclusive_lock("exclusive", "prune by b", ttl_seconds=3600):
        first.__exit__(None, None, None)        # a wakes up and releases: it must not remove b's lock
        assert lock_body(b)["purpose"] == "prune by b"
    assert b.stat(LOCK) is None


def test_expiry_is_judged_by_storage_time_not_by_a_proxy_clock(stores):
    a, b = stores(), stores()
    with a.exclusive_lock("exclusive", "prune by a", ttl_seconds=600):
        with skewed_proxy_clock(2 * 3600):       # b's proxy clock is two hours fast
            with pytest.raises(LockHeld, match="prune by a"):
                with b.exclusive_lock("exclusive", "prune by b", ttl_seconds=600):
                    pass
        assert lock_body(a)["purpose"] == "prune by a"


def test_repository_creation_refuses_an_s3_that_ignores_conditional_writes(s3_server, monkeypatch):
    location, options = s3_server.new_bucket()
    real_init = S3Store.__init__

    def ignoring_init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)

        def strip(request, **_kwargs):            # the endpoint behaves as if it did not know the header
            for header in ("If-None-Match", "If-Match"):
                if header in request.headers:
                    del request.headers[header]
        self.client.meta.events.register("before-sign.s3.*", strip)
    monkeypatch.setattr(S3Store, "__init__", ignoring_init)
    with pytest.raises(RepositoryError, match="conditional") as caught:
        Repository.init(location, s3_options=options, chunk_size=64 * 1024)
    assert "If-None-Match" in caught.value.message and caught.value.hint
    monkeypatch.setattr(S3Store, "__init__", real_init)
    store = S3Store(location, dict(options))
    assert store.stat("config") is None                  # nothing was created
    assert Repository.init(location, s3_options=options, chunk_size=64 * 1024).store.kind == "s3"
    assert s3_store.S3Store is S3Store
