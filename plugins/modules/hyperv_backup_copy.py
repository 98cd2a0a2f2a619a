#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module hyperv_backup_copy: copy backups from the repository to a second one (local or S3)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: hyperv_backup_copy
short_description: Copy Hyper-V backups to a second repository (a second copy, local or S3)
version_added: 0.1.0
description:
  - Copies the selected backups of the repository the task names (the source, usually the one backups are written
    to) into O(target), another repository in a local directory or an S3 bucket, for a second copy of every backup in
    another place (the 3-2-1 rule).
  - Only what the target lacks is transferred. An incremental whose parent is already in the target costs what it changed.
  - Chunk ids are keyed per repository. When the target was created with the source's keys
    (O(hyperv.backup.hyperv_backup_repository#module:copy_keys_from)), or both are unencrypted, chunks and index pages are
    compared by id and copied as they are stored. Otherwise every chunk copied is read, decrypted and re-hashed with
    the target's keys, and the target builds its own index; chunks it already holds are not uploaded again.
  - Each backup keeps its identity in the target (backup id, VM, host, times, parent, metadata, VM configuration). An
    incremental's parent is copied first when the source still holds it.
  - A copied backup is listed in the target only when it is complete (it is committed like a backup, record last).
    An interrupted copy leaves nothing listed; run again, it resumes and skips every chunk already in the target.
  - Not copied (listed in RV(skipped) with the reason) are backups pruned from the target by its retention, backups
    older than one of the same VM the target already holds, and backups damaged in the source. Retention applies per
    repository - prune the target with its own policy.
  - With O(verify) the target re-reads and re-hashes every backup copied by this run (as
    O(hyperv.backup.hyperv_backup_repository#module:state=verified) does there) and the task fails if one is damaged.
  - Runs on the controller or the backup proxy that reaches both repositories; use C(delegate_to).
author:
  - hyperv.backup contributors (@hyperv-backup)
extends_documentation_fragment:
  - hyperv.backup.repository
  - hyperv.backup.repository_copy
  - ansible.builtin.action_common_attributes
options:
  backups:
    description: Copy only these backups (ids), and the parents they need.
    type: list
    elements: str
    default: []
  vm:
    description: Copy only backups of this VM (name or id).
    type: str
  source_host:
    description: Copy only backups taken from this Hyper-V host (case-insensitive).
    type: str
  since:
    description: Copy only backups created at or after this time (ISO 8601, for example C(2026-11-01)).
    type: str
  until:
    description: Copy only backups created at or before this time (ISO 8601).
    type: str
  latest_per_vm:
    description: Of the backups selected, copy only the newest of each VM (and the parents it needs).
    type: bool
    default: false
  verify:
    description: Verify every backup copied by this run in the target (reads it all back); fail if one is damaged.
    type: bool
    default: true
attributes:
  check_mode:
    support: full
    details: Plans the copy and returns RV(planned) without writing to either repository.
  diff_mode:
    support: none
    details: The result lists the backups copied.
  platform:
    platforms: posix
    details: Runs on the controller or the backup proxy that reaches both repositories; it never contacts a Hyper-V host.
seealso:
  - module: hyperv.backup.hyperv_backup_repository
  - module: hyperv.backup.hyperv_backup_info
  - module: hyperv.backup.hyperv_backup_report
"""

EXAMPLES = r"""
- name: Create the offsite repository with the keys of the local one (copies then compare ids only)
  hyperv.backup.hyperv_backup_repository:
    repository: s3://offsite-backups/hyperv
    repository_passphrase: "{{ vault_offsite_passphrase }}"
    repository_s3_region: eu-central-1
    copy_keys_from:
      repository: /srv/hyperv-backup
      repository_passphrase: "{{ vault_repository_passphrase }}"
  delegate_to: backup-proxy

- name: Copy the newest backup of every VM offsite
  hyperv.backup.hyperv_backup_copy:
    repository: /srv/hyperv-backup
    repository_passphrase: "{{ vault_repository_passphrase }}"
    latest_per_vm: true
    target:
      repository: s3://offsite-backups/hyperv
      repository_passphrase: "{{ vault_offsite_passphrase }}"
      repository_s3_region: eu-central-1
  delegate_to: backup-proxy
  register: offsite

- name: Copy this month's backups of web01 back from S3 to a local directory
  hyperv.backup.hyperv_backup_copy:
    repository: s3://offsite-backups/hyperv
    repository_passphrase: "{{ vault_offsite_passphrase }}"
    vm: web01
    since: "2026-12-01"
    target:
      repository: /srv/restore-staging
  delegate_to: backup-proxy
"""

RETURN = r"""
copied:
  description:
    - The backups copied by this run, oldest first, each with C(backup_id), C(vm_id), C(vm_name), C(host), C(lineage),
      C(type), C(parent_backup_id), C(created), C(sequence) (its place in the target's order) and what its copy moved
      (C(chunks_uploaded), C(pages_uploaded), C(bytes_uploaded), C(objects_present), C(chunks_read), C(bytes_read),
      C(chunks_rehashed)).
  returned: always
  type: list
  elements: dict
  sample: [{"backup_id": "20261125T061911Z-d083c6579554", "vm_name": "web01", "type": "incremental", "chunks_uploaded": 12,
            "bytes_uploaded": 6029312, "chunks_rehashed": 0}]
planned:
  description: The backups this run copies (or would, in check mode), oldest first, parents before children.
  returned: always
  type: list
  elements: dict
  sample: [{"backup_id": "20261125T061911Z-d083c6579554", "vm_name": "web01", "type": "full", "parent_backup_id": null}]
present:
  description: Ids of selected backups the target already holds.
  returned: always
  type: list
  elements: str
  sample: ["20261124T061900Z-0123456789ab"]
skipped:
  description: Backups not copied, each with C(backup_id), C(vm_name) and C(reason).
  returned: always
  type: list
  elements: dict
  sample: [{"backup_id": "20261101T061900Z-0123456789ab", "vm_name": "web01",
            "reason": "pruned from the target by its retention (tombstone deleted/20261101T061900Z-0123456789ab)"}]
same_keys:
  description: Whether the two repositories share their keys (ids compared only, nothing re-hashed).
  returned: always
  type: bool
  sample: true
chunks_uploaded:
  description: Chunks written to the target by this run.
  returned: always
  type: int
  sample: 190
pages_uploaded:
  description: Index pages copied as they are (same keys; with different keys the target writes its own, counted in RV(chunks_uploaded)).
  returned: always
  type: int
  sample: 2
bytes_uploaded:
  description: Bytes written to the target for chunks and pages (as stored, compressed and encrypted).
  returned: always
  type: int
  sample: 99614720
objects_present:
  description: Chunks and pages the copy needed that the target already held (not uploaded).
  returned: always
  type: int
  sample: 0
chunks_read:
  description: Chunks read and decrypted from the source to be re-hashed (different keys only).
  returned: always
  type: int
  sample: 0
bytes_read:
  description: Bytes of those chunks.
  returned: always
  type: int
  sample: 0
chunks_rehashed:
  description: Chunks hashed with the target's id key (0 when the keys are shared).
  returned: always
  type: int
  sample: 0
duration_seconds:
  description: How long the copy took, before verify.
  returned: when something was copied
  type: float
  sample: 3.2
dry_run:
  description: Whether this was check mode (nothing written).
  returned: always
  type: bool
  sample: false
verify:
  description: The target's verify report of the backups copied (as O(hyperv.backup.hyperv_backup_repository#module:state=verified) returns it).
  returned: always
  type: dict
  sample: {"ok": true, "backups_checked": 1, "chunks_checked": 190, "damaged_backups": []}
source:
  description: Facts about the source repository (no secrets).
  returned: always
  type: dict
target:
  description: Facts about the target repository (no secrets).
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.hyperv.backup.plugins.module_utils.errors import HyperVBackupError
from ansible_collections.hyperv.backup.plugins.module_utils.repository import repository_copy, repository_memory
from ansible_collections.hyperv.backup.plugins.module_utils.repository.process_hardening import harden_process
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import check_backup_id
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_options import open_repository, repository_argument_spec


def run(module):
    params = module.params
    source = open_repository(params)
    target = repository_copy.open_repository_dict(params["target"])
    for backup_id in params["backups"]:
        check_backup_id(backup_id, source.location)
    if module.check_mode:
        source, target = source.read_only_view(), target.read_only_view()
    report = repository_copy.copy_backups(source, target, backup_ids=params["backups"], vm=params["vm"], host=params["source_host"],
                                          since=params["since"], until=params["until"], latest_per_vm=params["latest_per_vm"],
                                          verify=params["verify"], dry_run=module.check_mode)
    count = len(report["planned"] if module.check_mode else report["copied"])
    verb = "Would copy" if module.check_mode else "Copied"
    msg = "%s %d backup(s) from %s to %s (%s); %d already there, %d skipped." % (
        verb, count, source.location, target.location, "same keys: ids compared only" if report["same_keys"] else
        "different keys: chunks re-hashed", len(report["present"]), len(report["skipped"]))
    report.update(changed=count > 0, msg=msg, source=source.describe(), target=target.describe())
    return report


def argument_spec():
    spec = repository_argument_spec()
    spec.update(
        target=dict(type="dict", required=True, options=repository_copy.repository_dict_spec()),
        backups=dict(type="list", elements="str", default=[]),
        vm=dict(type="str"),
        source_host=dict(type="str"),
        since=dict(type="str"),
        until=dict(type="str"),
        latest_per_vm=dict(type="bool", default=False),
        verify=dict(type="bool", default=True),
    )
    return spec


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    harden_process()            # after the env fallback has filled the params: no core dumps, no passphrase for children
    try:
        result = run(module)
    except HyperVBackupError as err:
        module.fail_json(msg=str(err), **err.details())
    for warning in repository_memory.take_warnings():
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
