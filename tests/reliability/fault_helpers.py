"""Fault injection helpers of the reliability suite: a tmpfs that fills up, a read-only view, a flaky S3 proxy.

Each helper says how it injected the fault (``how``) so the ledger and docs/reliability.md can tell a
real kernel ENOSPC/EROFS from a simulated one (when the suite does not run as root, e.g. in some CI).
"""
import contextlib
import errno
import os
import random
import shutil
import socket
import subprocess
import threading
import time

from ansible_collections.hyperv.backup.plugins.module_utils.errors import RepositoryError


def is_root():
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _mount(*args):
    return subprocess.run(["mount"] + list(args), capture_output=True, text=True, check=False).returncode == 0


@contextlib.contextmanager
def small_filesystem(directory, size_mib):
    """A tmpfs of ``size_mib`` at ``directory`` (root only); yields True if mounted, False if not possible."""
    os.makedirs(directory, exist_ok=True)
    mounted = is_root() and _mount("-t", "tmpfs", "-o", "size=%dm,mode=0700" % size_mib, "tmpfs", str(directory))
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(directory)], check=False)


@contextlib.contextmanager
def read_only_view(directory, view):
    """``view`` shows ``directory`` read-only: a read-only bind mount (root) or, failing that, chmod a-w.

    Root ignores file modes, so chmod only works for a non-root run; a bind mount is the real thing.
    Yields how it was done: "bind-mount" or "chmod", or None when neither can work (root without
    the right to mount, e.g. in an unprivileged container): the caller then skips.
    """
    os.makedirs(view, exist_ok=True)
    if is_root():
        if _mount("--bind", str(directory), str(view)):
            if _mount("-o", "remount,ro,bind", str(view)):
                try:
                    yield "bind-mount"
                finally:
                    subprocess.run(["umount", "-l", str(view)], check=False)
                return
            subprocess.run(["umount", "-l", str(view)], check=False)
        yield None
        return
    os.rmdir(view)
    shutil.copytree(directory, view, symlinks=True)
    modes = {}
    for root, dirs, files in os.walk(view):
        for name in dirs + files + ["."]:
            path = os.path.join(root, name)
            modes[path] = os.stat(path).st_mode
            os.chmod(path, modes[path] & ~0o222)
    try:
        yield "chmod"
    finally:
        for path, mode in modes.items():
            if os.path.exists(path):
                os.chmod(path, mode)


def injected_enospc(store, prefix):
    """Make ``store.put`` (a LocalStore) fail with ENOSPC for keys starting with ``prefix`` (a simulated full disk)."""
    real_put = store.put

    def put(key, data, **kwargs):
        if key.startswith(prefix):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), store._path(key))   # pylint: disable=protected-access
        return real_put(key, data, **kwargs)
    store.put = put
    return real_put


def is_clear_repository_error(err, *words):
    """A RepositoryError whose text contains each of ``words`` (case-insensitive) and a hint."""
    text = str(err).lower()
    return isinstance(err, RepositoryError) and bool(err.hint) and all(w.lower() in text for w in words)


class FlakyProxy:
    """A TCP proxy on 127.0.0.1 in front of an HTTP server (moto) that misbehaves on purpose.

    ``mode`` (changeable at any time): "pass"; "flaky" -- a share ``rate`` of requests gets a 500, a
    dropped connection, or a delay of ``delay`` seconds before passing; "down" -- every new connection
    is dropped. ``counts`` says what was done. One connection carries requests until it is dropped; to
    make each request a separate decision the proxy answers with ``Connection: close`` semantics by
    handling one request per connection (it closes after forwarding the response).
    """

    def __init__(self, upstream_port, seed=0):
        self.upstream = ("127.0.0.1", upstream_port)
        self.mode = "pass"
        self.rate = 0.3
        self.delay = 1.0
        self.methods = ("PUT", "POST")
        self.rng = random.Random(seed)
        self.counts = {"requests": 0, "error_500": 0, "dropped": 0, "delayed": 0, "passed": 0}
        self._lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.endpoint_url = "http://127.0.0.1:%d" % self.port
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop:
            try:
                client, _addr = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _count(self, what):
        with self._lock:
            self.counts[what] += 1

    def _decide(self, method):
        with self._lock:
            self.counts["requests"] += 1
            if self.mode == "down":
                return "dropped"
            if self.mode == "flaky" and method in self.methods and self.rng.random() < self.rate:
                return self.rng.choice(["error_500", "dropped", "delayed"])
            return "passed"

    @staticmethod
    def _read_request(client):
        data = b""
        while b"\r\n\r\n" not in data:
            part = client.recv(65536)
            if not part:
                return None
            data += part
        head, _sep, body = data.partition(b"\r\n\r\n")
        length = 0
        headers = {}
        for line in head.split(b"\r\n")[1:]:
            name, _colon, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if headers.get(b"expect", b"").lower() == b"100-continue" and len(body) < int(headers.get(b"content-length", 0)):
            client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")     # botocore waits for this before sending a body
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            while not body.endswith(b"\r\n\r\n") or b"\r\n0\r\n" not in b"\r\n" + body:
                part = client.recv(65536)
                if not part:
                    return None
                body += part
            return head, body
        length = int(headers.get(b"content-length", 0))
        while len(body) < length:
            part = client.recv(65536)
            if not part:
                return None
            body += part
        return head, body

    def _handle(self, client):
        with contextlib.closing(client):
            client.settimeout(120)
            while True:
                try:
                    request = self._read_request(client)
                except OSError:
                    return
                if request is None:
                    return
                head, body = request
                method = head.split(b" ", 1)[0].decode("ascii", "replace")
                decision = self._decide(method)
                self._count(decision)
                if decision == "dropped":
                    return                       # close without an answer: the client sees a reset/closed connection
                if decision == "error_500":
                    payload = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>InternalError</Code>"
                               b"<Message>injected</Message></Error>")
                    client.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/xml\r\n"
                                   b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(payload), payload))
                    return
                if decision == "delayed":
                    time.sleep(self.delay)
                try:
                    response = self._forward(head, body)
                    client.sendall(response)
                except OSError:
                    return
                return                           # one request per connection: every request is a fresh decision

    def _forward(self, head, body):
        lines = [line for line in head.split(b"\r\n") if not line.lower().startswith((b"connection:", b"expect:"))]
        lines.append(b"Connection: close")
        with socket.create_connection(self.upstream, timeout=60) as upstream:
            upstream.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
            chunks = []
            while True:
                part = upstream.recv(65536)
                if not part:
                    break
                chunks.append(part)
        return b"".join(chunks)

    def stop(self):
        self._stop = True
        self.sock.close()
