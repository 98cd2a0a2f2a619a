"""Test helper: a real S3 endpoint on 127.0.0.1 (moto's threaded server) and buckets on it.

The repository talks to it with real boto3 over real HTTP, so the S3 backend is exercised as it is
against AWS or MinIO: listing, conditional PUTs for the lock object, Object Lock retention.
"""
import logging
import socket
import uuid

import boto3
from moto.server import ThreadedMotoServer

CREDENTIALS = {"access_key": "testing", "secret_key": "testing", "region": "us-east-1"}


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class S3Server:
    """Start/stop a moto server; ``new_bucket`` creates a bucket and returns (location, s3_options)."""

    def __init__(self):
        self.port = _free_port()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.endpoint_url = "http://127.0.0.1:%d" % self.port

    def start(self):
        logging.getLogger("werkzeug").setLevel(logging.ERROR)   # one access-log line per request otherwise
        self.server.start()
        return self

    def stop(self):
        self.server.stop()

    @property
    def options(self):
        return dict(CREDENTIALS, endpoint_url=self.endpoint_url)

    def client(self):
        return boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id="testing",
                            aws_secret_access_key="testing", region_name="us-east-1")

    def new_bucket(self, object_lock=False, prefix="repo"):
        name = "bkt-%s" % uuid.uuid4().hex[:12]
        kwargs = {"Bucket": name}
        if object_lock:
            kwargs["ObjectLockEnabledForBucket"] = True
        self.client().create_bucket(**kwargs)
        return "s3://%s/%s" % (name, prefix), self.options
