"""CRC-32C against the standard check value and known vectors (RFC 3720 B.4), native and pure Python alike."""
import os

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.vdisk import crc32c as crc_module

IMPLEMENTATIONS = [crc_module.crc32c_python]
if crc_module.HAS_NATIVE_CRC32C:
    IMPLEMENTATIONS.append(crc_module.crc32c)


@pytest.mark.parametrize("crc32c", IMPLEMENTATIONS, ids=lambda f: f.__name__)
def test_check_value(crc32c):
    assert crc32c(b"123456789") == 0xE3069283


@pytest.mark.parametrize("crc32c", IMPLEMENTATIONS, ids=lambda f: f.__name__)
def test_rfc3720_vectors(crc32c):
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E


@pytest.mark.parametrize("crc32c", IMPLEMENTATIONS, ids=lambda f: f.__name__)
def test_incremental_equals_whole(crc32c):
    data = bytes(range(256)) * 7
    assert crc32c(data[100:], crc32c(data[:100])) == crc32c(data)
    assert crc32c(b"") == 0


def test_native_is_installed_and_agrees_with_python():
    # requirements.txt installs the native package; the VHDX reader's speed depends on it
    assert crc_module.HAS_NATIVE_CRC32C
    data = os.urandom(65536)
    assert crc_module.crc32c(data) == crc_module.crc32c_python(data)
    assert crc_module.crc32c(memoryview(data)[4:], 7) == crc_module.crc32c_python(data[4:], 7)
