"""auth kerberos, negotiate and credssp with the client libraries requirements.txt installs, against a real KDC.

There is no Windows domain or WinRM server here, so the test brings its own pieces:

* an MIT KDC (Debian's krb5-kdc) on 127.0.0.1 with its own realm BACKUP.TEST, made in a temporary directory with
  kdb5_util and kadmin.local: a user ``alice`` (password, pre-authentication required like Active Directory) and the
  service principals ``host/localhost`` and ``HTTP/localhost`` whose keys go into the service's keytab;
* a small WinRM stand-in over HTTP that does only what WinRM does around authentication: it answers 401 with
  ``WWW-Authenticate: Negotiate`` and ``Kerberos``, hands the client's token to a GSSAPI acceptor (``spnego.server``
  with the keytab, KRB5_KTNAME), sends back the acceptor's mutual-authentication token, and then decrypts the
  client's encrypted message (MS-WSMV message encryption over http) and answers with an encrypted one.

The clients are the transports' own objects: ``pypsrp.wsman.WSMan(**transport_psrp.wsman_options(settings))`` and
``winrm.protocol.Protocol(**transport_winrm.protocol_options(settings))`` from the ConnectionSettings a module
builds, so the ticket, the token and the encryption come from exactly the code path ``auth: kerberos`` uses.
The KDC's log shows which tickets it issued.
"""
import base64
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import krb5
import pytest
import spnego
from pypsrp.encryption import WinRMEncryption
from pypsrp.wsman import WSMan
from requests_credssp import HttpCredSSPAuth
from winrm.protocol import Protocol

from ansible_collections.hyperv.backup.plugins.module_utils.host import transport_psrp, transport_winrm
from ansible_collections.hyperv.backup.plugins.module_utils.host.connection import ConnectionSettings

pytestmark = pytest.mark.integration

REALM = "BACKUP.TEST"
USER = "alice@" + REALM
PASSWORD = "Kerb-Pa55-w0rd"
HOST = "localhost"
# Which Debian package brings each program the test needs (scripts/setup.sh installs them).
PROGRAMS = {"krb5kdc": "krb5-kdc", "kdb5_util": "krb5-kdc", "kadmin.local": "krb5-admin-server", "kinit": "krb5-user",
            "klist": "krb5-user", "kdestroy": "krb5-user"}
SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")
SPNEGO_OID = bytes.fromhex("2b0601050502")          # 1.3.6.1.5.5.2, DER body
REQUEST = b'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body>identify</s:Body></s:Envelope>'
REPLY = b'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body>hyperv01 here</s:Body></s:Envelope>'


