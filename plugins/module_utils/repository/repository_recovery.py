# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Recovery of a deleted or damaged ``config`` from an earlier S3 object version (issue 13, point 3).

On a versioned bucket (every bucket with Object Lock is versioned) a plain DELETE of ``config`` only adds a delete
marker, and an overwrite only adds a version: the earlier versions stay, and with Object Lock they cannot be removed
while locked. ``recover_config`` finds the newest earlier version that authenticates with the passphrase given (or
with the keys of a key export) and writes it back as the current version, locked again.

A passphrase change rewrites the config with the same keys under a new slot, so an older version still opens with the
OLD passphrase: recovering with it restores that older version (run the passphrase change again afterwards). A current
config that authenticates with the keys found is left as it is, whichever passphrase it opens with: an old version
never undoes a passphrase change of an intact config (as ``import_keys``).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.hyperv.backup.plugins.module_utils.errors import RepositoryError
from ansible_collections.hyperv.backup.plugins.module_utils.repository import repository_config
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_store import open_store

MAX_VERSIONS_TRIED = 50     # each try costs one scrypt derivation per key slot (0.3-0.6 s): bounded


def _candidate(store, version, passphrase, key_file_keys):
    """(config, keys, raw bytes) of one stored version if it opens (passphrase) or authenticates (key file keys); else None."""
    try:
        raw = store.get_version("config", version["version_id"])
        config = repository_config.parse(raw, store.location, source="config version %s" % version["version_id"])
        if key_file_keys is not None:
            repository_config.check_tag(config, key_file_keys, store.location)
            repository_config.check_fields(config, store.location)
            return config, key_file_keys, raw
        return config, repository_config.unlock(config, passphrase, store.location), raw
    except (KeyError, RepositoryError):
        return None


def _current(store):
    """The current config (parsed) or None when it is missing, a delete marker or unreadable."""
    try:
        return repository_config.parse(store.get("config"), store.location)
    except (KeyError, FileNotFoundError, NotADirectoryError, RepositoryError):
        return None


def _intact(config, keys, location):
    if config is None or (config.get("encryption") is None) != (not keys.encrypted):
        return False
    try:
        if keys.encrypted:
            repository_config.check_tag(config, keys, location)
        repository_config.check_fields(config, location)
    except RepositoryError:
        return False
    return True


def recover_config(location, passphrase=None, key_file=None, s3_options=None, check_mode=False):
    """Write back the newest earlier version of ``config`` that opens with ``passphrase`` (or authenticates with the keys
    of ``key_file``). Returns ``{"changed", "msg", "recovered_version", "repository"}``; ``changed`` only when written.

    RepositoryError on a local directory (it keeps no versions) and when no version opens."""
    store = open_store(location, s3_options)
    key_file_keys = None
    if key_file is not None:
        exported = repository_config.read_key_file(key_file)
        key_file_keys = repository_config.unlock(exported, passphrase, key_file)
    versions = [version for version in store.list_versions("config") if not version["delete_marker"]]
    if not versions:
        raise RepositoryError("Repository %s has no stored version of its config to recover." % store.location,
                              hint="Write the config back from a key export (state: key_imported with key_file); without the "
                                   "config or a key export the backups cannot be read.", location=store.location)
    found = None
    for version in versions[:MAX_VERSIONS_TRIED]:
        found = _candidate(store, version, passphrase, key_file_keys)
        if found is not None:
            break
    if found is None:
        raise RepositoryError("None of the %d newest stored versions of the config of %s opens with the %s given."
                              % (min(len(versions), MAX_VERSIONS_TRIED), store.location, "key file" if key_file else "passphrase"),
                              hint="Give a passphrase the repository had (after a passphrase change, older versions open with the "
                                   "older passphrase), or its key export (key_file).", location=store.location)
    config, keys, raw = found
    current = _current(store)
    repo = Repository(store, current if _intact(current, keys, store.location) else config, keys)
    result = {"recovered_version": version["version_id"], "recovered_version_time": version["mtime"],
              "key_slots": [slot.get("label") for slot in (repo.config.get("encryption") or {}).get("key_slots", [])]}
    if repo.config is current:
        result.update(changed=False, repository=repo.describe(), recovered_version=None, recovered_version_time=None,
                      msg="The config of %s is intact (it authenticates with the keys of the version that opens); nothing was "
                          "written." % store.location)
        return result
    if check_mode:
        result.update(changed=True, repository=repo.describe(),
                      msg="Would write config version %s of %s back as the current config." % (version["version_id"], store.location))
        return result
    # The version's own bytes, locked again from now (its old retention may be close to its end).
    repository_config.write_config_bytes(store, raw, config)
    if _current(store) != config:
        raise RepositoryError("The config written back to %s does not read back as written." % store.location,
                              hint="Another process wrote the config at the same time; run config_recovered again.")
    result.update(changed=True, repository=repo.describe(),
                  msg="Wrote config version %s of %s back as the current config. Find out who deleted or changed it (the S3 "
                      "credentials of the proxy were used, or someone else's)." % (version["version_id"], store.location))
    return result
