"""Envelope of format version 3 (issue 13, points 7 and 8): a key of its own for every encrypted object (HKDF of the data
key with a per-object salt), and optional Padme padding of encrypted objects, authenticated inside the ciphertext and
switched on by an authenticated config field.

Tests that take ``backend`` run against a local directory and against S3 (moto server over real HTTP).
"""
import json
import os
import random
import struct

import pytest
import xxhash
from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ansible_collections.hyperv.backup.plugins.module_utils.errors import RepositoryError
from ansible_collections.hyperv.backup.plugins.module_utils.repository.backup_record import FORMAT_VERSION
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_crypto import (
    FLAG_PADDED, HEADER, KIND_CHUNK, KIND_MANIFEST, KIND_STATUS, NONCE_SIZE, SALT_SIZE, RepositoryKeys, new_compressor, padme,
)
from ansible_collections.hyperv.backup.plugins.modules import hyperv_backup_repository

from test_repository import FAST_KDF, backend, backend_options, image, new_repo, read_all, s3_server, write_backup  # noqa: F401  pylint: disable=unused-import

PASSPHRASE = "correct horse battery"
OVERHEAD_V3 = HEADER.size + SALT_SIZE + NONCE_SIZE + 16          # header, salt, nonce, GCM tag


@pytest.fixture(scope="module")
def keys():
    return RepositoryKeys.create(PASSPHRASE, FAST_KDF)[0]


def padded_keys(keys):
    padded = RepositoryKeys(keys.data_key, keys.id_key)
    padded.padding = "padme"
    return padded


# -- point 7: per-object keys ------------------------------------------------------------------------

def test_every_object_has_its_own_key_derived_with_hkdf(keys):
    data = b"payroll 2026 " * 4000
    first = keys.seal(KIND_CHUNK, "chunks/ab/one", data, new_compressor(1))
    second = keys.seal(KIND_CHUNK, "chunks/ab/one", data, new_compressor(1))
    assert first[:4] == b"HVB5" and FORMAT_VERSION >= 3
    header, rest = first[:HEADER.size], first[HEADER.size:]
    salt, nonce, ciphertext = rest[:SALT_SIZE], rest[SALT_SIZE:SALT_SIZE + NONCE_SIZE], rest[SALT_SIZE + NONCE_SIZE:]
    assert second[HEADER.size:HEADER.size + SALT_SIZE] != salt                  # a fresh salt, so a fresh key, per object
    object_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt,
                      info=b"hyperv.backup object v3" + struct.pack(">B", KIND_CHUNK)).derive(keys.data_key)
    aad = header + salt + b"chunks/ab/one"
    body = AESGCM(object_key).decrypt(nonce, ciphertext, aad)
    assert new_compressor(1).compress(data) == body
    with pytest.raises(Exception):                                               # not under the master data key
        AESGCM(keys.data_key).decrypt(nonce, ciphertext, aad)
    assert keys.unseal(KIND_CHUNK, "chunks/ab/one", first) == data


@pytest.mark.parametrize("padding", ["none", "padme"])
def test_unseal_refuses_tampering_wrong_kind_and_swapped_names(keys, padding):
    sealer = padded_keys(keys) if padding == "padme" else keys
    blob = sealer.seal(KIND_MANIFEST, "manifests/b/0", b'{"vm_id": "abc", "rct_id": "rct-7"}' * 20, new_compressor(1))
    assert sealer.unseal(KIND_MANIFEST, "manifests/b/0", blob)
    for position in range(len(blob)):                                            # header, salt, nonce, ciphertext, tag
        damaged = bytearray(blob)
        damaged[position] ^= 0x10
        with pytest.raises(ValueError):
            sealer.unseal(KIND_MANIFEST, "manifests/b/0", bytes(damaged))
    with pytest.raises(ValueError, match="authentication failed"):
        sealer.unseal(KIND_MANIFEST, "manifests/b/1", blob)                      # swapped name
    with pytest.raises(ValueError, match="kind"):
        sealer.unseal(KIND_STATUS, "manifests/b/0", blob)                        # read as another kind
    relabelled = bytearray(blob)
    relabelled[4] = KIND_STATUS                                                  # kind edited in the header as well
    with pytest.raises(ValueError, match="authentication failed"):
        sealer.unseal(KIND_STATUS, "manifests/b/0", bytes(relabelled))
    flag_flipped = bytearray(blob)
    flag_flipped[5] ^= FLAG_PADDED                                              # padding switched on or off
    with pytest.raises(ValueError):
        sealer.unseal(KIND_MANIFEST, "manifests/b/0", bytes(flag_flipped))
    with pytest.raises(ValueError, match="truncated|authentication"):
        sealer.unseal(KIND_MANIFEST, "manifests/b/0", blob[:HEADER.size + SALT_SIZE])
    with pytest.raises(ValueError, match="not encrypted"):
        sealer.unseal(KIND_MANIFEST, "manifests/b/0", RepositoryKeys().seal(KIND_MANIFEST, "manifests/b/0", b"planted"))
    # In a plain repository padding does not exist: a padded flag is refused even with a recomputed checksum.
    plain = RepositoryKeys().seal(KIND_MANIFEST, "manifests/b/0", b"planted")
    header = plain[:4] + bytes([plain[4], plain[5] | FLAG_PADDED])
    body = plain[len(header):-16]                                                # between header and checksum
    forged = header + body + xxhash.xxh3_128(header + b"manifests/b/0" + body).digest()
    with pytest.raises(ValueError, match="padding flag on a plain object"):
        RepositoryKeys().unseal(KIND_MANIFEST, "manifests/b/0", forged)


# -- point 8: padding ---------------------------------------------------------------------------------

def test_padme_rounds_up_by_at_most_twelve_percent():
    assert [padme(length) for length in (0, 1, 2, 8, 9, 10, 11, 17, 100, 1000)] == [0, 1, 2, 8, 10, 10, 12, 18, 104, 1024]
    for length in list(range(2, 20000)) + random.Random(7).sample(range(20000, 1 << 30), 3000):
        padded = padme(length)
        assert length <= padded <= length * 1.12 and padme(padded) == padded     # a bucket boundary, and a fixed point


def test_padded_object_sizes_fall_into_padme_buckets(keys):
    """Property: with padme, every sealed object's size is a Padme length, whatever the body's size and compressibility."""
    sealer = padded_keys(keys)
    rng = random.Random(13)
    noise = rng.randbytes(2 * 1024 * 1024 + 100)
    lengths = list(range(0, 1500)) + rng.sample(range(1500, 2 * 1024 * 1024), 150)
    for length in lengths:
        data = noise[:length]
        for compressor in (None, new_compressor(1)):
            blob = sealer.seal(KIND_CHUNK, "chunks/cd/x", data, compressor)
            assert len(blob) == padme(len(blob)), length
            assert len(blob) <= padme(length + OVERHEAD_V3 + 8)                  # no more than Padme of the unpadded size
            assert sealer.unseal(KIND_CHUNK, "chunks/cd/x", blob) == data
            # Reading needs no setting: a repository opened without padding reads padded objects too (the flag says).
            assert keys.unseal(KIND_CHUNK, "chunks/cd/x", blob) == data
    # Bodies of any size from 960 KiB to 1 MiB (66 lengths here, 65537 possible) land in 16 KiB steps: 4 sizes.
    near_full = {len(sealer.seal(KIND_CHUNK, "chunks/cd/y", noise[:length])) for length in range(983040, 1048577, 997)}
    assert near_full == {999424, 1015808, 1032192, 1048576}
    unpadded = keys.seal(KIND_CHUNK, "chunks/cd/z", noise[:1000])
    assert len(unpadded) == 1000 + OVERHEAD_V3                                   # "none": size = body + fixed overhead


def test_padded_repository_round_trip(backend):
    repo = new_repo(backend, passphrase=PASSPHRASE, scrypt_params=FAST_KDF, padding="padme")
    data = image(5, chunks=4)
    record = write_backup(repo, data)
    options = backend_options(repo) if repo.store.kind == "s3" else None
    reopened = Repository.open(repo.location, passphrase=PASSPHRASE, s3_options=options)
    assert reopened.describe()["padding"] == "padme" and reopened.describe()["format_version"] == 5
    assert read_all(reopened, record.backup_id) == data
    second = write_backup(reopened, image(6, chunks=2), vm_id="vm-2")            # written after an open: padded too
    assert read_all(reopened, second.backup_id) == image(6, chunks=2)
    assert reopened.verify()["ok"]
    stored = [info.key for prefix in ("chunks/", "manifests/", "backups/") for info in reopened.store.list(prefix)]
    assert stored and all(len(reopened.store.get(key)) == padme(len(reopened.store.get(key))) for key in stored)
    assert new_repo(backend, passphrase=PASSPHRASE, scrypt_params=FAST_KDF).describe()["padding"] == "none"


@pytest.mark.parametrize("stored, forged", [("padme", "none"), ("none", "padme"), ("padme", "obfuscate")])
def test_a_tampered_padding_field_is_refused(backend, stored, forged):
    repo = new_repo(backend, passphrase=PASSPHRASE, scrypt_params=FAST_KDF, padding=stored)
    config = json.loads(repo.store.get("config").decode("utf-8"))
    assert config["padding"] == stored
    config["padding"] = forged
    repo.store.put("config", json.dumps(config).encode("utf-8"))
    options = backend_options(repo) if repo.store.kind == "s3" else None
    with pytest.raises(RepositoryError, match="has been changed"):
        Repository.open(repo.location, passphrase=PASSPHRASE, s3_options=options)


def test_padding_on_a_plain_repository_is_refused(tmp_path):
    location = str(tmp_path / "plain")
    with pytest.raises(RepositoryError, match="needs an encrypted repository") as caught:
        Repository.init(location, padding="padme")
    assert "repository_passphrase" in caught.value.hint and not os.path.exists(location)
    with pytest.raises(RepositoryError, match="not one of"):
        Repository.init(location, passphrase=PASSPHRASE, scrypt_params=FAST_KDF, padding="random")
    # A plain config edited to ask for padding (nobody can authenticate it) is refused as not usable.
    plain = Repository.init(location)
    config = json.loads(plain.store.get("config").decode("utf-8"))
    config["padding"] = "padme"
    plain.store.put("config", json.dumps(config).encode("utf-8"))
    with pytest.raises(RepositoryError, match="padding"):
        Repository.open(location)


# -- the module option --------------------------------------------------------------------------------

class Exit(Exception):
    pass


class Fail(Exception):
    pass


def run_module(monkeypatch, expect=Exit, **args):
    def exit_json(self, **kwargs):
        raise Exit(kwargs)

    def fail_json(self, **kwargs):
        raise Fail(kwargs)
    monkeypatch.setattr(basic.AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", fail_json)
    with patch_module_args(args):
        with pytest.raises(expect) as caught:
            hyperv_backup_repository.main()
    return caught.value.args[0]


def test_module_padding_option_round_trip(tmp_path, monkeypatch):
    location = str(tmp_path / "repo")
    failed = run_module(monkeypatch, Fail, repository=location, padding="padme", _ansible_check_mode=True)
    assert "needs an encrypted repository" in failed["msg"] and not os.path.exists(location)
    failed = run_module(monkeypatch, Fail, repository=location, padding="padme")
    assert "needs an encrypted repository" in failed["msg"]
    created = run_module(monkeypatch, repository=location, repository_passphrase="pw", padding="padme")
    assert created["created"] and created["repository"]["padding"] == "padme" and created["repository"]["format_version"] == 5
    again = run_module(monkeypatch, repository=location, repository_passphrase="pw")      # default none: used at creation only
    assert not again["changed"] and again["repository"]["padding"] == "padme"
    plain = run_module(monkeypatch, repository=str(tmp_path / "plain"))
    assert plain["repository"]["padding"] == "none"
