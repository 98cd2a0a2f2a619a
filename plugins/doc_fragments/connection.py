# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Documentation fragment of the options that say how a module reaches a Hyper-V host.

Every module that talks to a host uses ``extends_documentation_fragment: [hyperv.backup.connection]``
and extends ``connection_argument_spec()`` from ``module_utils/host/connection.py``; a unit test keeps the
two in step.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """Connection options shared by every host module (names follow the ansible.windows psrp plugin)."""

    DOCUMENTATION = r'''
options:
  transport:
    description:
      - How the module reaches the Hyper-V host.
      - C(psrp) runs PowerShell over the PowerShell Remoting Protocol (pypsrp); C(winrm) runs C(powershell.exe)
        in a WinRM shell (pywinrm); C(lab) uses the file-backed lab host emulator in O(lab_directory).
      - If the value is not specified in the task, the value of environment variable E(HYPERV_TRANSPORT) will be used instead.
    type: str
    choices: [psrp, winrm, lab]
    default: psrp
    version_added: 0.1.0
  host:
    description:
      - The Hyper-V host (DNS name or IP address) to connect to. For O(transport=lab), the name of the lab host.
      - Run the module against the cluster node that owns the VM; change tracking calls are local to that node.
      - If the value is not specified in the task, the value of environment variable E(HYPERV_HOST) will be used instead.
    type: str
    required: true
    version_added: 0.1.0
  port:
    description:
      - The WinRM port of the host.
      - When not set, 5986 for O(protocol=https) and 5985 for O(protocol=http).
      - If the value is not specified in the task, the value of environment variable E(HYPERV_PORT) will be used instead.
    type: int
    version_added: 0.1.0
  username:
    description:
      - The user to log on as, for example C(administrator@EXAMPLE.COM) or C(EXAMPLE\\backup).
      - The user must be a local administrator (or in Hyper-V Administrators) on the host.
      - Not needed for O(auth=certificate), nor for O(auth=kerberos) with an existing ticket.
      - If the value is not specified in the task, the value of environment variable E(HYPERV_USERNAME) will be used instead.
    type: str
    version_added: 0.1.0
  password:
    description:
      - The password of O(username). Never logged or returned.
      - If the value is not specified in the task, the value of environment variable E(HYPERV_PASSWORD) will be used instead.
    type: str
    version_added: 0.1.0
  protocol:
    description:
      - Whether the WinRM listener is reached over HTTPS or HTTP.
      - With C(http), use an O(auth) that encrypts messages (C(negotiate), C(kerberos), C(ntlm), C(credssp)).
      - If the value is not specified in the task, the value of environment variable E(HYPERV_PROTOCOL) will be used instead.
    type: str
    choices: [https, http]
    default: https
    version_added: 0.1.0
  auth:
    description:
      - The authentication method.
      - C(certificate) needs O(certificate_pem) and O(certificate_key_pem); C(basic) needs a local account and HTTPS.
      - C(kerberos) needs a krb5.conf for the domain; O(transport=winrm) uses the C(kinit) ticket cache only (docs/kerberos.md).
      - If the value is not specified in the task, the value of environment variable E(HYPERV_AUTH) will be used instead.
    type: str
    choices: [negotiate, kerberos, ntlm, credssp, certificate, basic]
    default: negotiate
    version_added: 0.1.0
  cert_validation:
    description:
      - Whether the host's TLS certificate is checked (C(validate)) or not (C(ignore)). Use C(ignore) only in a lab.
      - If the value is not specified in the task, the value of environment variable E(HYPERV_CERT_VALIDATION) will be used instead.
    type: str
    choices: [validate, ignore]
    default: validate
    version_added: 0.1.0
  ca_cert:
    description:
      - Path of a PEM file with the CA certificate(s) that signed the host's TLS certificate.
      - When not set, the system trust store is used.
      - If the value is not specified in the task, the value of environment variable E(HYPERV_CA_CERT) will be used instead.
    type: path
    version_added: 0.1.0
  certificate_pem:
    description:
      - Path of the PEM client certificate for O(auth=certificate).
    type: path
    version_added: 0.1.0
  certificate_key_pem:
    description:
      - Path of the PEM private key of O(certificate_pem). Only the path is handled; the key is never printed.
    type: path
    version_added: 0.1.0
  message_encryption:
    description:
      - Whether WinRM messages are encrypted by the authentication layer.
      - C(auto) encrypts over HTTP and relies on TLS over HTTPS; C(always) encrypts in both cases; C(never) turns it off
        (only for HTTPS or a lab).
    type: str
    choices: [auto, always, never]
    default: auto
    version_added: 0.1.0
  configuration_name:
    description:
      - The PowerShell session configuration (endpoint) to connect to, for example a JEA endpoint. Used by O(transport=psrp).
    type: str
    default: Microsoft.PowerShell
    version_added: 0.1.0
  connection_timeout:
    description:
      - Seconds to wait for the TCP connection to the host.
    type: int
    default: 30
    version_added: 0.1.0
  read_timeout:
    description:
      - Seconds to wait for one WinRM response from the host before giving up.
    type: int
    default: 300
    version_added: 0.1.0
  operation_timeout:
    description:
      - Seconds a single host operation (for example creating a recovery checkpoint and waiting for its job) may take.
    type: int
    default: 3600
    version_added: 0.1.0
  lab_directory:
    description:
      - Directory of the lab host emulator, for O(transport=lab).
      - If the value is not specified in the task, the value of environment variable E(HYPERV_LAB_DIRECTORY) will be used instead.
    type: path
    version_added: 0.1.0
requirements:
  - pypsrp >= 0.8.1 (transport psrp), with its kerberos extra (pypsrp[kerberos]) for auth kerberos
  - pywinrm >= 0.4.3 (transport winrm), with its kerberos and credssp extras (pywinrm[kerberos,credssp]) for those auth methods
  - smbprotocol >= 1.10 (disk files read or written over SMB)
  - The Kerberos client libraries and a krb5.conf for the domain (auth kerberos; see bindep.txt)
'''
