# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The repository config: creating it, checking it, authenticating it, and reading it from storage or a key export.

``config`` is JSON (docs/repository.md). In an encrypted repository every field except the key slots' material is
bound by ``authentication.tag``: keyed BLAKE3 (key derived from the master keys) of the canonical JSON of the config
without ``encryption.key_slots`` and without ``authentication``. Someone who can write the storage but has no
passphrase therefore cannot switch encryption, Object Lock or padding off, nor change chunk size, compression, chunk ids,
the repository id or the format: ``open`` refuses. Key slots stay outside the tag so that adding a slot or changing a
passphrase rewrites nothing else; a slot that wraps other keys fails the tag all the same.

A plain repository has no secret, so its config cannot be authenticated; it is checked for sense only. Whoever can
write such a repository can change its config as they can change its data (docs/security.md).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import copy
import hmac
import json
import uuid

from ansible_collections.hyperv.backup.plugins.module_utils.errors import RepositoryError
from ansible_collections.hyperv.backup.plugins.module_utils.repository.backup_record import FORMAT_VERSION, OLDEST_READABLE_FORMAT, iso, utc_now
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_crypto import (
    CIPHER, KIND_BACKUP, PADDING_MODES, RepositoryKeys, require_libraries,
)

FORMAT_NAME = "hyperv.backup repository"
KEY_EXPORT_FORMAT = "hyperv.backup key export"
KEY_EXPORT_VERSION = 1
TAG_ALGORITHM = "blake3-keyed"
PASSPHRASE_ENVIRONMENT = "HYPERV_BACKUP_REPOSITORY_PASSPHRASE"
LOCK_MODES = ("COMPLIANCE", "GOVERNANCE")
MiB = 1024 * 1024
DAY_SECONDS = 86400
# The config is locked for 1.5 x object_lock days and renewed when less than object_lock days are left, so it is always
# locked longer than the newest data it unlocks (locked for object_lock days from its write), with one retention
# update per object_lock_days / 2 at most.
CONFIG_LOCK_FACTOR = 1.5
RECOVERY_HINT = ("If the repository had a config that was deleted or overwritten, write it back from a key export "
                 "(hyperv.backup.hyperv_backup_repository with state: key_imported and key_file).")


def check_passphrase(passphrase, location, option="repository_passphrase"):
    """Refuse an empty passphrase: it is a mistake (an empty survey field, an exported empty variable), never a choice.

    ``None`` means "no passphrase" and stays allowed (a plain repository, on purpose)."""
    if passphrase is not None and not isinstance(passphrase, str):
        raise RepositoryError("The %s for %s is not a string." % (option, location), hint="Give the passphrase as text.")
    if passphrase == "":
        raise RepositoryError("An empty passphrase was given for repository %s (%s)." % (location, option),
                              hint="For an unencrypted repository leave %s unset (in a playbook: "
                                   "\"{{ my_passphrase | default(omit, true) }}\"; an exported but empty %s counts as "
                                   "empty too); otherwise give the real passphrase." % (option, PASSPHRASE_ENVIRONMENT),
                              location=location)


def check_padding(padding, encrypted, location):
    """Refuse an unknown padding mode, and padding on a plain repository (its sizes say less than its plaintext does)."""
    if padding not in PADDING_MODES:
        raise RepositoryError("padding %r is not one of %s." % (padding, ", ".join(PADDING_MODES)),
                              hint="Use padding: none (the default) or padme.", location=location)
    if padding != "none" and not encrypted:
        raise RepositoryError("padding %s needs an encrypted repository; %s would be created without a passphrase." % (padding, location),
                              hint="Give repository_passphrase to create an encrypted repository, or drop padding: object sizes "
                                   "of a plain repository hide nothing (its contents are readable).", location=location)


def new_config(store, passphrase, chunk_size, compression_level, object_lock_days, scrypt_params=None, padding="none", keys_from=None):
    """(config, keys) of a new repository; the config is authenticated when ``passphrase`` is given.

    ``keys_from``: the RepositoryKeys of another repository, wrapped here under ``passphrase``, so that both give equal
    chunk ids and a copy between them compares ids only (repository_copy.py checks the pairing)."""
    check_passphrase(passphrase, store.location)
    check_padding(padding, passphrase is not None, store.location)
    if keys_from is not None and keys_from.encrypted:
        keys = RepositoryKeys(keys_from.data_key, keys_from.id_key)
        encryption = {"cipher": CIPHER, "key_slots": [keys.new_slot(passphrase, "passphrase", scrypt_params)]}
    elif passphrase is not None:
        keys, encryption = RepositoryKeys.create(passphrase, scrypt_params)
    else:
        keys, encryption = RepositoryKeys(), None
    keys.padding = padding
    keys.format_version = FORMAT_VERSION
    config = {
        "format": FORMAT_NAME, "version": FORMAT_VERSION, "repository_id": str(uuid.uuid4()), "created": iso(utc_now()),
        "chunk_size": int(chunk_size), "compression": {"algorithm": "zstd", "level": int(compression_level)},
        "chunk_id": "blake3-keyed" if encryption else "blake3", "encryption": encryption,
        "object_lock": {"days": int(object_lock_days), "mode": store.lock_mode} if object_lock_days else None,
        # Bound by the tag like every field (canonical), so nobody without the keys can switch it off or on.
        "padding": padding,
    }
    authenticate(config, keys)
    return config, keys


