# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The S3 store: repository objects in an S3-compatible bucket under an optional prefix (the interface:
repository_store.py).

Single PUTs are atomic; with Object Lock, ``put`` and ``touch`` set or extend the retention of the object. There
is no flock: the exclusive lock and the markers are objects written with conditional requests (If-None-Match,
If-Match), renewed by a heartbeat and judged expired by the endpoint's clock (docs/repository.md). boto3 is
imported on first use; its connection-level failures become a RepositoryError naming the endpoint.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import datetime
import email.utils
import functools
import json
import time
import uuid

from ansible_collections.hyperv.backup.plugins.module_utils.errors import RepositoryError
from ansible_collections.hyperv.backup.plugins.module_utils.lazy_import import LazyModule, is_installed
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_store import (
    Heartbeat, LockHeld, ObjectInfo, _owner_text, _StoreClock,
)

# boto3 is imported on first use (by an S3 repository): see lazy_import.
boto3_session = LazyModule("boto3.session")
botocore_config = LazyModule("botocore.config")
botocore_exceptions = LazyModule("botocore.exceptions")
HAS_BOTO3 = is_installed("boto3")


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
