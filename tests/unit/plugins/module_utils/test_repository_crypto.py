"""The object envelope: compression only when it helps, authenticated encryption bound to the object's name."""
import os

import blake3
import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.errors import RepositoryError
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_crypto import (
    KIND_CHUNK, KIND_MANIFEST, RepositoryKeys, new_compressor,
)

FAST_KDF = {"n": 2 ** 14, "r": 8, "p": 1}


@pytest.fixture(scope="module")
def keys_and_section():
    return RepositoryKeys.create("pass phrase", FAST_KDF)


def test_plain_envelope_round_trip_and_compression_choice():
    keys = RepositoryKeys()
    text = b"log line 42 " * 5000
    noise = os.urandom(50000)
    packed_text = keys.seal(KIND_CHUNK, "chunks/aa/x", text, new_compressor(1))
    packed_noise = keys.seal(KIND_CHUNK, "chunks/aa/y", noise, new_compressor(1))
    assert len(packed_text) < len(text) // 10
    assert len(packed_noise) == len(noise) + 6 + 16               # incompressible: stored as is, plus checksum (XXH3-128)
    assert keys.unseal(KIND_CHUNK, "chunks/aa/x", packed_text) == text
    assert keys.unseal(KIND_CHUNK, "chunks/aa/y", packed_noise) == noise
    assert keys.chunk_id(text) == blake3.blake3(text).hexdigest()
    with pytest.raises(ValueError, match="kind"):
        keys.unseal(KIND_MANIFEST, "chunks/aa/x", packed_text)
    with pytest.raises(ValueError, match="magic"):
        keys.unseal(KIND_CHUNK, "chunks/aa/x", b"XXXX" + packed_text[4:])


def test_plain_envelope_detects_bit_flips_anywhere():
    keys = RepositoryKeys()
    blob = keys.seal(KIND_MANIFEST, "manifests/b/0", b'{"vm_id": "abc", "rct_id": "rct-7"}' * 20, new_compressor(1))
    for position in range(len(blob)):
        damaged = bytearray(blob)
        damaged[position] ^= 0x10
        with pytest.raises(ValueError):
            keys.unseal(KIND_MANIFEST, "manifests/b/0", bytes(damaged))
    with pytest.raises(ValueError, match="checksum"):
        keys.unseal(KIND_MANIFEST, "manifests/b/1", blob)          # plain objects are bound to their name too


def test_encrypted_envelope_is_bound_to_name_and_detects_tampering(keys_and_section):
    keys, section = keys_and_section
    data = b"secret payroll " * 1000
    blob = keys.seal(KIND_CHUNK, "chunks/ab/one", data, new_compressor(1))
    assert b"secret" not in blob and "pass phrase" not in repr(section)
    assert keys.unseal(KIND_CHUNK, "chunks/ab/one", blob) == data
    with pytest.raises(ValueError, match="authentication failed"):
        keys.unseal(KIND_CHUNK, "chunks/ab/two", blob)             # moved to another name
    flipped = bytearray(blob)
    flipped[-1] ^= 1
    with pytest.raises(ValueError, match="authentication failed"):
        keys.unseal(KIND_CHUNK, "chunks/ab/one", bytes(flipped))
    plain_blob = RepositoryKeys().seal(KIND_CHUNK, "chunks/ab/one", data)
    with pytest.raises(ValueError, match="not encrypted"):
        keys.unseal(KIND_CHUNK, "chunks/ab/one", plain_blob)       # a planted plaintext object
    assert keys.chunk_id(data) != blake3.blake3(data).hexdigest()  # keyed: ids reveal nothing


def test_unlock(keys_and_section):
    keys, section = keys_and_section
    again = RepositoryKeys.unlock(section, "pass phrase", "/repo")
    assert (again.data_key, again.id_key) == (keys.data_key, keys.id_key)
    with pytest.raises(RepositoryError, match="Wrong passphrase"):
        RepositoryKeys.unlock(section, "pass phrase!", "/repo")
    with pytest.raises(RepositoryError, match="no passphrase"):
        RepositoryKeys.unlock(section, None, "/repo")
    assert not RepositoryKeys.unlock(None, None, "/repo").encrypted
