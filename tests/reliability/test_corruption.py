"""Corruption of the repository: bit flips in chunks, manifests and records, truncated manifests, missing chunks.

For every injected fault: verify names exactly the backups that reference the damaged object, a
restore (read) of an affected backup refuses with RepositoryError instead of returning wrong bytes,
unaffected backups still read back exactly, and after the damage is undone everything verifies again.
Plain and encrypted repositories are both covered (they detect damage differently: content hash /
zstd versus AES-GCM authentication).
"""
import os
import random

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.errors import RepositoryError
from ansible_collections.hyperv.backup.plugins.module_utils.repository import chunk_index
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import KIND_BACKUP, KIND_MANIFEST, Repository

from test_repository import CHUNK, FAST_KDF, image, read_all, write_backup

pytestmark = [pytest.mark.reliability,
              # flips bits in chunks, manifests and records on purpose: the guard must not read the damage as a bug
              pytest.mark.frozen_guard_off("damages repositories on purpose (bit flips, truncations, missing objects)")]

FLIPS_PER_KIND = int(os.environ.get("RELIABILITY_CORRUPTION_FLIPS", "12"))


def populate(kind, directory):
    """A repository with three backups of two VMs that share chunks (dedup), and the data of each."""
    location = str(directory / "repo")
    passphrase = "corruption-test-passphrase" if kind == "encrypted" else None
    repo = Repository.init(location, passphrase=passphrase, chunk_size=CHUNK, scrypt_params=FAST_KDF if passphrase else None)
    base = image(1, chunks=8)
    changed = bytearray(base)
    changed[3 * CHUNK:4 * CHUNK] = os.urandom(CHUNK)          # an incremental-like second backup: one chunk differs
    other = image(2, chunks=5)
    backups = [(write_backup(repo, base, vm_id="vm-a", vm_name="alpha"), base),
               (write_backup(repo, bytes(changed), vm_id="vm-a", vm_name="alpha"), bytes(changed)),
               (write_backup(repo, other, vm_id="vm-b", vm_name="bravo"), other)]
    return kind, repo, backups


@pytest.fixture(params=["plain", "encrypted"], scope="module")
def populated(request, tmp_path_factory):
    return populate(request.param, tmp_path_factory.mktemp("corrupt"))


def _referencing(repo, backups, chunk_id):
    out = set()
    for backup, _data in backups:
        manifest = repo.load_disk_manifest(backup.backup_id, "disk0")
        pages, chunks = set(), set()          # the damaged object may be one of the index pages being walked
        chunk_index.walk(manifest.index, pages, lambda _index, cid: chunks.add(cid), lambda _err, _first: None)
        if chunk_id in chunks | pages:
            out.add(backup.backup_id)
    return out


def _judge(repo, backups, affected, fault, fault_ledger, kind_label):
    """verify names exactly ``affected``; their restore refuses; the others read back; returns bytes lost."""
    report = repo.verify(record_status=False)
    assert set(report["damaged_backups"]) == affected, (fault, report["damaged_backups"], affected)
    lost = 0
    for backup, data in backups:
        if backup.backup_id in affected:
            with pytest.raises(RepositoryError) as refused:
                read_all(repo, backup.backup_id)
            assert backup.backup_id in str(refused.value)
        else:
            got = read_all(repo, backup.backup_id)
            lost += sum(1 for a, b in zip(got, data) if a != b)
    fault_ledger.record(fault, "verify named the %d affected backup(s); restore refused; others intact" % len(affected)
                        if affected else "no backup affected", data_lost=lost,
                        note=kind_label)
    return lost


def _flip_file(path, rng):
    with open(path, "r+b") as handle:
        original = handle.read()
        buf = bytearray(original)
        position = rng.randrange(len(buf))
        buf[position] ^= 1 << rng.randrange(8)
        handle.seek(0)
        handle.write(buf)
    return original


def _restore_file(path, original):
    with open(path, "wb") as handle:
        handle.write(original)


def _object_path(repo, key):
    return repo.store._path(key)   # pylint: disable=protected-access  # the test damages the files themselves


def test_bit_flips_in_chunks(populated, fault_ledger):
    kind, repo, backups = populated
    rng = random.Random(11)
    chunk_keys = sorted(info.key for info in repo.store.list("chunks/"))
    for key in rng.sample(chunk_keys, min(FLIPS_PER_KIND, len(chunk_keys))):
        path = _object_path(repo, key)
        original = _flip_file(path, rng)
        try:
            _judge(repo, backups, _referencing(repo, backups, key.rsplit("/", 1)[1]), "bit flip in a chunk", fault_ledger, kind)
        finally:
            _restore_file(path, original)
    assert repo.verify(record_status=False)["ok"]


