#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module hyperv_backup_info: list the backups in the repository catalog."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: hyperv_backup_info
short_description: List Hyper-V backups in the backup repository
version_added: 0.1.0
description:
  - Lists the backups in the repository catalog, newest last, with per-disk sizes, type, method, consistency and state.
  - The catalog is brought up to date from the backup records first, so a lost or stale catalog is rebuilt.
  - Runs on the controller or the backup proxy that holds the repository; use C(delegate_to).
author:
  - hyperv.backup contributors (@hyperv-backup)
extends_documentation_fragment:
  - hyperv.backup.repository
  - ansible.builtin.action_common_attributes
options:
  vm_name:
    description: Only backups of the VM with this name.
    type: str
  vm_id:
    description: Only backups of the VM with this id (GUID).
    type: str
  source_host:
    description: Only backups taken from this Hyper-V host (case-insensitive).
    type: str
  since:
    description: Only backups created at or after this time (ISO 8601, for example C(2026-11-01) or C(2026-11-01T00:00:00Z)).
    type: str
  until:
    description: Only backups created at or before this time (ISO 8601).
    type: str
  backup_id:
    description: Only this backup.
    type: str
  include_in_progress:
    description: Also list backups being written now (state C(in_progress)) and ones whose writer died (C(abandoned)).
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    details: The module only reads.
  diff_mode:
    support: none
    details: The module only reads.
  platform:
    platforms: posix
    details: Runs on the controller or the backup proxy that reaches the repository; it never contacts a Hyper-V host.
seealso:
  - module: hyperv.backup.hyperv_backup
  - module: hyperv.backup.hyperv_restore
  - module: hyperv.backup.hyperv_backup_repository
  - module: hyperv.backup.hyperv_backup_report
"""

EXAMPLES = r"""
- name: List the backups of web01 from this month
  hyperv.backup.hyperv_backup_info:
    repository: /srv/hyperv-backup
    repository_passphrase: "{{ vault_repository_passphrase }}"
    vm_name: web01
    since: "2026-11-01"
  delegate_to: backup-proxy
  register: web01_backups

- name: Show the newest one
  ansible.builtin.debug:
    msg: "{{ web01_backups.backups | last }}"
