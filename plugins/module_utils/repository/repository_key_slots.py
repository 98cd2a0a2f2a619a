# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Key management of an encrypted repository: passphrase change, key slots, key export and import.

Only the config changes: the data key and id key stay, so no chunk, manifest or record is rewritten, and any older
copy of the config (a file backup, an earlier S3 object version, a key export) still opens with the passphrase it
was written with. Every change writes the whole config at once (local: temp file and rename; S3: one PUT), reads it
back and opens it with the passphrase that must now work; if that fails, the previous config is written back, so
the repository is never left without a working key slot.

Each function returns ``{"changed", "msg", "key_slots", "repository"}`` (no secrets) and, with ``check_mode``, says
what it would do without writing. Run one key operation at a time per repository (the last write wins).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import copy
import errno
import json
import os
import re
import uuid

from ansible_collections.hyperv.backup.plugins.module_utils.errors import RepositoryError
from ansible_collections.hyperv.backup.plugins.module_utils.repository import repository_config
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_crypto import RepositoryKeys
from ansible_collections.hyperv.backup.plugins.module_utils.repository.local_store import make_private_dirs
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_store import open_store

# Opening tries the slots in order, one scrypt derivation (0.3-0.6 s, 128 MiB) each: a few slots keep that bounded.
MAX_KEY_SLOTS = 4
PRIMARY_LABEL = "passphrase"
LABEL_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")


def _open_encrypted(location, passphrase, s3_options):
    repo = Repository.open(location, passphrase=passphrase, s3_options=s3_options)
    if not repo.encrypted:
        raise RepositoryError("Repository %s is not encrypted: it has no keys or passphrase to manage." % repo.location,
                              hint="Encryption is chosen when a repository is created; create a new one with "
                                   "repository_passphrase and take new full backups into it.", location=repo.location)
    return repo


def _wrong_passphrase(err):
    return err.extra.get("reason") == "wrong_passphrase"


def _slots(config):
    return config["encryption"]["key_slots"]


def _labels(config):
    return [slot.get("label") for slot in _slots(config)]


def _slot_opened_by(config, passphrase, skip=None):
    """Index of the first slot ``passphrase`` opens (one scrypt derivation per slot tried), or None."""
    for index, slot in enumerate(_slots(config)):
        if index != skip and RepositoryKeys.open_slot(slot, passphrase) is not None:
            return index
    return None


def _result(repo, changed, msg, **extra):
    out = {"changed": changed, "msg": msg, "key_slots": _labels(repo.config), "repository": repo.describe()}
    out.update(extra)
    return out


def _check_written(location, s3_options, passphrase, keys):
    """Read the config back from the storage and open it with ``passphrase``: the same keys, or RepositoryError."""
    reopened = Repository.open(location, passphrase=passphrase, s3_options=s3_options)
    if (reopened.keys.data_key, reopened.keys.id_key) != (keys.data_key, keys.id_key):
        raise RepositoryError("The config written to %s opens with other keys than the repository's." % location,
                              hint="Another key operation ran at the same time; run one at a time and check the key slots.")


def _replace_config(repo, config, passphrase, s3_options):
    """Write ``config`` (authenticated with the repository's keys), check it opens with ``passphrase``, else put the
    previous config back. The repository object then describes the new config."""
    previous = repo.store.get("config")
    repository_config.authenticate(config, repo.keys)
    repository_config.write_config(repo.store, config)
    try:
        _check_written(repo.location, s3_options, passphrase, repo.keys)
    except Exception:
        # Put back with retention too (Object Lock): every version of the config is locked (issue 13, point 3).
        repository_config.write_config_bytes(repo.store, previous, repo.config)
        raise
    repo.config = config


def change_passphrase(location, passphrase, new_passphrase, s3_options=None, scrypt_params=None, check_mode=False):
    """Rewrap the keys of the slot ``passphrase`` opens under ``new_passphrase`` (new salt, current scrypt defaults).

    Idempotent: when ``passphrase`` opens no slot but ``new_passphrase`` does, the change was made already (changed
    False); the same passphrase twice changes nothing. A new passphrase that opens another slot is refused."""
    repository_config.check_passphrase(new_passphrase, location, "new_repository_passphrase")
    if new_passphrase is None:
        raise RepositoryError("No new passphrase was given for repository %s." % location, hint="Set new_repository_passphrase.")
    try:
        repo = _open_encrypted(location, passphrase, s3_options)
    except RepositoryError as err:
        if not _wrong_passphrase(err):
            raise
        try:
            repo = _open_encrypted(location, new_passphrase, s3_options)
        except RepositoryError:
            raise err
        return _result(repo, False, "The passphrase of key slot %r of %s was already changed: the new passphrase opens it and "
                       "the current one opens no slot." % (repo.keys.slot_label, repo.location), key_slot=repo.keys.slot_label)
    index, label = repo.keys.slot_index, repo.keys.slot_label
    if new_passphrase == passphrase:
        return _result(repo, False, "The new passphrase is the current one of key slot %r; nothing to change." % label, key_slot=label)
    other = _slot_opened_by(repo.config, new_passphrase, skip=index)
    if other is not None:
        raise RepositoryError("The new passphrase already opens key slot %r of %s." % (_slots(repo.config)[other].get("label"), repo.location),
                              hint="Choose a passphrase no other slot uses, or remove that slot first (state: key_slot_removed).")
    if check_mode:
        return _result(repo, True, "Would change the passphrase of key slot %r of %s." % (label, repo.location), key_slot=label)
    config = copy.deepcopy(repo.config)
    _slots(config)[index] = repo.keys.new_slot(new_passphrase, label, scrypt_params)
    _replace_config(repo, config, new_passphrase, s3_options)
    return _result(repo, True, "Changed the passphrase of key slot %r of %s; no data was rewritten. Copies of the old config "
                   "(file backups, earlier S3 object versions, key exports) still open with the old passphrase." % (label, repo.location),
                   key_slot=label)


def add_key_slot(location, passphrase, new_passphrase, label="recovery", s3_options=None, scrypt_params=None, check_mode=False):
    """Add a slot that opens the repository with ``new_passphrase`` (e.g. a recovery passphrase kept offline)."""
    repository_config.check_passphrase(new_passphrase, location, "new_repository_passphrase")
    if new_passphrase is None:
        raise RepositoryError("No passphrase for the new key slot of %s was given." % location, hint="Set new_repository_passphrase.")
    _check_label(label)
    repo = _open_encrypted(location, passphrase, s3_options)
    labels = _labels(repo.config)
    if label in labels:
        if RepositoryKeys.open_slot(_slots(repo.config)[labels.index(label)], new_passphrase) is not None:
            return _result(repo, False, "Key slot %r of %s exists with this passphrase." % (label, repo.location), key_slot=label)
        raise RepositoryError("Repository %s already has a key slot labelled %r, with another passphrase." % (repo.location, label),
                              hint="Choose another key_slot_label, change that slot's passphrase (state: passphrase_changed with "
                                   "its passphrase), or remove it first (state: key_slot_removed).")
    other = _slot_opened_by(repo.config, new_passphrase)
    if other is not None:
        raise RepositoryError("The passphrase for the new slot already opens key slot %r of %s." % (labels[other], repo.location),
                              hint="A second slot is for a different passphrase (for example a recovery passphrase kept offline).")
    if len(labels) >= MAX_KEY_SLOTS:
        raise RepositoryError("Repository %s has %d key slots, the most it may have." % (repo.location, len(labels)),
                              hint="Remove a slot first (state: key_slot_removed); each slot costs one scrypt derivation when "
                                   "the repository is opened.")
    if check_mode:
        return _result(repo, True, "Would add key slot %r to %s." % (label, repo.location), key_slot=label)
    config = copy.deepcopy(repo.config)
    _slots(config).append(repo.keys.new_slot(new_passphrase, label, scrypt_params))
    _replace_config(repo, config, new_passphrase, s3_options)
    return _result(repo, True, "Added key slot %r to %s." % (label, repo.location), key_slot=label)


def remove_key_slot(location, passphrase, label, s3_options=None, check_mode=False):
    """Remove the slot ``label``; ``passphrase`` must open another slot, which therefore keeps working."""
    _check_label(label)
    repo = _open_encrypted(location, passphrase, s3_options)
    labels = _labels(repo.config)
    if label not in labels:
        return _result(repo, False, "Repository %s has no key slot %r." % (repo.location, label), key_slot=label)
    if labels.index(label) == repo.keys.slot_index:
        raise RepositoryError("The passphrase given opens the slot %r that is to be removed from %s." % (label, repo.location),
                              hint="Give the passphrase of a slot that stays (repository_passphrase), so the repository keeps a "
                                   "slot that is known to work.")
    if check_mode:
        return _result(repo, True, "Would remove key slot %r from %s." % (label, repo.location), key_slot=label)
    config = copy.deepcopy(repo.config)
    del _slots(config)[labels.index(label)]
    _replace_config(repo, config, passphrase, s3_options)
    return _result(repo, True, "Removed key slot %r from %s. Copies of the old config still open with its passphrase."
                   % (label, repo.location), key_slot=label)


def _check_label(label):
    if not isinstance(label, str) or not LABEL_PATTERN.match(label):
        raise RepositoryError("Key slot label %r is not allowed." % (label,),
                              hint="Use 1 to 32 letters, digits, '.', '_' or '-', starting with a letter or digit.")


# -- export and import --------------------------------------------------------------------------------

def export_keys(location, passphrase, path, s3_options=None, check_mode=False):
    """Write the repository's authenticated config (key slots still passphrase-protected) to ``path``, mode 0600.

    Unchanged (changed False) when ``path`` already holds an export of the same config. A file there that is not a
    key export is never overwritten."""
    repo = _open_encrypted(location, passphrase, s3_options)
    path = os.path.abspath(os.path.expanduser(path))
    existing = _read_existing_export(path)
    if existing is not None and existing == repo.config:
        return _result(repo, False, "%s already holds the keys of %s." % (path, repo.location), key_file=path)
    if check_mode:
        return _result(repo, True, "Would write the keys of %s to %s." % (repo.location, path), key_file=path)
    document = repository_config.key_export(repo.config, repo.location)
    _write_private_file(path, json.dumps(document, indent=2, sort_keys=True).encode("utf-8"))
    return _result(repo, True, "Wrote the keys of %s to %s (mode 0600). They still need a passphrase of the repository; keep the "
                   "file apart from the repository." % (repo.location, path), key_file=path)


def _read_existing_export(path):
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except (IOError, OSError) as err:
        if err.errno == errno.ENOENT:
            return None
        raise RepositoryError("Cannot read %s: %s." % (path, err.strerror or err), hint="Check the path (key_file).", path=path)
    try:
        return repository_config.parse_key_export(raw, path)
    except RepositoryError:
        raise RepositoryError("%s exists and is not a key export of a hyperv.backup repository; it was not overwritten." % path,
                              hint="Choose another key_file, or remove that file.", path=path)


def _write_private_file(path, data):
    """Write ``data`` to ``path`` atomically, owner-only (0600, directories made 0700)."""
    directory = os.path.dirname(path)
    try:
        if not os.path.isdir(directory):
            make_private_dirs(directory)
        tmp = os.path.join(directory, ".%s.tmp-%s" % (os.path.basename(path), uuid.uuid4().hex))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.rename(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as err:
        raise RepositoryError("Cannot write the key file %s: %s." % (path, err.strerror or err),
                              hint="Check that the directory exists or can be created, and the free space.", path=path)


def import_keys(location, passphrase, path, s3_options=None, check_mode=False):
    """Write the config from a key export back to the repository when the stored one is missing, damaged or changed.

    An intact stored config (it authenticates with the exported keys; its slots may differ after a passphrase
    change) is left as it is (changed False): an old export never undoes a passphrase change."""
    store = open_store(location, s3_options)
    config, keys = repository_config.config_from_key_file(store, path, passphrase)
    try:
        current = repository_config.parse(store.get("config"), store.location)
    except (KeyError, FileNotFoundError, NotADirectoryError, RepositoryError):
        current = None
    if current is not None and current.get("encryption") is not None and _authentic(current, keys, store.location):
        repo = Repository(store, current, keys)
        return _result(repo, False, "The config of %s is intact (it authenticates with the exported keys); nothing was imported. "
                       "It may open with another passphrase than the key file's." % store.location, key_file=path)
    repo = Repository(store, config, keys)
    if check_mode:
        return _result(repo, True, "Would write the config of %s back from %s." % (store.location, path), key_file=path)
    previous = store.get("config") if store.stat("config") is not None else None
    repository_config.write_config(store, config)
    try:
        _check_written(store.location, s3_options, passphrase, keys)
    except Exception:
        if previous is None:
            store.delete("config")
        else:
            repository_config.write_config_bytes(store, previous, config)
        store.flush()
        raise
    return _result(repo, True, "Wrote the config of %s back from %s." % (store.location, path), key_file=path)


def _authentic(config, keys, location):
    try:
        repository_config.check_tag(config, keys, location)
        repository_config.check_fields(config, location)
    except RepositoryError:
        return False
    return True