def test_missing_chunks(populated, fault_ledger):
    kind, repo, backups = populated
    rng = random.Random(12)
    chunk_keys = sorted(info.key for info in repo.store.list("chunks/"))
    for key in rng.sample(chunk_keys, min(FLIPS_PER_KIND, len(chunk_keys))):
        path = _object_path(repo, key)
        with open(path, "rb") as handle:
            original = handle.read()
        os.unlink(path)
        try:
            _judge(repo, backups, _referencing(repo, backups, key.rsplit("/", 1)[1]), "missing chunk", fault_ledger, kind)
        finally:
            _restore_file(path, original)
    assert repo.verify(record_status=False)["ok"]


def test_truncated_manifests(populated, fault_ledger):
    kind, repo, backups = populated
    rng = random.Random(13)
    for backup, _data in backups:
        key = repo.get_backup(backup.backup_id).disk("disk0")["manifest"]
        path = _object_path(repo, key)
        with open(path, "rb") as handle:
            original = handle.read()
        for length in sorted(set([0, 1, 5, len(original) - 1] + [rng.randrange(len(original)) for _n in range(4)])):
            with open(path, "wb") as handle:
                handle.write(original[:length])
            try:
                _judge(repo, backups, {backup.backup_id}, "truncated manifest", fault_ledger, kind)
            finally:
                _restore_file(path, original)
    assert repo.verify(record_status=False)["ok"]


def _flip_metadata(repo, backups, rng, fault_ledger, kind, object_kind, fault):
    """Flip one bit of a manifest or record; if its content changed, verify must name the backup."""
    undetected = []
    for _round in range(FLIPS_PER_KIND):
        backup, data = rng.choice(backups)
        if object_kind == KIND_MANIFEST:
            key = repo.get_backup(backup.backup_id).disk("disk0")["manifest"]
        else:
            key = "backups/%s" % backup.backup_id
        path = _object_path(repo, key)
        original = _flip_file(path, rng)
        try:
            with open(path, "rb") as handle:
                damaged = handle.read()
            try:
                changed = repo.keys.unseal(object_kind, key, damaged) != repo.keys.unseal(object_kind, key, original)
            except ValueError:
                changed = True
            if not changed:
                fault_ledger.record(fault, "content unchanged (a bit the format ignores)", note=kind)
                continue
            report = repo.verify(record_status=False)
            if backup.backup_id not in report["damaged_backups"]:
                undetected.append(key)
                try:
                    got = read_all(repo, backup.backup_id)
                    wrong = sum(1 for a, b in zip(got, data) if a != b) + abs(len(got) - len(data))
                except RepositoryError:
                    wrong = 0
                fault_ledger.record(fault, "NOT detected by verify (metadata changed silently)", data_lost=wrong, note=kind)
                continue
            with pytest.raises(RepositoryError):
                read_all(repo, backup.backup_id)
            fault_ledger.record(fault, "verify named the backup; restore refused", note=kind)
        finally:
            _restore_file(path, original)
    return undetected


def test_bit_flips_in_manifests_and_records_encrypted(tmp_path, fault_ledger):
    kind, repo, backups = populate("encrypted", tmp_path)
    rng = random.Random(14)
    undetected = _flip_metadata(repo, backups, rng, fault_ledger, kind, KIND_MANIFEST, "bit flip in a manifest (%s repository)" % kind)
    undetected += _flip_metadata(repo, backups, rng, fault_ledger, kind, KIND_BACKUP, "bit flip in a backup record (%s repository)" % kind)
    assert not undetected
    assert repo.verify(record_status=False)["ok"]


def test_bit_flips_in_manifests_and_records_plain(tmp_path, fault_ledger):
    kind, repo, backups = populate("plain", tmp_path)
    rng = random.Random(15)
    undetected = _flip_metadata(repo, backups, rng, fault_ledger, kind, KIND_MANIFEST, "bit flip in a manifest (%s repository)" % kind)
    undetected += _flip_metadata(repo, backups, rng, fault_ledger, kind, KIND_BACKUP, "bit flip in a backup record (%s repository)" % kind)
    assert not undetected, "undetected damage in %s" % sorted(set(undetected))