"""

RETURN = r"""
backups:
  description: The matching backups, oldest first.
  returned: always
  type: list
  elements: dict
  contains:
    backup_id:
      description: Id of the backup (sortable by time).
      type: str
      sample: 20261125T061911Z-d083c6579554
    vm_id:
      description: Id of the VM.
      type: str
    vm_name:
      description: Name of the VM when it was backed up.
      type: str
    host:
      description: Hyper-V host the backup was taken from.
      type: str
    created:
      description: When the backup started (ISO 8601 UTC).
      type: str
    completed:
      description: When it was committed (ISO 8601 UTC).
      type: str
    type:
      description: C(full) or C(incremental).
      type: str
    method:
      description: How it was read (C(rct) or C(vss)).
      type: str
    consistency:
      description: C(application) or C(crash).
      type: str
    state:
      description: C(complete), C(damaged) (the last verify found problems), C(in_progress) or C(abandoned).
      type: str
    parent_backup_id:
      description: The backup an incremental was based on.
      type: str
    sequence:
      description:
        - The backup's place in the repository's commit order (larger is newer); the list is sorted by it, not by a
          clock. Backups written before version 1.1 of this collection have none and come first.
      type: int
    lineage:
      description:
        - Which VM the backup is of. The VM id, or C(<vm id>@<host>) for a second VM that reports an id the repository
          already knows from another host with other disks (a copy registered without a new id). A VM that moves
          (live migration, failover, storage migration) keeps its lineage.
      type: str
    virtual_size:
      description: Sum of the virtual sizes of the disks, in bytes.
      type: int
    stored_bytes:
      description: Bytes this backup added to the repository (after dedup and compression).
      type: int
    disks:
      description: Per disk C(disk_key), C(virtual_size), C(chunk_count), C(stored_bytes), C(referenced_bytes), C(rct_id).
      type: list
      elements: dict
    bytes_read:
      description: Bytes read from the host for this backup (null for a backup still being written).
      type: int
      sample: 1073741824
    duration_seconds:
      description: How long the copy took, in seconds (null for a backup still being written).
      type: float
      sample: 12.5
    stats:
      description:
        - The backup's counters, summed over its disks - C(bytes_read), C(new_bytes), C(stored_bytes), C(new_chunks),
          C(dedup_chunks), C(reused_chunks), C(zero_chunks), C(duration_seconds), C(bytes_per_second) and others.
      type: dict
      sample: {"bytes_read": 1073741824, "stored_bytes": 201326592, "new_chunks": 190, "duration_seconds": 12.5}
    metadata:
      description:
        - What the backup run recorded with the backup - C(run_id), C(recovery_point) (its C(id), C(created) time, which
          retention counts by, C(method) and C(consistency)), the VM's C(configuration), C(type_reason), C(method_reason),
          the C(estimate), C(excluded_disks) and C(host_cluster).
      type: dict
      sample: {"run_id": "awx-job-77", "recovery_point": {"id": "1f2e...", "created": "2026-11-25T06:11:00Z", "method": "rct"}}
    retain_until:
      description: Until when (epoch seconds) S3 Object Lock keeps the backup's objects; null without Object Lock.
      type: float
      sample: null
    format:
      description: The repository format version the backup was written in (see docs/repository.md).
      type: int
      sample: 4
    verify:
      description: The result of the last O(hyperv.backup.hyperv_backup_repository#module:state=verified) run that checked this backup, when one did.
      type: dict
      sample: {"ok": true, "verified": "2026-11-26T02:00:00Z", "problems": []}
vms:
  description:
    - Per VM in the result (per lineage, see RV(backups[].lineage)), its id, name, lineage, number of backups, newest
      backup, the host of the newest backup (C(host)) and every host it was backed up from (C(hosts)).
    - Two entries with one C(vm_id) are two VMs that report the same id from two hosts.
  returned: always
  type: list
  elements: dict
  sample: [{"vm_id": "0b7e...", "vm_name": "web01", "lineage": "0b7e...", "backups": 14, "host": "hv01", "hosts": ["hv01"],
            "latest_backup_id": "20261125T061911Z-d083c6579554"}]
repository:
  description: Facts about the repository (no secrets).
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.hyperv.backup.plugins.module_utils.errors import HyperVBackupError
from ansible_collections.hyperv.backup.plugins.module_utils.repository import repository_crypto, repository_memory
from ansible_collections.hyperv.backup.plugins.module_utils.repository.process_hardening import harden_process
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import check_backup_id
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_options import (
    backup_result, open_repository, repository_argument_spec,
)


def run(params):
    repo = open_repository(params)
    if params["backup_id"]:
        check_backup_id(params["backup_id"], repo.location)      # a typo fails clearly instead of listing nothing
    records = repo.list_backups(host=params["source_host"], since=params["since"], until=params["until"],
                                include_in_progress=params["include_in_progress"])
    records = [r for r in records
               if (not params["vm_name"] or r.vm_name == params["vm_name"])
               and (not params["vm_id"] or (r.vm_id or "").lower() == params["vm_id"].lower().strip("{}"))
               and (not params["backup_id"] or r.backup_id == params["backup_id"])]
    vms = {}
    # one entry per VM lineage: two VMs reporting the same id from two hosts are two VMs (issue 12, point 2)
    for record in records:
        entry = vms.setdefault(record.lineage, {"vm_id": record.vm_id, "vm_name": record.vm_name, "lineage": record.lineage,
                                                "backups": 0, "hosts": []})
        entry["backups"] += 1
        entry["latest_backup_id"] = record.backup_id
        entry["host"] = record.host
        if record.host and record.host not in entry["hosts"]:
            entry["hosts"].append(record.host)
    return {"changed": False, "backups": [backup_result(r) for r in records], "vms": list(vms.values()),
            "repository": repo.describe()}


def main():
    spec = repository_argument_spec()
    spec.update(
        vm_name=dict(type="str"),
        vm_id=dict(type="str"),
        source_host=dict(type="str"),
        since=dict(type="str"),
        until=dict(type="str"),
        backup_id=dict(type="str"),
        include_in_progress=dict(type="bool", default=False),
    )
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    harden_process()            # keys in memory: no core dumps; the passphrase variable is not passed to children
    for name, present, error in (("blake3", repository_crypto.HAS_BLAKE3, repository_crypto.BLAKE3_IMPORT_ERROR),
                                 ("zstandard", repository_crypto.HAS_ZSTANDARD, repository_crypto.ZSTANDARD_IMPORT_ERROR)):
        if not present:
            module.fail_json(msg=missing_required_lib(name), exception=error)
    try:
        result = run(module.params)
        for warning in repository_memory.take_warnings():   # replay or deletion noticed by the listing (issue 13, point 5)
            module.warn(warning)
        module.exit_json(**result)
    except HyperVBackupError as err:
        module.fail_json(msg=str(err), **err.details())


if __name__ == "__main__":
    main()
