# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Writing restored files onto a Hyper-V host over SMB (the administrative share, ``C:\\X`` -> ``\\\\host\\C$\\X``).

The restore writes and verifies each disk on the proxy first; ``upload_file`` then copies it under a temporary
name, checks the remote size, and renames it into place, so a broken transfer never leaves a file under the
final name. smbclient (smbprotocol) is imported on first use, as for SMB reads (host/disk_access.py).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ntpath
import os

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HyperVBackupError
from ansible_collections.hyperv.backup.plugins.module_utils.host.disk_access import HAS_SMBCLIENT, smbclient, unc_path

TEMP_SUFFIX = ".uploading"
BLOCK = 4 * 1024 * 1024


def _smb_write_error(unc, err):
    return HyperVBackupError("Cannot write %s over SMB: %s." % (unc, err),
                             hint="Check that the host's administrative share is reachable (TCP 445), that the account "
                                  "may write there (a local administrator of the host), and the free space.", path=unc)


class SmbUploader:
    """Uploads files to one host with the connection credentials; ``client`` is smbclient (or a test double)."""

    def __init__(self, host, username=None, password=None, port=445, client=None):
        if client is None and not HAS_SMBCLIENT:
            raise HyperVBackupError("Writing onto host %s over SMB needs the Python library smbprotocol (smbclient)." % host,
                                    hint="pip install smbprotocol on the proxy, or mount the host's share and use path_map.")
        self.host = host
        self._client = client or smbclient
        self._args = {"username": username, "password": password, "port": port}

    def unc(self, windows_path):
        return unc_path(windows_path, self.host)

    def exists(self, windows_path):
        unc = self.unc(windows_path)
        try:
            return bool(self._client.path.exists(unc, **self._args))
        except Exception as err:  # pylint: disable=broad-except  # smbprotocol's own logon/transport errors
            raise _smb_write_error(unc, "%s: %s" % (type(err).__name__, err))

    def upload_file(self, local_path, windows_path, replace=False):
        """Copy ``local_path`` to ``windows_path`` on the host; returns the UNC path written."""
        unc = self.unc(windows_path)
        temp = unc + TEMP_SUFFIX
        size = os.path.getsize(local_path)
        try:
            self._client.makedirs(ntpath.dirname(unc), exist_ok=True, **self._args)
            with open(local_path, "rb") as source, self._client.open_file(temp, mode="wb", **self._args) as target:
                while True:
                    block = source.read(BLOCK)
                    if not block:
                        break
                    target.write(block)
            written = self._client.stat(temp, **self._args).st_size
            if written != size:
                raise OSError("the remote file has %d bytes, expected %d" % (written, size))
            if replace:
                self._client.replace(temp, unc, **self._args)
            else:
                self._client.rename(temp, unc, **self._args)
        except Exception as err:  # pylint: disable=broad-except
            try:
                self._client.remove(temp, **self._args)
            except Exception:  # pylint: disable=broad-except
                pass        # the temporary name never becomes the target; the error below is what matters
            if isinstance(err, HyperVBackupError):
                raise
            raise _smb_write_error(unc, "%s: %s" % (type(err).__name__, err))
        return unc