def program(name):
    found = shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN))
    if not found:
        pytest.skip("%s is missing: install the Debian package %s (scripts/setup.sh does)" % (name, PROGRAMS[name]))
    return found


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Kdc(object):
    """A running krb5kdc for REALM in ``directory``; ``log()`` is its log text."""

    def __init__(self, directory):
        self.directory = directory
        self.port = free_port()
        self.keytab = os.path.join(directory, "service.keytab")
        self.krb5_conf = os.path.join(directory, "krb5.conf")
        self.kdc_conf = os.path.join(directory, "kdc.conf")
        self.log_path = os.path.join(directory, "kdc.log")
        self.process = None

    def env(self):
        """What a client, the acceptor and the KDC tools read: our realm's configuration, a private ticket cache."""
        return {"KRB5_CONFIG": self.krb5_conf, "KRB5_KDC_PROFILE": self.kdc_conf,
                "KRB5CCNAME": "FILE:" + os.path.join(self.directory, "ccache"), "KRB5_KTNAME": "FILE:" + self.keytab,
                "KRB5RCACHETYPE": "none"}

    def write_config(self):
        with open(self.krb5_conf, "w", encoding="utf-8") as conf:
            # qualify_shortname "" and no DNS: "localhost" stays "localhost" in the service principal name
            conf.write("[libdefaults]\n  default_realm = %s\n  dns_lookup_realm = false\n  dns_lookup_kdc = false\n"
                       "  rdns = false\n  dns_canonicalize_hostname = false\n  qualify_shortname = \"\"\n"
                       "  udp_preference_limit = 1\n"
                       "[realms]\n  %s = {\n    kdc = 127.0.0.1:%d\n  }\n"
                       "[domain_realm]\n  localhost = %s\n" % (REALM, REALM, self.port, REALM))
        with open(self.kdc_conf, "w", encoding="utf-8") as conf:
            conf.write("[kdcdefaults]\n  kdc_listen = 127.0.0.1:%d\n  kdc_tcp_listen = 127.0.0.1:%d\n"
                       "[realms]\n  %s = {\n    database_name = %s/principal\n    key_stash_file = %s/stash\n"
                       "    acl_file = %s/kadm5.acl\n  }\n"
                       "[logging]\n  kdc = FILE:%s\n"
                       % (self.port, self.port, REALM, self.directory, self.directory, self.directory, self.log_path))

    def run(self, *cmd, **kwargs):
        env = dict(os.environ, **self.env())
        proc = subprocess.run(list(cmd), env=env, capture_output=True, text=True, timeout=60, check=False, **kwargs)
        assert proc.returncode == 0, "%s failed: %s%s" % (cmd, proc.stdout, proc.stderr)
        return proc.stdout

    def kadmin(self, query):
        return self.run(program("kadmin.local"), "-r", REALM, "-q", query)

    def start(self):
        self.write_config()
        self.run(program("kdb5_util"), "create", "-s", "-r", REALM, "-P", "master-key-of-the-test")
        self.kadmin("addprinc +requires_preauth -pw %s %s" % (PASSWORD, USER))
        for service in ("host", "HTTP"):
            self.kadmin("addprinc -randkey %s/%s" % (service, HOST))
            self.kadmin("ktadd -k %s %s/%s" % (self.keytab, service, HOST))
        self.process = subprocess.Popen([program("krb5kdc"), "-n"], env=dict(os.environ, **self.env()),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                assert self.process.poll() is None, "krb5kdc exited: %s" % self.log()
                assert time.monotonic() < deadline, "krb5kdc does not listen on %d: %s" % (self.port, self.log())
                time.sleep(0.1)

    def stop(self):
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def log(self):
        try:
            with open(self.log_path, encoding="utf-8") as log:
                return log.read()
        except OSError:
            return ""

    def issued(self, client, service):
        """KDC log lines saying it issued ``client`` a ticket for ``service``."""
        pattern = re.compile(r"(AS|TGS)_REQ .*ISSUE: .* %s for %s" % (re.escape(client), re.escape(service)))
        return [line for line in self.log().splitlines() if pattern.search(line)]


@pytest.fixture(scope="module", name="kdc")
def kdc_fixture(tmp_path_factory):
    for name in PROGRAMS:
        program(name)
    server = Kdc(str(tmp_path_factory.mktemp("kdc")))
    with pytest.MonkeyPatch.context() as patch:
        for name, value in server.env().items():
            patch.setenv(name, value)
        server.start()
        try:
            yield server
        finally:
            server.stop()


class WinrmStandIn(ThreadingHTTPServer):
    """WinRM's authentication and message encryption, nothing else (see the module docstring)."""

    daemon_threads = True

    def __init__(self):
        super(WinrmStandIn, self).__init__(("127.0.0.1", 0), _Handler)
        self.accepted = []       # one dict per completed logon: HTTP scheme, token kind, negotiated protocol, client principal
        self.received = []       # decrypted message bodies
        self.context = None
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin  # the name BaseHTTPRequestHandler gives it
        pass

    def _reply(self, status, body=b"", headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # pylint: disable=invalid-name  # http.server's dispatch name
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        server = self.server
        authorization = self.headers.get("Authorization")
        if authorization:
            scheme, encoded = authorization.split(" ", 1)
            token = base64.b64decode(encoded)
            # Windows' acceptor takes a bare Kerberos token or SPNEGO under either scheme; so does this one.
            protocol = "negotiate" if SPNEGO_OID in token[:32] else "kerberos"
            context = spnego.server(protocol=protocol)
            out_token = context.step(token)
            if not context.complete:
                self._reply(401, headers=[("WWW-Authenticate", "%s %s" % (scheme, base64.b64encode(out_token or b"").decode()))])
                return
            server.context = context
            server.accepted.append({"scheme": scheme, "token": protocol, "protocol": context.negotiated_protocol,
                                    "client": str(context.client_principal)})
            headers = [("WWW-Authenticate", "%s %s" % (scheme, base64.b64encode(out_token).decode()))] if out_token else []
            if not body:
                self._reply(200, headers=headers)
                return
        content_type = self.headers.get("Content-Type", "")
        if server.context is None or not content_type.startswith("multipart/encrypted"):
            self._reply(401, headers=[("WWW-Authenticate", "Negotiate"), ("WWW-Authenticate", "Kerberos")])
            return
        protocol = re.search(r'protocol="([^"]+)"', content_type).group(1)
        boundary = re.search(r'boundary="([^"]+)"', content_type).group(1)
        encryption = WinRMEncryption(server.context, protocol)
        server.received.append(encryption.unwrap_message(body, boundary))
        reply_type, reply = encryption.wrap_message(REPLY)
        self._reply(200, reply, [("Content-Type", '%s;protocol="%s";boundary="Encrypted Boundary"' % (reply_type, protocol))])


@pytest.fixture(name="winrm_server")
def winrm_server_fixture(kdc):  # pylint: disable=unused-argument  # the acceptor needs the KDC's keytab
    server = WinrmStandIn()
    server.thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def settings_for(server, transport, auth, password=PASSWORD, username=USER):
    """The ConnectionSettings a module builds from its options (protocol http: WinRM's message encryption)."""
    return ConnectionSettings(transport=transport, host=HOST, port=server.server_address[1], protocol="http", auth=auth,
                              username=username, password=password)


def test_kerberos_logon_with_a_password_gets_tickets_from_the_kdc(kdc):
    """What pypsrp does for auth kerberos with username and password: pyspnego kinit()s with the password (MEMORY
    ticket cache) and asks for a service ticket; the KDC issues both, after pre-authentication."""
    context = spnego.client(USER, PASSWORD, hostname=HOST, service="HTTP", protocol="kerberos")
    token = context.step()
    assert token and not context.complete       # the AP-REQ, waiting for the service's answer
    assert kdc.issued(USER, "krbtgt/%s@%s" % (REALM, REALM)), kdc.log()
    assert kdc.issued(USER, "HTTP/%s@%s" % (HOST, REALM)), kdc.log()
    # the ticket is the KDC's: only the service's keytab opens it
    server = spnego.server(protocol="kerberos")
    server.step(token)
    assert server.complete and str(server.client_principal) == USER


def test_a_wrong_password_gets_no_ticket(kdc):
    with pytest.raises(krb5.Krb5Error, match="Preauthentication failed"):
        spnego.client(USER, "not-" + PASSWORD, hostname=HOST, service="HTTP", protocol="kerberos")
    assert "PREAUTH_FAILED" in kdc.log(), kdc.log()


@pytest.mark.parametrize("auth", ["kerberos", "negotiate"])
def test_psrp_transport_logs_on_with_kerberos_and_encrypts(kdc, winrm_server, auth):
    """The psrp transport's WSMan: its token is accepted with the keytab, its encrypted message decrypts."""
    wsman = WSMan(**transport_psrp.wsman_options(settings_for(winrm_server, "psrp", auth)))
    assert wsman.transport.send(REQUEST) == REPLY
    assert winrm_server.received == [REQUEST]
    [logon] = winrm_server.accepted
    assert logon["client"] == USER and logon["protocol"] == "kerberos", logon
    # auth kerberos sends a bare Kerberos token, negotiate an SPNEGO one that chose Kerberos (no NTLM fallback)
    assert logon["token"] == auth, logon
    # pypsrp asks for a ticket to host/<host> (the computer account's HOST SPN in Active Directory)
    assert kdc.issued(USER, "host/%s@%s" % (HOST, REALM)), kdc.log()


def test_winrm_transport_logs_on_with_the_ticket_cache_and_encrypts(kdc, winrm_server):
    """The winrm transport (pywinrm + pykerberos) uses the ticket cache, as after ``kinit``; it never sends the
    password to the KDC (docs/kerberos.md says so)."""
    kdc.run(program("kinit"), USER, input=PASSWORD + "\n")
    try:
        assert "krbtgt/%s@%s" % (REALM, REALM) in kdc.run(program("klist"))
        client = Protocol(**transport_winrm.protocol_options(settings_for(winrm_server, "winrm", "kerberos")))
        reply = client.transport.send_message(REQUEST.decode())
    finally:
        kdc.run(program("kdestroy"))
    assert reply == REPLY
    assert winrm_server.received == [REQUEST]
    [logon] = winrm_server.accepted
    assert logon["client"] == USER and logon["protocol"] == "kerberos", logon
    # pywinrm asks for HTTP/<host>
    assert kdc.issued(USER, "HTTP/%s@%s" % (HOST, REALM)), kdc.log()


def test_psrp_transport_without_a_password_uses_the_ticket_cache(kdc, winrm_server):
    kdc.run(program("kinit"), USER, input=PASSWORD + "\n")
    try:
        wsman = WSMan(**transport_psrp.wsman_options(settings_for(winrm_server, "psrp", "kerberos", password=None)))
        assert wsman.transport.send(REQUEST) == REPLY
    finally:
        kdc.run(program("kdestroy"))
    assert [logon["client"] for logon in winrm_server.accepted] == [USER]


def test_winrm_transport_without_a_ticket_fails_even_with_a_password(kdc, winrm_server):
    """What docs/kerberos.md warns about: pywinrm's Kerberos never uses the password option."""
    client = Protocol(**transport_winrm.protocol_options(settings_for(winrm_server, "winrm", "kerberos")))
    tickets_before = len(kdc.issued(USER, ""))
    with pytest.raises(Exception, match="Can't find client principal %s in cache collection" % USER):
        client.transport.send_message(REQUEST.decode())
    assert winrm_server.accepted == [] and len(kdc.issued(USER, "")) == tickets_before


def test_credssp_builds_its_auth_context_on_both_transports():
    """auth credssp needs requests-credssp (the credssp extras): both transports build their CredSSP auth."""
    settings = ConnectionSettings(transport="psrp", host=HOST, auth="credssp", username="BACKUP\\alice", password=PASSWORD)
    session = WSMan(**transport_psrp.wsman_options(settings)).transport._build_session()  # pylint: disable=protected-access  # what WSMan.send builds first
    assert isinstance(session.auth, HttpCredSSPAuth)
    settings = ConnectionSettings(transport="winrm", host=HOST, auth="credssp", username="BACKUP\\alice", password=PASSWORD)
    transport = Protocol(**transport_winrm.protocol_options(settings)).transport
    transport.build_session()
    assert isinstance(transport.session.auth, HttpCredSSPAuth)
    # the CredSSP exchange starts with a TLS ClientHello (record type 22) from requests-credssp's context
    assert spnego.client("BACKUP\\alice", PASSWORD, hostname=HOST, protocol="credssp").step()[:1] == b"\x16"
