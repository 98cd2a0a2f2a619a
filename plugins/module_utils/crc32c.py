# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""CRC-32C (Castagnoli), the checksum of VHDX headers, region tables and log entries.

Pure Python with a 256-entry table (reflected polynomial 0x82F63B78). It only runs over small
metadata structures (4 KiB headers, 64 KiB region tables, log entries), never over payload data,
so a table-driven loop is fast enough and keeps the collection free of native dependencies.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


_POLYNOMIAL = 0x82F63B78


def _make_table():
    table = []
    for byte in range(256):
        crc = byte
        for _bit in range(8):
            crc = (crc >> 1) ^ _POLYNOMIAL if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE = _make_table()


def crc32c(data, value=0):
    """Return the CRC-32C of ``data`` (bytes-like), continuing from a previous result ``value``."""
    table = _TABLE
    crc = value ^ 0xFFFFFFFF
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF
