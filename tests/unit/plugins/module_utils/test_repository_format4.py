"""Format compatibility (issue 14, envelope checksum): release 0.1.0 wrote format version 4 (BLAKE3 envelope
checksum, magic HVB3); this code creates format 5 (XXH3-128 checksum, magic HVB5). A format-4 repository is still read,
verified and written as format 4, so 0.1.0 can go on reading it; a new one is format 5.

``fixtures/repository_format4.json`` holds two repositories (plain and encrypted, one VM, a full and an incremental of
a 4-chunk disk) written by the code of commit 4dd5012, which writes what 0.1.0 wrote, with their backup ids and the
SHA-256 of each backup's disk; ``fixtures/make_repository_format4.py`` made it.
"""

import base64
import hashlib
import json
import os

import blake3
import pytest
import xxhash

from ansible_collections.hyperv.backup.plugins.module_utils.errors import RepositoryError
from ansible_collections.hyperv.backup.plugins.module_utils.repository import repository_copy
from ansible_collections.hyperv.backup.plugins.module_utils.repository.backup_record import FORMAT_VERSION
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository

from test_repository import read_all

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "repository_format4.json")
CHUNK = 64 * 1024
DISK = "scsi0-0"


@pytest.fixture(autouse=True)
def own_proxy_memory(tmp_path, monkeypatch):
    """Each test its own proxy memory (repository_memory.py): the fixture copies share one repository id, and a proxy
    that saw a backup in one copy would rightly report it missing from the next."""
    monkeypatch.setenv("HYPERV_BACKUP_STATE_DIR", str(tmp_path / "proxy-state"))


def fixture():
    with open(FIXTURE) as handle:
        return json.load(handle)


def facts():
    return fixture()["backups"]


def fixture_copy(tmp_path, name):
    """One fixture repository unpacked into ``tmp_path`` (the tests write to it)."""
    target = tmp_path / name
    for relative, encoded in fixture()["files"].items():
        if relative.split(os.sep, 1)[0] == name:
            path = tmp_path / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(base64.b64decode(encoded))
    return str(target)


def open_fixture(tmp_path, name):
    return Repository.open(fixture_copy(tmp_path, name), passphrase=facts()[name]["passphrase"])


def objects(repo, prefix):
    return [(info.key, repo.store.get(info.key)) for info in repo.store.list(prefix)]


def blake3_checksum_holds(key, blob):
    """What release 0.1.0 checks on a plain object: BLAKE3 of header, key and body in the last 32 bytes."""
    return blake3.blake3(blob[:6] + key.encode("utf-8") + blob[6:-32]).digest() == blob[-32:]


def new_backup(repo, parent_id, data):
    with repo.begin_backup(vm_id="vm-1", vm_name="web01", host="hv1", method="rct", backup_type="incremental",
                           parent_backup_id=parent_id, consistency="application", metadata={}) as session:
        disk = session.add_disk(disk_key=DISK, virtual_size=len(data), source_path="C:\\VMs\\web01.vhdx", rct_id="rct-1",
                                base=repo.load_disk_manifest(parent_id, DISK))
        disk.put_chunk(1, data[CHUNK:2 * CHUNK])
        return session.commit()


@pytest.mark.parametrize("name", ["plain", "encrypted"])
def test_format4_repository_is_read_and_verified(tmp_path, name):
    repo = open_fixture(tmp_path, name)
    assert repo.config["version"] == 4 and repo.describe()["format_version"] == 4
    for backup in facts()[name]["backups"]:
        assert hashlib.sha256(read_all(repo, backup["backup_id"], DISK)).hexdigest() == backup["sha256"]
    report = repo.verify()
    assert report["ok"], report


@pytest.mark.parametrize("name", ["plain", "encrypted"])
def test_format4_repository_is_written_as_format4(tmp_path, name):
    """A backup into a 0.1.0 repository leaves it readable by 0.1.0: envelope HVB3, BLAKE3 checksums, format 4 inside."""
    repo = open_fixture(tmp_path, name)
    before = set(key for key, _blob in objects(repo, ""))
    full = facts()[name]["backups"][0]
    data = bytearray(read_all(repo, full["backup_id"], DISK))
    data[CHUNK:CHUNK + 16] = b"new data, format"
    record = new_backup(repo, full["backup_id"], bytes(data))
    written = [(key, blob) for key, blob in objects(repo, "") if key not in before and blob[:4] in (b"HVB3", b"HVB5")]
    assert len(written) >= 3                                  # a chunk, an index page, the manifest, the record
    assert all(blob[:4] == b"HVB3" for _key, blob in written)
    if name == "plain":
        assert all(blake3_checksum_holds(key, blob) for key, blob in written)
    assert record.values["format"] == 4
    assert repo.load_disk_manifest(record.backup_id, DISK).header["format"] == 4
    reopened = Repository.open(repo.location, passphrase=facts()[name]["passphrase"])
    assert reopened.config["version"] == 4 and read_all(reopened, record.backup_id, DISK) == bytes(data)
    assert reopened.verify()["ok"]


def test_new_repository_is_format5_with_xxh3_checksums(tmp_path):
    repo = Repository.init(str(tmp_path / "new"), chunk_size=CHUNK)
    assert FORMAT_VERSION == 5 and repo.config["version"] == 5
    with repo.begin_backup(vm_id="vm-1", vm_name="web01", host="hv1", method="rct", backup_type="full", consistency="application",
                           metadata={}) as session:
        disk = session.add_disk(disk_key=DISK, virtual_size=2 * CHUNK, source_path="C:\\VMs\\web01.vhdx", rct_id="rct-1")
        disk.put_chunk(0, os.urandom(CHUNK))
        disk.put_chunk(1, b"log line\n" * (CHUNK // 9) + bytes(CHUNK % 9))
        record = session.commit()
    sealed = [(key, blob) for key, blob in objects(repo, "") if blob[:4] in (b"HVB3", b"HVB5")]
    assert sealed and all(blob[:4] == b"HVB5" for _key, blob in sealed)
    for key, blob in sealed:
        assert xxhash.xxh3_128(blob[:6] + key.encode("utf-8") + blob[6:-16]).digest() == blob[-16:]
    assert record.values["format"] == 5

    # one bit flipped in a stored chunk is caught by the checksum before anything is decompressed or returned
    key, blob = next((key, blob) for key, blob in sealed if key.startswith("chunks/"))
    damaged = bytearray(blob)
    damaged[len(damaged) // 2] ^= 0x10
    repo.store.put(key, bytes(damaged))
    with pytest.raises(ValueError, match="checksum mismatch"):
        repo.keys.unseal(1, key, bytes(damaged))
    report = repo.verify()
    assert not report["ok"]


def test_object_of_the_other_format_is_refused(tmp_path):
    """A format-4 object put into a format-5 repository (or the reverse) was never written by us: refused, never read."""
    old = open_fixture(tmp_path, "plain")
    new = Repository.init(str(tmp_path / "new"), chunk_size=CHUNK)
    key, blob = next((key, blob) for key, blob in objects(old, "chunks/"))
    assert blob[:4] == b"HVB3"
    with pytest.raises(ValueError, match="envelope of another repository format"):
        new.keys.unseal(1, key, blob)
    resealed = new.keys.seal(1, key, old.keys.unseal(1, key, blob))
    with pytest.raises(ValueError, match="envelope of another repository format"):
        old.keys.unseal(1, key, resealed)


@pytest.mark.parametrize("name", ["plain", "encrypted"])
def test_copy_from_format4_to_format5_reseals(tmp_path, name):
    """A same-keys copy writes objects unchanged unless the envelopes differ: from a 0.1.0 repository into a new one,
    every copied object gets the target's envelope, and the copy verifies."""
    source = open_fixture(tmp_path, name)
    passphrase = facts()[name]["passphrase"]
    target = repository_copy.init_with_keys_of(source, str(tmp_path / "copy"), passphrase=passphrase,
                                               scrypt_params={"n": 2 ** 14, "r": 8, "p": 1} if passphrase else None)
    assert target.config["version"] == 5
    report = repository_copy.copy_backups(source, target)
    assert report["same_keys"] and len(report["copied"]) == 2
    sealed = [blob for _key, blob in objects(target, "") if blob[:4] in (b"HVB3", b"HVB5")]
    assert sealed and all(blob[:4] == b"HVB5" for blob in sealed)
    for backup in facts()[name]["backups"]:
        assert hashlib.sha256(read_all(target, backup["backup_id"], DISK)).hexdigest() == backup["sha256"]
    assert target.verify()["ok"]


def test_pre_release_format_is_refused_with_what_to_do(tmp_path):
    location = fixture_copy(tmp_path, "plain")
    with open(os.path.join(location, "config")) as handle:
        config = json.load(handle)
    config["version"] = 3
    with open(os.path.join(location, "config"), "w") as handle:
        json.dump(config, handle)
    with pytest.raises(RepositoryError, match="format version 3, written by a pre-release.*reads format versions 4 to 5"):
        Repository.open(location)
