"""CRC-32C against the standard check value and known vectors (RFC 3720 B.4)."""
from ansible_collections.hyperv.backup.plugins.module_utils.crc32c import crc32c


def test_check_value():
    assert crc32c(b"123456789") == 0xE3069283


def test_rfc3720_vectors():
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E


def test_incremental_equals_whole():
    data = bytes(range(256)) * 7
    assert crc32c(data[100:], crc32c(data[:100])) == crc32c(data)
    assert crc32c(b"") == 0
