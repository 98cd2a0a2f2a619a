"""Both transports with the real pypsrp / pywinrm clients against local sockets (no Windows needed).

A closed port, a WinRM-like endpoint that refuses every credential, and a TLS endpoint with a
self-signed certificate: the categories, hints and secret handling come from the real libraries'
exceptions, not from mocks.
"""
import datetime
import http.server
import logging
import socket
import ssl
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ansible_collections.hyperv.backup.plugins.module_utils.host.connection import HostSession, connection_argument_spec
from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError

PASSWORD = "Real-Client-Secret-42"
TRANSPORTS = ["psrp", "winrm"]


class RefuseEveryone(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server naming)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="WSMAN"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    servers = []

    def start(tls_dir=None):
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RefuseEveryone)
        if tls_dir is not None:
            key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
            now = datetime.datetime.now(datetime.timezone.utc)
            cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                    .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
                    .sign(key, hashes.SHA256()))
            (tls_dir / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            (tls_dir / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                                serialization.NoEncryption()))
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls_dir / "cert.pem"), str(tls_dir / "key.pem"))
            srv.socket = context.wrap_socket(srv.socket, server_side=True)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv.server_address[1]

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def closed_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def run(transport, **overrides):
    params = dict((name, None) for name in connection_argument_spec())
    params.update(host="127.0.0.1", username="backup", password=PASSWORD, transport=transport, protocol="http",
                  connection_timeout=3, read_timeout=5)
    params.update(overrides)
    session = HostSession.from_module_params(params)
    with pytest.raises(HostOperationError) as err:
        with session:
            session.run("get_host_info")
    assert PASSWORD not in str(err.value) and PASSWORD not in repr(err.value.details()) and PASSWORD not in repr(session)
    return err.value


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_closed_port_is_unreachable(transport, caplog):
    with caplog.at_level(logging.DEBUG):
        err = run(transport, port=closed_port(), auth="ntlm")
    assert err.category == "unreachable" and "listener" in err.hint
    assert PASSWORD not in caplog.text


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_refused_credentials_are_authentication(transport, server, caplog):
    with caplog.at_level(logging.DEBUG):
        err = run(transport, port=server(), auth="basic", message_encryption="never")
    assert err.category == "authentication" and "credentials" in err.hint
    assert PASSWORD not in caplog.text


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_untrusted_certificate_is_a_tls_failure(transport, server, tmp_path):
    err = run(transport, port=server(tls_dir=tmp_path), protocol="https", auth="basic")
    assert err.category == "unreachable" and "ca_cert" in err.hint
