# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""CRC-32C (Castagnoli), the checksum of VHDX headers, region tables and log entries.

It only runs over metadata (4 KiB headers, 64 KiB region tables, metadata regions, log entries),
never over payload data, but a pure Python loop still spends ~3 ms per 64 KiB, i.e. tens of
milliseconds each time a differencing chain is opened: a sixth of an incremental backup's time.
So the ``crc32c`` package (ICRAR, LGPL-2.1+, hardware CRC32 instruction) is used when installed
(requirements.txt has it), and the table-driven Python version (reflected polynomial 0x82F63B78)
otherwise; the tests check both against each other.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.hyperv.backup.plugins.module_utils.lazy_import import LazyModule, is_installed

# Imported on first use: the package reads its own metadata at import (~10 ms of every module run).
HAS_NATIVE_CRC32C = is_installed("crc32c")
_native = LazyModule("crc32c") if HAS_NATIVE_CRC32C else None

_POLYNOMIAL = 0x82F63B78


def _make_table():
    table = []
    for byte in range(256):
        crc = byte
        for _bit in range(8):
            crc = (crc >> 1) ^ _POLYNOMIAL if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE = None   # built on first use of the Python version (~10 ms; not needed with the native package)


def crc32c(data, value=0):
    """Return the CRC-32C of ``data`` (bytes-like), continuing from a previous result ``value``."""
    if _native is not None:
        return _native.crc32c(data, value)
    return crc32c_python(data, value)


def crc32c_python(data, value=0):
    """The same, in pure Python (the fallback, and the tests' second opinion)."""
    global _TABLE  # pylint: disable=global-statement
    if _TABLE is None:
        _TABLE = _make_table()
    table = _TABLE
    crc = value ^ 0xFFFFFFFF
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF
