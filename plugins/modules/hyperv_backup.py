#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module hyperv_backup: back up one Hyper-V VM (full or incremental) into the backup repository."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: hyperv_backup
short_description: Back up a Hyper-V VM into the backup repository, full or incremental
version_added: 0.1.0
description:
  - Chooses the method (RCT or host VSS; a VM keeps the method of its latest backup in the repository unless
    O(method) says otherwise), creates a recovery point (or takes the one given by O(recovery_point_id)), decides
    full or incremental and says why, estimates the bytes to read and write, copies the changed or allocated chunks
    of every disk into the repository, commits the backup, and hands the recovery point back (converted to an RCT
    reference point for the next incremental, or removed for VSS).
  - The first backup of a VM is full; every later one is incremental. A full backup is taken (and RV(type_reason)
    says why) when the repository has no usable parent, the parent's RCT reference point or change tracking id is
    gone or invalid, the disk set or a disk's size changed, or the method changed.
  - An RCT incremental reads only the chunks the change list touches; a VSS incremental reads every allocated
    chunk but stores only the chunks that differ from the parent.
  - With check mode only the estimate is returned (from the live disks); no recovery point is created and nothing
    is written, in the repository not even its catalog cache.
  - A failure at any step leaves no visible backup and removes the recovery point.
  - A recovery point removed during the copy (by another run, an administrator or another product), or a VSS point
    whose shadow copy was deleted meanwhile, fails the backup before it is committed, since the data read may mix the
    point in time with later writes.
  - Runs on the backup proxy that holds (or reaches) the repository and can read the host's disk files (the lab
    host's files directly, a mounted share through O(path_map), or SMB with O(smb_access)).
author:
  - hyperv.backup contributors (@hyperv-backup)
extends_documentation_fragment:
  - hyperv.backup.connection
  - hyperv.backup.repository
  - ansible.builtin.action_common_attributes
options:
  vm:
    description: Name of the VM. One of O(vm) or O(vm_id) is required.
    type: str
  vm_id:
    description: Id of the VM (GUID), instead of O(vm).
    type: str
  method:
    description:
      - C(auto) uses RCT when the host and VM meet the RCT rules, unless the VM's latest backup used VSS.
      - C(rct) or C(vss) force a method; switching makes this backup full.
    type: str
    choices: [auto, rct, vss]
    default: auto
  type:
    description:
      - C(auto) is full for the first backup and when no incremental is possible, else incremental.
      - C(full) always copies every allocated chunk. C(incremental) fails, with the reason, when only a full is possible.
    type: str
    choices: [auto, full, incremental]
    default: auto
  consistency:
    description: C(application) fails when the guest cannot be quiesced; C(application_or_crash) falls back to crash consistency.
    type: str
    choices: [application, application_or_crash]
    default: application
  recovery_point_id:
    description: Back up this existing recovery point (from M(hyperv.backup.hyperv_recovery_point)) instead of creating one.
    type: str
  run_id:
    description:
      - Id of the workflow run this backup belongs to. It names the recovery point (C(hyperv.backup:<run_id>)), is stored
        in the backup's metadata and groups the run's backups in M(hyperv.backup.hyperv_backup_report).
      - When not given, the environment variable E(HYPERV_BACKUP_RUN_ID) if set, else C(awx-job-<id>) when the module
        runs inside an AWX / Automation Controller job (E(JOB_ID), seen by modules that run on the controller), else empty;
        the backup then belongs to no run (reports group it by its day) and the recovery point gets a generated name.
      - The C(hyperv.backup.hyperv_backup) role passes one per run.
      - Letters, digits, C(.), C(_), C(:) and C(-), at most 128 characters.
    type: str
  exclude_disks:
    description: Disks not to back up, by path, file name or controller slot (C(SCSI 0:1) or C(scsi0-1)).
    type: list
    elements: str
    default: []
  keep_reference_points:
    description: RCT reference points to keep per VM after the backup (the newest is what the next incremental starts from).
    type: int
    default: 1
  read_rate_limit:
    description: Cap on the read rate from the host in bytes per second (0 or unset means no cap; negative is refused).
    type: int
  progress_file:
    description:
      - Path of a file that gets a JSON line with percent, bytes and rate at most once a second while copying (and a
        final line). Useful with C(async) (poll it with M(ansible.builtin.slurp)).
    type: path
  path_map:
    description: Map of host path prefixes (Windows) to local directories on the proxy where that storage is mounted.
    type: dict
  smb_access:
    description: Read disk files that are not local or mapped over SMB with the connection credentials.
    type: bool
    default: false
  workers:
    description: Copy threads (default number of cores + 2).
    type: int
attributes:
  check_mode:
    support: full
    details:
      - The method and type are chosen and the data is estimated (RV(estimate)); no recovery point is created and nothing
        is written to the repository.
  diff_mode:
    support: none
    details: A backup adds data to the repository; it changes no setting that a diff could show.
  platform:
    platforms: posix
    details: Runs on the controller or a backup proxy and reaches the Hyper-V host over PSRP, WinRM or the lab transport.
notes:
  - Supports C(async); the progress file shows how far a running backup is.
  - "For tests only: the environment variable E(HYPERV_BACKUP_FAULT_AFTER_CHUNKS) makes the copy fail after that many chunks."
seealso:
  - module: hyperv.backup.hyperv_vss_ensure
  - module: hyperv.backup.hyperv_recovery_point
  - module: hyperv.backup.hyperv_restore
  - module: hyperv.backup.hyperv_backup_repository
  - module: hyperv.backup.hyperv_backup_info
"""

EXAMPLES = r"""
- name: Back up web01 (full the first time, incremental afterwards)
  hyperv.backup.hyperv_backup:
    host: hv01
    vm: web01
    repository: /srv/backups
  delegate_to: backup-proxy
  register: backup

- name: Estimate only
  hyperv.backup.hyperv_backup:
    host: hv01
    vm: web01
    repository: /srv/backups
  check_mode: true

- name: Back up as part of a named run (hyperv_backup_report groups backups by run_id)
  hyperv.backup.hyperv_backup:
    host: hv01
    vm: web01
    repository: /srv/backups
    run_id: "nightly-{{ now(utc=true, fmt='%Y%m%d') }}"
    consistency: application_or_crash
  delegate_to: backup-proxy

- name: Read a mounted share instead of SMB, capped at 200 MiB/s
  hyperv.backup.hyperv_backup:
    host: hv01
    vm: web01
    repository: /srv/backups
    path_map:
      'C:\ClusterStorage\Volume1': /mnt/csv1
    read_rate_limit: 209715200
  delegate_to: backup-proxy

- name: Long backup in the background with a progress file
  hyperv.backup.hyperv_backup:
    host: hv01
    vm: db01
    repository: /srv/backups
    exclude_disks: ['SCSI 0:2']
    read_rate_limit: 209715200
    progress_file: /var/tmp/db01.progress
  async: 7200
  poll: 0
"""

RETURN = r"""
backup_id:
  description: Id of the committed backup.
  returned: success, not in check mode
  type: str
type:
  description: C(full) or C(incremental).
  returned: always
  type: str
type_reason:
  description: Why this type was chosen.
  returned: always
  type: str
method:
  description: C(rct) or C(vss).
  returned: always
  type: str
method_reason:
  description: Why this method was chosen.
  returned: always
  type: str
run_id:
  description: The run id (given, or from the environment; empty when there is none), also stored in the backup's metadata.
  returned: always
  type: str
  sample: 20261125T071700Z-3f2a1b9c
vm:
  description: Name of the VM.
  returned: always
  type: str
vm_id:
  description: Id of the VM.
  returned: always
  type: str
rct:
  description: Whether the host and VM meet the RCT rules, with the reasons (see M(hyperv.backup.hyperv_host_info)).
  returned: always
  type: dict
previous_backup_id:
  description:
    - The VM's latest complete backup in the repository before this one (null for the first), latest in the
      repository's commit order (not by a clock), of this VM's lineage.
  returned: always
  type: str
lineage:
  description:
    - Which VM the backup is of in the repository. The VM id; or C(<vm id>@<host>) when another VM with the same id
      (another host, other virtual disks, such as a copy registered without a new id) was backed up before. A VM that moved
      (same cluster, or the same virtual disks) keeps its lineage. Retention counts per lineage.
  returned: always
  type: str
  sample: 0b7e5a1c-3f7e-4a8e-9f7e-1d2c3b4a5f60
lineage_reason:
  description: Why the backup continues (or starts) that lineage, e.g. C(same host hv01) or C(moved from host hv01 with its disks).
  returned: always
  type: str
excluded_disks:
  description: Keys (controller slots) of the disks left out by O(exclude_disks).
  returned: always
  type: list
  elements: str
recovery_point_id:
  description: Id of the recovery point (checkpoint or shadow copy) that was backed up.
  returned: success, not in check mode
  type: str
consistency_fallback:
  description: True when C(application) consistency was not possible and C(application_or_crash) fell back to crash consistency.
  returned: success, not in check mode
  type: bool
recovery_point_handled:
  description: What happened to the recovery point after the commit (C(converted to a reference point) or C(removed)).
  returned: success, not in check mode, unless handing it back failed (then a warning says so)
  type: str
reference_point:
  description: The RCT reference point the recovery point became (the next incremental starts from it).
  returned: success with method C(rct), not in check mode
  type: dict
check_mode_note:
  description: Says that the estimate comes from the live disks and that nothing was created or written.
  returned: check mode
  type: str
parent_backup_id:
  description: The backup an incremental builds on.
  returned: always
  type: str
consistency:
  description: The consistency level achieved (C(application) or C(crash)); also recorded in the backup's manifest.
  returned: success, not in check mode
  type: str
estimate:
  description: Bytes to read and expected bytes to write, per disk, from the BAT (full) or the RCT change list.
  returned: always
  type: dict
bytes_estimated:
  description: Estimated bytes to read.
  returned: success, not in check mode
  type: int
bytes_read:
  description: Bytes read from the host.
  returned: success, not in check mode
  type: int
bytes_write_estimated:
  description: Expected bytes to write (chunks to read x the parent's compression ratio; an upper bound for a VSS incremental).
  returned: success, not in check mode
  type: int
bytes_new:
  description: Bytes of new chunks (not already in the repository), before compression.
  returned: success, not in check mode
  type: int
bytes_written:
  description: Bytes written to the repository (compressed, new chunks only).
  returned: success, not in check mode
  type: int
dedup_ratio:
  description: Bytes read per new byte stored before compression.
  returned: success, not in check mode
  type: float
compression_ratio:
  description: New bytes per byte written.
  returned: success, not in check mode
  type: float
duration_seconds:
  description: Duration of the copy.
  returned: success, not in check mode
  type: float
bytes_per_second:
  description: Read throughput of the copy.
  returned: success, not in check mode
  type: int
read_rate_waited_seconds:
  description: Time the copy waited for O(read_rate_limit).
  returned: success, not in check mode
  type: float
disks:
  description: Per disk the same figures, with its key (controller slot), path and chunk counts.
  returned: success, not in check mode
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hyperv.backup.plugins.module_utils.backup.backup_engine import CopyOptions, run_backup
from ansible_collections.hyperv.backup.plugins.module_utils.host.connection import HostSession, connection_argument_spec
from ansible_collections.hyperv.backup.plugins.module_utils.errors import HyperVBackupError
from ansible_collections.hyperv.backup.plugins.module_utils.backup.progress import ProgressReporter
from ansible_collections.hyperv.backup.plugins.module_utils.repository.process_hardening import harden_process
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_options import open_repository, repository_argument_spec


def main():
    argument_spec = connection_argument_spec()
    argument_spec.update(repository_argument_spec())
    argument_spec.update(
        vm=dict(type="str"),
        vm_id=dict(type="str"),
        method=dict(type="str", default="auto", choices=["auto", "rct", "vss"]),
        type=dict(type="str", default="auto", choices=["auto", "full", "incremental"]),
        consistency=dict(type="str", default="application", choices=["application", "application_or_crash"]),
        recovery_point_id=dict(type="str"),
        run_id=dict(type="str"),
        exclude_disks=dict(type="list", elements="str", default=[]),
        keep_reference_points=dict(type="int", default=1),
        read_rate_limit=dict(type="int"),
        progress_file=dict(type="path"),
        path_map=dict(type="dict"),
        smb_access=dict(type="bool", default=False),
        workers=dict(type="int"),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           mutually_exclusive=[("vm", "vm_id")], required_one_of=[("vm", "vm_id")])
    harden_process()            # keys in memory: no core dumps; the passphrase variable is not passed to children
    params = module.params
    try:
        repo = open_repository(params)
        options = CopyOptions(workers=params["workers"], read_rate_limit=params["read_rate_limit"],
                              progress=None if module.check_mode else ProgressReporter(params["progress_file"]),
                              credentials=(params["username"], params["password"]), path_map=params["path_map"],
                              smb=params["smb_access"])
        with HostSession.from_module_params(params) as session:
            result = run_backup(session, repo, params, check_mode=module.check_mode, options=options)
    except HyperVBackupError as err:
        module.fail_json(msg=str(err), **err.details())
    for warning in result.pop("warnings", []):
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
