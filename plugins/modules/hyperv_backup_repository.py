#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module hyperv_backup_repository: create, verify or prune the backup repository, and manage its keys."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: hyperv_backup_repository
short_description: Create, verify or prune the Hyper-V backup repository, and manage its keys
version_added: 0.1.0
description:
  - Manages the repository that C(hyperv.backup) backups are written to, in a local directory or an S3 bucket.
  - O(state=present) creates the repository if it does not exist (changed only then).
  - O(state=verified) re-reads and re-hashes every chunk referenced by the chosen backups and reports missing and
    corrupt chunks by backup.
  - O(state=pruned) applies a grandfather-father-son retention policy per VM, removes the backups it does not
    keep (never those locked by S3 Object Lock, never the parent of a running backup), then deletes the chunks
    no remaining backup references.
  - The key states manage an encrypted repository's keys; only the repository's C(config) is rewritten (never data), and each
    change is read back and opened with the passphrase that must now work before the task reports success.
    O(state=passphrase_changed) rewraps the keys of the slot O(repository_passphrase) opens under O(new_repository_passphrase).
    O(state=key_slot_added) adds a key slot (O(key_slot_label), default C(recovery)) opened by O(new_repository_passphrase),
    for example a recovery passphrase kept offline. O(state=key_slot_removed) removes slot O(key_slot_label);
    O(repository_passphrase) must open another slot, so a working slot always remains.
  - O(state=key_exported) writes the repository's authenticated config, with its key slots still protected by their
    passphrases, to O(key_file) (mode 0600). O(state=key_imported) writes it back when the stored config is missing,
    damaged or was changed; an intact config is left alone, so an old export never undoes a passphrase change.
  - O(state=config_recovered) (S3, versioned bucket) writes back the newest earlier version of the repository's C(config)
    that opens with O(repository_passphrase) (or authenticates with the keys of O(key_file)), after a plain delete (a
    delete marker) or an overwrite; with Object Lock it is locked again. An intact config is left alone (changed false).
    After a passphrase change, older versions open with the older passphrase only. A local directory keeps no versions.
  - Old copies of the config (file backups, earlier S3 object versions, key exports) keep opening with the passphrases
    they were written with, because the data keys never change. See docs/security.md.
  - Runs on the controller or the backup proxy that holds the repository; use C(delegate_to).
author:
  - hyperv.backup contributors (@hyperv-backup)
extends_documentation_fragment:
  - hyperv.backup.repository
  - hyperv.backup.repository_copy.keys_from
options:
  state:
    description: What the repository should be, or which key operation to run.
    type: str
    choices: [present, verified, pruned, passphrase_changed, key_slot_added, key_slot_removed, key_exported, key_imported,
              config_recovered]
    default: present
  new_repository_passphrase:
    description:
      - With O(state=passphrase_changed), the new passphrase of the key slot that O(repository_passphrase) opens.
      - With O(state=key_slot_added), the passphrase of the new slot.
      - Never logged or returned; an empty string is refused.
      - Running O(state=passphrase_changed) again after it succeeded changes nothing (the current passphrase no longer opens a
        slot, the new one does); giving the current passphrase as the new one changes nothing either.
    type: str
  key_slot_label:
    description:
      - With O(state=key_slot_added), the name of the new slot (default C(recovery)); with O(state=key_slot_removed), the slot to remove.
      - The first slot of a repository is called C(passphrase). 1 to 32 letters, digits, C(.), C(_) or C(-).
      - A repository has at most 4 slots (opening tries them in turn, one scrypt derivation each).
    type: str
  key_file:
    description:
      - With O(state=key_exported), the file to write the key export to (on the machine that runs the module, mode 0600,
        missing directories are created 0700). A file there that is not a key export is never overwritten.
      - With O(state=key_imported), the key export to write back as the repository's config.
      - With O(state=config_recovered), optional; the earlier config version restored must authenticate with its keys.
      - Keep it apart from the repository (and its credentials); it still needs a passphrase of the repository.
    type: path
    aliases: [key_export_path]
  chunk_size:
    description:
      - Chunk size in bytes of a new repository (a power of two from 64 KiB to 64 MiB). Ignored for an existing one,
        and with O(copy_keys_from) (the new repository takes that repository's chunk size).
    type: int
    default: 1048576
  compression_level:
    description: zstd level of a new repository (1 is fastest; higher compresses more and costs CPU).
    type: int
    default: 1
  object_lock_days:
    description:
      - For a new S3 repository on a bucket created with Object Lock, how many days each backup is immutable.
      - Nobody (including ransomware with the repository credentials) can delete those objects before then.
    type: int
  padding:
    description:
      - Padding of the objects of a new encrypted repository (used only when the repository is created; an existing
        repository keeps the padding it was created with, which is returned in C(repository.padding)).
      - V(none) stores each object at its compressed size plus a fixed overhead, so object sizes can fingerprint known
        disk images. V(padme) pads every object (inside the encryption, authenticated) to a Padme length, at most about
        12 % larger (a few % for 1 MiB chunks); sizes then reveal far less. It hides neither the number of chunks nor
        when they were written. See docs/security.md.
      - V(padme) needs O(repository_passphrase); it is refused for an unencrypted repository.
    type: str
    choices: [none, padme]
    default: none
  backups:
    description: With O(state=verified), the backup ids to verify; all backups when empty.
    type: list
    elements: str
    default: []
  fail_on_damage:
    description: With O(state=verified), fail the task when a backup is damaged (the report is returned either way).
    type: bool
    default: true
  check_filesystems:
    description:
      - With O(state=verified), also open every partition of every disk of each backup whose bytes are intact and walk
        its guest file system's metadata (NTFS MFT, ext4 inodes and extents, FAT, XFS) with the reader of
        M(hyperv.backup.hyperv_file_restore). A damaged or unreadable file system marks the backup damaged, naming
        the disk, the partition and the first error (C(verify.backups[].filesystems)).
      - Reads each file system's metadata chunks from the repository; partitions without a known file system and
        BitLocker volumes are listed and not checked.
    type: bool
    default: false
  vm:
    description: With O(state=pruned), prune only the backups of this VM (name or id); all VMs when unset.
    type: str
  keep_last:
    description:
      - With O(state=pruned), keep the N newest backups of each VM.
      - Newest means last committed to the repository (a sequence number each backup gets), not a clock, so a host or
        proxy clock stepped back never makes a new backup look older. The day, week, month or year a backup counts
        for is the time of its recovery point.
      - Two VMs that report the same VM id from two hosts are kept apart (each keeps its own N); the prune report names each backup's C(lineage).
    type: int
    default: 0
  protect_backups:
    description:
      - With O(state=pruned), backup ids that are kept whatever the policy says.
      - The M(hyperv.backup.hyperv_backup) role passes the backups its run has just made, so that a run never prunes its own new backups.
    type: list
    elements: str
    default: []
  keep_daily:
    description: With O(state=pruned), keep the newest backup of each of the last N days that have one (UTC).
    type: int
    default: 0
  keep_weekly:
    description: With O(state=pruned), keep the newest backup of each of the last N ISO weeks that have one.
    type: int
    default: 0
  keep_monthly:
    description: With O(state=pruned), keep the newest backup of each of the last N months that have one.
    type: int
    default: 0
  keep_yearly:
    description: With O(state=pruned), keep the newest backup of each of the last N years that have one.
    type: int
    default: 0
  gc_grace_minutes:
    description:
      - With O(state=pruned), unreferenced chunks younger than this (by the storage's clock) are not deleted.
      - At least 15, the minimum and the default - running backups touch a chunk they reuse only when it is older than
        10 minutes, and 5 more minutes cover clock differences between storage nodes; a smaller value is refused.
      - GC deletes no chunk at all while a backup is running (the result says C(deferred)); it catches up on the next run.
    type: int
    default: 15
  lock_wait_seconds:
    description: With O(state=pruned), how long to wait for another prune to release the repository lock.
    type: int
    default: 0
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying the repository.
    support: full
    details: O(state=present) reports whether it would create; O(state=pruned) reports what would be removed; O(state=verified) reads only;
      the key states report whether they would change the config or the key file, and write nothing; O(state=config_recovered)
      reports the version it would write back.
  diff_mode:
    description: Will return details on what has changed, when in diff mode.
    support: partial
    details:
      - O(state=present) shows the settings of a repository it creates (chunk size, compression, encryption, padding,
        Object Lock, key slots); the key states show the key slots by label (never passphrases or key material), the
        key file written or the config written back; O(state=pruned) shows the backups before and after and how many
        unreferenced chunks were (or would be) deleted.
      - O(state=verified) changes nothing and returns no diff.
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: posix
notes:
  - Several backups (of different VMs) may write to one repository at once; prune waits for nobody but never
    removes what a running backup has just referenced.
  - Run one key operation at a time per repository; two at once each write the whole config, and the last one wins.
  - An empty O(repository_passphrase) (for example an empty survey answer, or an exported but empty
    E(HYPERV_BACKUP_REPOSITORY_PASSPHRASE)) is refused; leave the option unset for an unencrypted repository. A passphrase
    given for a repository whose config says it is unencrypted is refused too (its config may have been replaced).
  - The module process disables core dumps (and, on Linux, is made non-dumpable) and removes
    E(HYPERV_BACKUP_REPOSITORY_PASSPHRASE) from its environment once read, so processes it starts do not inherit it.
seealso:
  - module: hyperv.backup.hyperv_backup
  - module: hyperv.backup.hyperv_backup_info
  - module: hyperv.backup.hyperv_restore
"""

EXAMPLES = r"""
- name: Create an encrypted repository on the backup proxy
  hyperv.backup.hyperv_backup_repository:
    repository: /srv/hyperv-backup
    repository_passphrase: "{{ vault_repository_passphrase }}"
    state: present
  delegate_to: backup-proxy

- name: Create an immutable repository on S3 (bucket created with Object Lock)
  hyperv.backup.hyperv_backup_repository:
    repository: s3://hyperv-backups/site1
    repository_passphrase: "{{ vault_repository_passphrase }}"
    object_lock_days: 14
    state: present
  delegate_to: localhost

- name: Create an encrypted repository whose object sizes are padded (Padme), so they do not fingerprint known images
  hyperv.backup.hyperv_backup_repository:
    repository: s3://hyperv-backups/site2
    repository_passphrase: "{{ vault_repository_passphrase }}"
    padding: padme
    state: present
  delegate_to: localhost

- name: Verify every backup
  hyperv.backup.hyperv_backup_repository:
    repository: /srv/hyperv-backup
    repository_passphrase: "{{ vault_repository_passphrase }}"
    state: verified
  delegate_to: backup-proxy

- name: Change the passphrase (rewraps the keys; no data is rewritten)
  hyperv.backup.hyperv_backup_repository:
    repository: /srv/hyperv-backup
    repository_passphrase: "{{ vault_repository_passphrase }}"
    new_repository_passphrase: "{{ vault_new_repository_passphrase }}"
    state: passphrase_changed
  delegate_to: backup-proxy

- name: Add a recovery passphrase, kept offline, as a second key slot
  hyperv.backup.hyperv_backup_repository:
    repository: /srv/hyperv-backup
    repository_passphrase: "{{ vault_repository_passphrase }}"
    new_repository_passphrase: "{{ vault_recovery_passphrase }}"
    key_slot_label: recovery
    state: key_slot_added
  delegate_to: backup-proxy

- name: Export the keys, so that a deleted or overwritten config can be written back
  hyperv.backup.hyperv_backup_repository:
    repository: s3://hyperv-backups/site1
    repository_passphrase: "{{ vault_repository_passphrase }}"
    key_file: /root/hyperv-backup-keys/site1.json
    state: key_exported
  delegate_to: localhost

- name: Write the config back from the key export
  hyperv.backup.hyperv_backup_repository:
    repository: s3://hyperv-backups/site1
    repository_passphrase: "{{ vault_repository_passphrase }}"
    key_file: /root/hyperv-backup-keys/site1.json
    state: key_imported
  delegate_to: localhost

- name: Write back the config from its newest earlier S3 version (after a plain delete of the config)
  hyperv.backup.hyperv_backup_repository:
    repository: s3://hyperv-backups/site1
    repository_passphrase: "{{ vault_repository_passphrase }}"
    state: config_recovered
  delegate_to: localhost

- name: Keep 7 daily, 4 weekly and 12 monthly backups per VM
  hyperv.backup.hyperv_backup_repository:
    repository: /srv/hyperv-backup
    repository_passphrase: "{{ vault_repository_passphrase }}"
    state: pruned
    keep_last: 2
    keep_daily: 7
    keep_weekly: 4
    keep_monthly: 12
  delegate_to: backup-proxy
"""

RETURN = r"""
msg:
  description: What was done or found, in one sentence.
  returned: always
  type: str
  sample: "Removed 3 backup(s), kept 9; freed 812 unreferenced chunk(s), 1207959552 bytes."
created:
  description: Whether the repository was created by this task (or would be, in check mode).
  returned: always
  type: bool
  sample: false
keys_shared:
  description: Whether the repository has the keys of O(copy_keys_from) (copies between the two compare ids only).
  returned: with O(state=present) and O(copy_keys_from)
  type: bool
  sample: true
repository:
  description: Facts about the repository (no secrets).
  returned: when the repository exists
  type: dict
  sample: {"location": "/srv/hyperv-backup", "backend": "local", "chunk_size": 1048576, "encrypted": true,
           "compression": {"algorithm": "zstd", "level": 1}, "object_lock_days": null, "format_version": 5, "padding": "none",
           "config_authenticated": true, "key_slots": ["passphrase", "recovery"]}
key_slots:
  description: The labels of the repository's key slots after the task (never their material).
  returned: with the key states
  type: list
  elements: str
  sample: ["passphrase", "recovery"]
key_slot:
  description: The slot the task changed, added or removed (or would, in check mode).
  returned: with O(state=passphrase_changed), O(state=key_slot_added), O(state=key_slot_removed)
  type: str
  sample: recovery
key_file:
  description: The key export written or read.
  returned: with O(state=key_exported), O(state=key_imported)
  type: str
  sample: /root/hyperv-backup-keys/site1.json
recovered_version:
  description: The S3 version id of the config written back (or that would be, in check mode); null when the config was intact.
  returned: with O(state=config_recovered)
  type: str
  sample: 3HL4kqtJlcpXroDTDmJ-rmSpXd3dIbrHY
recovered_version_time:
  description: When the version found was written (epoch seconds, storage time).
  returned: with O(state=config_recovered)
  type: float
  sample: 1796376752.0
verify:
  description:
    - The verify report; C(backups) lists per backup C(ok), C(missing_chunks) and C(corrupt_chunks)
      (each with C(disk_key), C(offset), C(chunk_id)), C(missing_count), C(corrupt_count) and C(problems).
  returned: when O(state=verified)
  type: dict
  sample: {"ok": false, "backups_checked": 2, "chunks_checked": 700, "bytes_checked": 2936012800,
           "damaged_backups": ["20261125T061911Z-d083c6579554"], "backups": []}
prune:
  description:
    - The prune report; C(kept) (with the retention reasons, or C(made by this run) for O(protect_backups)), C(removed),
      C(locked) (with C(kept_until)), and C(gc) (chunk counts and bytes freed).
    - Each backup in them has C(backup_id), C(vm_id), C(vm_name), C(host), C(lineage) (which VM, the VM id or
      C(<vm id>@<host>) for a second VM reporting the same id from another host), C(sequence) (commit order),
      C(created) and C(type).
  returned: when O(state=pruned)
  type: dict
  sample: {"dry_run": false, "removed": [], "kept": [], "locked": [], "gc": {"chunks_removed": 0, "bytes_removed": 0}}
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.hyperv.backup.plugins.module_utils.errors import HyperVBackupError
from ansible_collections.hyperv.backup.plugins.module_utils.guestfs.file_restore import add_filesystem_checks
from ansible_collections.hyperv.backup.plugins.module_utils.repository import repository_crypto, repository_key_slots, repository_memory
from ansible_collections.hyperv.backup.plugins.module_utils.repository import repository_copy, repository_recovery
from ansible_collections.hyperv.backup.plugins.module_utils.repository.process_hardening import harden_process
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_config import check_padding, check_passphrase
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_diff import repository_diff
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_options import (
    ensure_repository, open_repository, prune_message, repository_argument_spec, s3_options_from_params, verify_message,
)
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_store import open_store
from ansible_collections.hyperv.backup.plugins.module_utils.repository.retention import RetentionPolicy


def check_libraries(module):
    for name, present, error in (("blake3", repository_crypto.HAS_BLAKE3, repository_crypto.BLAKE3_IMPORT_ERROR),
                                 ("zstandard", repository_crypto.HAS_ZSTANDARD, repository_crypto.ZSTANDARD_IMPORT_ERROR)):
        if not present:
            module.fail_json(msg=missing_required_lib(name), exception=error)


def run_key_state(module):
    """passphrase_changed, key_slot_added, key_slot_removed, key_exported, key_imported (repository_key_slots.py);
    config_recovered (repository_recovery.py)."""
    params = module.params
    state = params["state"]
    common = dict(s3_options=s3_options_from_params(params), check_mode=module.check_mode)
    location, passphrase = params["repository"], params["repository_passphrase"]
    if state == "passphrase_changed":
        result = repository_key_slots.change_passphrase(location, passphrase, params["new_repository_passphrase"], **common)
    elif state == "key_slot_added":
        result = repository_key_slots.add_key_slot(location, passphrase, params["new_repository_passphrase"],
                                                   label=params["key_slot_label"] or "recovery", **common)
    elif state == "key_slot_removed":
        result = repository_key_slots.remove_key_slot(location, passphrase, params["key_slot_label"], **common)
    elif state == "config_recovered":
        result = repository_recovery.recover_config(location, passphrase, key_file=params["key_file"], **common)
    elif state == "key_exported":
        result = repository_key_slots.export_keys(location, passphrase, params["key_file"], **common)
    else:
        result = repository_key_slots.import_keys(location, passphrase, params["key_file"], **common)
    result["created"] = False
    return result


def run(module):
    params = module.params
    state = params["state"]
    if state in KEY_STATES:
        return run_key_state(module)
    if state == "present":
        if params["copy_keys_from"]:
            return repository_copy.ensure_with_keys_of(params, module.check_mode)
        if module.check_mode:
            check_passphrase(params["repository_passphrase"], params["repository"])     # refused as it would be for real
            check_padding(params["padding"], params["repository_passphrase"] is not None, params["repository"])
            exists = open_store(params["repository"], s3_options_from_params(params)).stat("config") is not None
            if not exists:
                return {"changed": True, "created": True, "msg": "Would create a repository at %s." % params["repository"]}
            repo = open_repository(params)
            return {"changed": False, "created": False, "repository": repo.describe(), "msg": "The repository exists."}
        repo, created = ensure_repository(params, chunk_size=params["chunk_size"], compression_level=params["compression_level"],
                                          object_lock_days=params["object_lock_days"], padding=params["padding"])
        msg = ("Created the repository at %s." if created else "The repository at %s exists.") % repo.location
        return {"changed": created, "created": created, "repository": repo.describe(), "msg": msg}
    repo = open_repository(params)
    if state == "verified":
        report = repo.verify(params["backups"] or None, record_status=not module.check_mode)
        if params["check_filesystems"]:
            report = add_filesystem_checks(repo, report)
        result = {"changed": False, "created": False, "repository": repo.describe(), "verify": report, "msg": verify_message(report)}
        if not report["ok"] and params["fail_on_damage"]:
            result["failed"] = True
        return result
    for name in ("gc_grace_minutes", "lock_wait_seconds"):
        if params[name] < 0:
            module.fail_json(msg="%s must be 0 or more, got %d." % (name, params[name]))
    if params["gc_grace_minutes"] < 15:
        module.fail_json(msg="gc_grace_minutes must be at least 15 (running backups touch reused chunks only after 10 minutes, "
                             "plus 5 minutes for clock differences), got %d." % params["gc_grace_minutes"])
    try:
        policy = RetentionPolicy(keep_last=params["keep_last"], keep_daily=params["keep_daily"], keep_weekly=params["keep_weekly"],
                                 keep_monthly=params["keep_monthly"], keep_yearly=params["keep_yearly"])
    except ValueError as err:
        module.fail_json(msg="Invalid retention policy: %s." % err)
    report = repo.prune(policy, dry_run=module.check_mode, vm=params["vm"], grace_seconds=params["gc_grace_minutes"] * 60,
                        wait_seconds=params["lock_wait_seconds"], protect=params["protect_backups"])
    gc = report.get("gc") or {}
    # Removing leftovers of crashed backups (markers, manifests never committed) changes the repository too.
    changed = bool(report["removed"] or gc.get("chunks_removed") or gc.get("stale_sessions_removed") or gc.get("orphan_manifests_removed"))
    return {"changed": changed, "created": False, "repository": repo.describe(), "prune": report, "msg": prune_message(report)}


KEY_STATES = ("passphrase_changed", "key_slot_added", "key_slot_removed", "key_exported", "key_imported", "config_recovered")


def argument_spec():
    spec = repository_argument_spec()
    spec.update(
        state=dict(type="str", choices=["present", "verified", "pruned"] + list(KEY_STATES), default="present"),
        new_repository_passphrase=dict(type="str", no_log=True),
        key_slot_label=dict(type="str", no_log=False),      # a slot's name ("recovery"), not a secret
        key_file=dict(type="path", aliases=["key_export_path"]),
        chunk_size=dict(type="int", default=1048576),
        compression_level=dict(type="int", default=1),
        object_lock_days=dict(type="int"),
        padding=dict(type="str", choices=["none", "padme"], default="none"),
        # a repository (location and its own no_log secrets), not a secret itself
        copy_keys_from=dict(type="dict", no_log=False, options=repository_copy.repository_dict_spec()),
        backups=dict(type="list", elements="str", default=[]),
        fail_on_damage=dict(type="bool", default=True),
        check_filesystems=dict(type="bool", default=False),
        vm=dict(type="str"),
        keep_last=dict(type="int", default=0),
        protect_backups=dict(type="list", elements="str", default=[]),
        keep_daily=dict(type="int", default=0),
        keep_weekly=dict(type="int", default=0),
        keep_monthly=dict(type="int", default=0),
        keep_yearly=dict(type="int", default=0),
        gc_grace_minutes=dict(type="int", default=15),
        lock_wait_seconds=dict(type="int", default=0),
    )
    return spec


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True, required_if=[
        ("state", "passphrase_changed", ["new_repository_passphrase"]),
        ("state", "key_slot_added", ["new_repository_passphrase"]),
        ("state", "key_slot_removed", ["key_slot_label"]),
        ("state", "key_exported", ["key_file"]),
        ("state", "key_imported", ["key_file"]),
    ])
    harden_process()            # after the env fallback has filled the params: no core dumps, no passphrase for children
    check_libraries(module)
    try:
        result = run(module)
    except HyperVBackupError as err:
        module.fail_json(msg=str(err), **err.details())
    for warning in repository_memory.take_warnings():   # replay or deletion noticed by a listing (issue 13, point 5)
        module.warn(warning)
    diff = repository_diff(module.params, result, check_mode=module.check_mode) if module._diff else None
    if diff is not None:
        result["diff"] = diff
    if result.pop("failed", False):
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