def canonical(config):
    """The bytes the tag covers: every field except the key slots and the tag itself, in one fixed serialization."""
    bound = copy.deepcopy(config)
    bound.pop("authentication", None)
    if isinstance(bound.get("encryption"), dict):
        bound["encryption"].pop("key_slots", None)
    return json.dumps(bound, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def authenticate(config, keys):
    """Set (or refresh) the config's tag; a plain repository gets none (``authentication: null``)."""
    config["authentication"] = {"algorithm": TAG_ALGORITHM, "tag": keys.config_tag(canonical(config))} if keys.encrypted else None
    return config


def encode(config):
    return json.dumps(config, indent=2, sort_keys=True).encode("utf-8")


def write_config(store, config, retain_until=None):
    """Store the config (local: temp file and rename; S3: one PUT), durably. Callers authenticate it first.

    With Object Lock the config is locked like the data it unlocks (issue 13, point 3), in the repository's mode,
    until ``retain_until`` (default: storage now + 1.5 x object_lock days); every rewrite (key states) is locked again."""
    write_config_bytes(store, encode(config), config, retain_until)


def write_config_bytes(store, raw, config, retain_until=None):
    """Store ``raw`` (the encoding of ``config``, or earlier bytes being put back) as the config, with retention."""
    lock = config.get("object_lock") if isinstance(config, dict) else None
    if store.kind == "s3" and isinstance(lock, dict) and lock.get("days"):
        if retain_until is None:
            retain_until = store.now() + CONFIG_LOCK_FACTOR * int(lock["days"]) * DAY_SECONDS
        store.put_retained("config", raw, retain_until, mode=lock.get("mode"))
    else:
        store.put("config", raw, retain_until=retain_until)
    store.flush()


def renew_config_retention(store, config):
    """Extend the config's retention to storage now + 1.5 x object_lock days when less than object_lock days are left,
    so it outlives the backup about to be written (whose objects are locked for object_lock days).

    Called once per backup (Repository.begin_backup): one HEAD, and one retention update every days/2. Returns the new
    retain_until (epoch s) or None when nothing was done. Times are the storage's (``store.now()``)."""
    lock = config.get("object_lock")
    if store.kind != "s3" or not isinstance(lock, dict) or not lock.get("days"):
        return None
    days = int(lock["days"])
    info = store.stat("config")
    now = store.now()
    if info is None or (info.retain_until is not None and info.retain_until >= now + days * DAY_SECONDS):
        return None
    retain_until = now + CONFIG_LOCK_FACTOR * days * DAY_SECONDS
    store.extend_retention("config", retain_until, mode=lock.get("mode"))
    return retain_until


def parse(raw, location, source="config"):
    """The config dict from stored bytes; RepositoryError if it is not JSON, not ours, or of another format version."""
    try:
        config = json.loads(raw.decode("utf-8"))
    except ValueError:
        raise RepositoryError("The repository %s at %s is not valid JSON (damaged)." % (source, location),
                              hint="Restore the file 'config' from a copy or a key export (state: key_imported); without it "
                                   "the repository cannot be read.", location=location)
    return check_format(config, location)


def check_format(config, location):
    if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
        raise RepositoryError("%s is not a hyperv.backup repository." % location, location=location)
    version = config.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise RepositoryError("The repository config at %s has no valid format version (%r)." % (location, version),
                              hint="Restore 'config' from a key export (state: key_imported).", location=location)
    if version > FORMAT_VERSION:
        raise RepositoryError("Repository %s has format version %s; this collection reads up to %d." % (location, version, FORMAT_VERSION),
                              hint="Upgrade the hyperv.backup collection.", location=location)
    if version < OLDEST_READABLE_FORMAT:
        # Formats 1 to 3 were never released; version 1 configs were not authenticated, so reading them would reopen
        # the hole version 2 closes (an edited config switching encryption off).
        raise RepositoryError("Repository %s has format version %s, written by a pre-release of hyperv.backup; this collection "
                              "reads format versions %d to %d." % (location, version, OLDEST_READABLE_FORMAT, FORMAT_VERSION),
                              hint="Create a new repository and take new full backups; restore what you need from the old one "
                                   "with the pre-release collection that wrote it.", location=location)
    return config


def unlock(config, passphrase, location):
    """The keys of a checked config: refuses an empty passphrase, a passphrase for a plain config, and any edit of an
    encrypted config (tag); then checks that every field makes sense."""
    check_passphrase(passphrase, location)
    encryption = config.get("encryption")
    if encryption is None:
        if passphrase is not None:
            raise RepositoryError("Repository %s is not encrypted, but a passphrase was given." % location,
                                  hint="Its config says it is plain. If you created it with a passphrase, someone who can write "
                                       "the storage has replaced its config to switch encryption off: do not back up into it; "
                                       "write the config back from a key export (state: key_imported) and check who can write "
                                       "the storage. If it really is plain, leave repository_passphrase unset for it.",
                                  location=location)
        keys = RepositoryKeys()
    else:
        if not isinstance(encryption, dict):
            raise RepositoryError("The encryption section of the repository config at %s is damaged." % location,
                                  hint="Restore 'config' from a key export (state: key_imported).", location=location)
        require_libraries(encrypted=True)
        keys = RepositoryKeys.unlock(encryption, passphrase, location)
        check_tag(config, keys, location)
    check_fields(config, location)
    keys.format_version = config["version"]     # the envelope of the repository's own format (repository_crypto.py)
    return keys


def check_tag(config, keys, location):
    auth = config.get("authentication")
    if not isinstance(auth, dict) or auth.get("algorithm") != TAG_ALGORITHM or not isinstance(auth.get("tag"), str):
        raise RepositoryError("The config of encrypted repository %s is not authenticated: it has been changed or damaged." % location,
                              hint="Do not use it as it is: write the config back from a key export (state: key_imported) "
                                   "and find out who can write the storage.", location=location)
    if not hmac.compare_digest(auth["tag"].encode("utf-8"), keys.config_tag(canonical(config)).encode("ascii")):
        raise RepositoryError("The config of repository %s has been changed since it was written (it fails authentication: "
                              "tampered or damaged)." % location,
                              hint="Someone or something edited the config (encryption, Object Lock, chunk size, ids...). Do not "
                                   "back up into it: write the config back from a key export (state: key_imported), restore it "
                                   "from a copy or an earlier S3 object version, and check who can write the storage.",
                              location=location)


def check_fields(config, location):
    """Every field the code relies on has a value it can use (a plain config is checked only this way)."""
    def bad(what, hint="Restore 'config' from a copy or a key export; a plain repository's config can be edited by anyone who "
                       "can write the storage (docs/security.md)."):
        raise RepositoryError("The repository config at %s is not usable: %s." % (location, what), hint=hint, location=location)

    if not isinstance(config.get("repository_id"), str) or not config["repository_id"]:
        bad("repository_id is missing")
    if not isinstance(config.get("created"), str):
        bad("created is missing")
    chunk_size = config.get("chunk_size")
    if (not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or not 64 * 1024 <= chunk_size <= 64 * MiB
            or chunk_size & (chunk_size - 1)):
        bad("chunk_size %r is not a power of two from 64 KiB to 64 MiB" % (chunk_size,))
    compression = config.get("compression")
    if (not isinstance(compression, dict) or compression.get("algorithm") != "zstd" or not isinstance(compression.get("level"), int)
            or not 1 <= compression["level"] <= 19):
        bad("compression %r is not zstd at level 1 to 19" % (compression,))
    encrypted = config.get("encryption") is not None
    if config.get("chunk_id") != ("blake3-keyed" if encrypted else "blake3"):
        bad("chunk_id %r does not fit a%s repository" % (config.get("chunk_id"), "n encrypted" if encrypted else " plain"))
    if encrypted and config["encryption"].get("cipher") != CIPHER:
        bad("cipher %r is not %s" % (config["encryption"].get("cipher"), CIPHER))
    lock = config.get("object_lock")
    if lock is not None and (not isinstance(lock, dict) or not isinstance(lock.get("days"), int) or lock["days"] < 1
                             or lock.get("mode") not in LOCK_MODES):
        bad("object_lock %r is not a number of days (1 or more) and a mode" % (lock,))
    if config.get("padding") not in PADDING_MODES or (config["padding"] != "none" and not encrypted):
        bad("padding %r is not one of %s (padme only in an encrypted repository)" % (config.get("padding"), ", ".join(PADDING_MODES)))


def read_config(store):
    """The raw config bytes of the repository at ``store``; a missing config says how to recover it."""
    try:
        return store.get("config")
    except (KeyError, FileNotFoundError, NotADirectoryError):
        earlier = earlier_config_versions(store)
        if earlier:
            raise RepositoryError("The config of repository %s was deleted (its newest version is a delete marker), but %d earlier "
                                  "version(s) of it are kept by the bucket." % (store.location, len(earlier)),
                                  hint="Write the newest one that opens with your passphrase back with "
                                       "hyperv.backup.hyperv_backup_repository state: config_recovered (repository_passphrase, or "
                                       "key_file), then find out who deleted it. " + RECOVERY_HINT,
                                  location=store.location, reason="config_deleted", versions=len(earlier))
        raise RepositoryError("No backup repository at %s." % store.location,
                              hint="Create it first (hyperv.backup.hyperv_backup_repository with state: present). " + RECOVERY_HINT,
                              location=store.location)


def earlier_config_versions(store):
    """The stored versions (not delete markers) of ``config``, newest first; [] on a local store or a bucket that keeps none."""
    if store.kind != "s3":
        return []
    try:
        versions = store.list_versions("config")
    except RepositoryError as err:
        if err.extra.get("s3_error") in ("AccessDenied", "NotImplemented"):
            return []       # credentials without s3:ListBucketVersions, or an endpoint without versions: nothing to tell
        raise
    return [version for version in versions if not version["delete_marker"]]


# -- key export files ------------------------------------------------------------------------------

def key_export(config, location):
    """The content of a key export: the whole authenticated config (its key slots are still passphrase-protected)."""
    return {"format": KEY_EXPORT_FORMAT, "version": KEY_EXPORT_VERSION, "repository_id": config["repository_id"],
            "location": location, "exported": iso(utc_now()), "config": config}


def parse_key_export(raw, path):
    """The config inside a key export file; RepositoryError if the file is not one."""
    try:
        document = json.loads(raw.decode("utf-8"))
    except ValueError:
        document = None
    if not isinstance(document, dict) or document.get("format") != KEY_EXPORT_FORMAT or not isinstance(document.get("config"), dict):
        raise RepositoryError("%s is not a key export of a hyperv.backup repository." % path,
                              hint="Give the file written by hyperv_backup_repository with state: key_exported.", path=path)
    if document.get("version") != KEY_EXPORT_VERSION:
        raise RepositoryError("Key export %s has version %r; this collection reads version %d." % (path, document.get("version"), KEY_EXPORT_VERSION),
                              hint="Use the collection that wrote it.", path=path)
    return check_format(document["config"], path)


def read_key_file(path):
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except (IOError, OSError) as err:
        raise RepositoryError("Cannot read the key file %s: %s." % (path, err.strerror or err),
                              hint="Check the path (key_file) and that the user running the module may read it.", path=path)
    return parse_key_export(raw, path)


def check_keys_fit(store, keys, location, source):
    """RepositoryError unless the first backup record of the repository (if it has any) decrypts with ``keys``;
    True when one did, False when the repository has no record to try.

    Used when a config comes from a key file and the stored config is gone, damaged or of another id: the key file
    must be this repository's, or nothing would be readable (and an import would write a wrong config)."""
    for info in store.list("backups/"):
        try:
            keys.unseal(KIND_BACKUP, info.key, store.get(info.key))
        except KeyError:
            continue
        except ValueError:
            raise RepositoryError("The keys in %s are of another repository: backup record %s of %s does not decrypt with them."
                                  % (source, info.key, location),
                                  hint="Use the key export of this repository (its repository_id is in the file).",
                                  location=location)
        return True
    return False


def config_from_key_file(store, key_file, passphrase):
    """(config, keys) from a key export, checked to belong to the repository at ``store``."""
    config = read_key_file(key_file)
    keys = unlock(config, passphrase, key_file)
    if not keys.encrypted:
        raise RepositoryError("Key file %s holds the config of a plain repository." % key_file, hint="Key files are for encrypted "
                              "repositories; open a plain repository without one.", path=key_file)
    try:
        stored = parse(store.get("config"), store.location)
    except (KeyError, FileNotFoundError, NotADirectoryError, RepositoryError):
        stored = None
    if stored is not None and stored.get("repository_id") == config["repository_id"]:
        return config, keys
    # No usable stored config, or one of another id (another repository, or a config someone replaced): the data
    # decides. Only a backup record that decrypts with the exported keys lets a key file override another id.
    fits = check_keys_fit(store, keys, store.location, key_file)
    if stored is not None and not fits:
        raise RepositoryError("Key file %s is of another repository (%s); the config at %s is of repository %s." % (
            key_file, config["repository_id"], store.location, stored.get("repository_id")),
            hint="Use the key export of this repository, or the repository the key file names.", location=store.location)
    return config, keys
