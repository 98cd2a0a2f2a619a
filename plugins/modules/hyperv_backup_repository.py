#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module hyperv_backup_repository: create, verify or prune the backup repository."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: hyperv_backup_repository
short_description: Create, verify or prune the Hyper-V backup repository
version_added: 0.1.0
description:
  - Manages the repository that C(hyperv.backup) backups are written to, in a local directory or an S3 bucket.
  - O(state=present) creates the repository if it does not exist (changed only then).
  - O(state=verified) re-reads and re-hashes every chunk referenced by the chosen backups and reports missing and
    corrupt chunks by backup.
  - O(state=pruned) applies a grandfather-father-son retention policy per VM, removes the backups it does not
    keep (never those locked by S3 Object Lock, never the parent of a running backup), then deletes the chunks
    no remaining backup references.
  - Runs on the controller or the backup proxy that holds the repository; use C(delegate_to).
author:
  - hyperv.backup contributors (@hyperv-backup)
extends_documentation_fragment:
  - hyperv.backup.repository
options:
  state:
    description: What the repository should be.
    type: str
    choices: [present, verified, pruned]
    default: present
  chunk_size:
    description:
      - Chunk size in bytes of a new repository (a power of two from 64 KiB to 64 MiB). Ignored for an existing one.
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
  backups:
    description: With O(state=verified), the backup ids to verify; all backups when empty.
    type: list
    elements: str
    default: []
  fail_on_damage:
    description: With O(state=verified), fail the task when a backup is damaged (the report is returned either way).
    type: bool
    default: true
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
      - With O(state=pruned), unreferenced chunks younger than this are not deleted (a safety margin for
        backups that are still being written, and for clock differences between backup proxies).
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
    details: O(state=present) reports whether it would create; O(state=pruned) reports what would be removed; O(state=verified) reads only.
  diff_mode:
    description: Will return details on what has changed, when in diff mode.
    support: none
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: posix
notes:
  - Several backups (of different VMs) may write to one repository at once; prune waits for nobody but never
    removes what a running backup has just referenced.
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

- name: Verify every backup
  hyperv.backup.hyperv_backup_repository:
    repository: /srv/hyperv-backup
    repository_passphrase: "{{ vault_repository_passphrase }}"
    state: verified
  delegate_to: backup-proxy

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
repository:
  description: Facts about the repository (no secrets).
  returned: when the repository exists
  type: dict
  sample: {"location": "/srv/hyperv-backup", "backend": "local", "chunk_size": 1048576, "encrypted": true,
           "compression": {"algorithm": "zstd", "level": 1}, "object_lock_days": null, "format_version": 1}
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
from ansible_collections.hyperv.backup.plugins.module_utils.repository import repository_crypto
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


def run(module):
    params = module.params
    state = params["state"]
    if state == "present":
        if module.check_mode:
            exists = open_store(params["repository"], s3_options_from_params(params)).stat("config") is not None
            if not exists:
                return {"changed": True, "created": True, "msg": "Would create a repository at %s." % params["repository"]}
            repo = open_repository(params)
            return {"changed": False, "created": False, "repository": repo.describe(), "msg": "The repository exists."}
        repo, created = ensure_repository(params, chunk_size=params["chunk_size"], compression_level=params["compression_level"],
                                          object_lock_days=params["object_lock_days"])
        msg = ("Created the repository at %s." if created else "The repository at %s exists.") % repo.location
        return {"changed": created, "created": created, "repository": repo.describe(), "msg": msg}
    repo = open_repository(params)
    if state == "verified":
        report = repo.verify(params["backups"] or None, record_status=not module.check_mode)
        result = {"changed": False, "created": False, "repository": repo.describe(), "verify": report, "msg": verify_message(report)}
        if not report["ok"] and params["fail_on_damage"]:
            result["failed"] = True
        return result
    for name in ("gc_grace_minutes", "lock_wait_seconds"):
        if params[name] < 0:
            module.fail_json(msg="%s must be 0 or more, got %d." % (name, params[name]))
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


def main():
    spec = repository_argument_spec()
    spec.update(
        state=dict(type="str", choices=["present", "verified", "pruned"], default="present"),
        chunk_size=dict(type="int", default=1048576),
        compression_level=dict(type="int", default=1),
        object_lock_days=dict(type="int"),
        backups=dict(type="list", elements="str", default=[]),
        fail_on_damage=dict(type="bool", default=True),
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
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    check_libraries(module)
    try:
        result = run(module)
    except HyperVBackupError as err:
        module.fail_json(msg=str(err), **err.details())
    if result.pop("failed", False):
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
