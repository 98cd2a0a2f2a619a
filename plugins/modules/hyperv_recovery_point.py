#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module hyperv_recovery_point: create, validate, convert, remove and clean up VM recovery points."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: hyperv_recovery_point
short_description: Manage Hyper-V recovery points (backup checkpoints) and RCT reference points of a VM
version_added: 0.1.0
description:
  - With O(state=present), chooses the backup method (RCT or host VSS), creates a recovery point of the VM, validates
    it (listed by the host, disks with paths and parent chains, the consistency asked for) and returns what a backup
    needs to read it, including per disk the change-tracking id of the previous reference point.
  - With O(state=absent), removes a recovery point by id (idempotent).
  - With O(state=reference_point), converts a completed RCT recovery point into a reference point and keeps only the
    newest O(keep_reference_points) reference points of the VM.
  - With O(state=cleaned) (or O(cleanup_stale=true) on O(state=present)), removes the recovery points this collection
    created in earlier runs that did not finish, and reports them.
  - With O(state=changes), returns the RCT change list of every disk of a recovery point since a reference point,
    paged through the whole disk; an invalid or missing change-tracking id is reported (C(changes_valid=false) and the
    reason), so that the backup falls back to a full backup.
  - Recovery points are named C(hyperv.backup:<run id>) so that stale ones are recognisable.
author:
  - hyperv.backup contributors (@hyperv-backup)
options:
  vm:
    description:
      - Name of the VM. One of O(vm) or O(vm_id) is required, except for O(state=cleaned) where neither means every VM.
    type: str
    version_added: 0.1.0
  vm_id:
    description: Id of the VM (lowercase GUID), instead of O(vm).
    type: str
    version_added: 0.1.0
  state:
    description:
      - C(present) creates a recovery point; C(absent) removes the one with O(id); C(reference_point) converts the one
        with O(id); C(cleaned) removes stale ones of ours; C(changes) returns the change list of the one with O(id).
    type: str
    choices: [present, absent, reference_point, cleaned, changes]
    default: present
    version_added: 0.1.0
  id:
    description: Id of the recovery point; required for O(state=absent), O(state=reference_point) and O(state=changes).
    type: str
    version_added: 0.1.0
  method:
    description:
      - C(auto) uses RCT when the host and VM meet the RCT rules, unless the VM's earlier recovery points came from
        VSS (see O(previous_method)); then VSS is kept until C(rct) is asked for.
      - C(rct) fails with the reasons when the VM cannot use RCT. Switching a VSS-backed VM to C(rct) makes the next
        backup a full RCT backup (RV(full_required)).
      - C(vss) uses the host's Volume Shadow Copy service with the Hyper-V writer.
    type: str
    choices: [auto, rct, vss]
    default: auto
    version_added: 0.1.0
  previous_method:
    description:
      - The method of the VM's earlier recovery points (usually the method of its latest backup in the repository).
      - When not set and O(repository) is given, the method of the VM's latest complete backup in the repository is used.
      - Not set and no O(repository) means the VM has no earlier backup.
    type: str
    choices: [rct, vss]
    version_added: 0.1.0
  repository:
    description:
      - The backup repository to look up O(previous_method) in (the method of the VM's latest complete backup).
      - A local directory path, or C(s3://bucket/prefix) for S3-compatible object storage. The other C(repository_*)
        options say how to open it.
      - Optional here, unlike in the backup modules. If the value is not specified in the task, the value of environment
        variable E(HYPERV_BACKUP_REPOSITORY) will be used instead.
    type: str
    required: false
    version_added: 0.1.0
  consistency:
    description:
      - C(application) quiesces the guest through its backup integration service and fails when that is impossible.
      - C(application_or_crash) falls back to a crash-consistent point and says so (RV(consistency_fallback), a warning).
    type: str
    choices: [application, application_or_crash]
    default: application
    version_added: 0.1.0
  run_id:
    description:
      - Identifier of the backup run; the recovery point is named C(hyperv.backup:<run_id>).
      - Generated (UTC time and a random suffix) when not given.
      - With O(state=cleaned) or O(cleanup_stale), the point of this run is kept.
    type: str
    version_added: 0.1.0
  cleanup_stale:
    description: With O(state=present), first remove the VM's recovery points left by earlier runs.
    type: bool
    default: false
    version_added: 0.1.0
  keep_reference_points:
    description: With O(state=reference_point), how many reference points to keep per VM (the newest ones).
    type: int
    default: 1
    version_added: 0.1.0
  reference_point_id:
    description: With O(state=changes), the reference point to compare against; the newest one when not given.
    type: str
    version_added: 0.1.0
extends_documentation_fragment:
  - hyperv.backup.connection
  - hyperv.backup.repository
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: The method is chosen and reported, and nothing is created, converted or removed.
  diff_mode:
    support: none
  platform:
    platforms: posix
    details: Runs on the controller or a backup proxy and reaches the Hyper-V host over PSRP, WinRM or the lab transport.
notes:
  - On Windows Server 2008 R2 without a hardware VSS provider, VMs on the same CSV (or host) are backed up one at a
    time; a recovery point is refused (category C(busy)) while another VM of the same queue holds one of ours.
seealso:
  - module: hyperv.backup.hyperv_host_info
  - module: hyperv.backup.hyperv_vss_ensure
"""

EXAMPLES = r"""
- name: Create a recovery point, removing leftovers of failed runs first
  hyperv.backup.hyperv_recovery_point:
    host: hv01.example.com
    vm: web01
    run_id: "{{ backup_run_id }}"
    consistency: application_or_crash
    cleanup_stale: true
  delegate_to: localhost
  register: point

- name: Page through the RCT change list since the previous reference point
  hyperv.backup.hyperv_recovery_point:
    host: hv01.example.com
    vm: web01
    state: changes
    id: "{{ point.recovery_point.id }}"
  delegate_to: localhost
  register: changes
  when: point.method == 'rct'

- name: Keep the point as the next incremental's reference point
  hyperv.backup.hyperv_recovery_point:
    host: hv01.example.com
    vm: web01
    state: reference_point
    id: "{{ point.recovery_point.id }}"
    keep_reference_points: 1
  delegate_to: localhost
  when: point.method == 'rct'

- name: Remove a VSS recovery point after the backup
  hyperv.backup.hyperv_recovery_point:
    host: hv01.example.com
    vm: web01
    state: absent
    id: "{{ point.recovery_point.id }}"
  delegate_to: localhost
  when: point.method == 'vss'
"""

RETURN = r"""
run_id:
  description: The run id the recovery point is tagged with.
  returned: when O(state=present) or O(state=cleaned)
  type: str
  sample: 20261125T061100Z-1a2b3c4d
method:
  description: The chosen method.
  returned: when O(state=present)
  type: str
  sample: rct
method_reason:
  description: Why that method was chosen.
  returned: when O(state=present)
  type: str
  sample: host and VM meet the RCT rules (Windows Server 2016+, configuration version 6.2+, VHDX disks); first backup ...
previous_method:
  description: The method of the VM's earlier backups used for the choice (null when it has none).
  returned: when O(state=present)
  type: str
  sample: vss
previous_method_source:
  description: Where RV(previous_method) came from (the option, the repository's latest backup, or nothing).
  returned: when O(state=present)
  type: str
  sample: latest backup 20261124T220000Z-web01 in the repository
full_required:
  description: Whether the backup of this point must be a full backup (no usable change-tracking chain).
  returned: when O(state=present)
  type: bool
  sample: true
rct:
  description: The RCT rules applied to the VM, with every reason it cannot use RCT.
  returned: when O(state=present)
  type: dict
  sample: {"eligible": true, "reasons": []}
serialization_key:
  description: The queue the VM's backups share (Windows Server 2008 R2), or null.
  returned: when O(state=present)
  type: str
  sample: null
consistency:
  description: The consistency the recovery point achieved (null in check mode).
  returned: when O(state=present)
  type: str
  sample: application
consistency_fallback:
  description: Whether the point fell back to crash consistency under O(consistency=application_or_crash).
  returned: when O(state=present)
  type: bool
  sample: false
recovery_point:
  description: The validated recovery point (null in check mode).
  returned: when O(state=present)
  type: dict
  contains:
    id:
      description: Recovery point id.
      type: str
      sample: 1f2e3d4c-0000-4000-8000-000000000001
    name:
      description: Recovery point name, C(hyperv.backup:<run id>).
      type: str
      sample: hyperv.backup:20261125T061100Z-1a2b3c4d
    created:
      description: Creation time (ISO 8601 UTC).
      type: str
      sample: "2026-11-25T06:11:00.000000Z"
    vm_id:
      description: Id of the VM.
      type: str
      sample: 9b0c1e8e-4a55-4d7e-9d1c-5f4f2d3b7a10
    vm_name:
      description: Name of the VM.
      type: str
      sample: web01
    method:
      description: How the point was made, C(rct) (a recovery checkpoint) or C(vss) (a host shadow copy).
      type: str
      sample: rct
    consistency:
      description: The consistency achieved, C(application) or C(crash).
      type: str
      sample: application
    consistency_requested:
      description: The O(consistency) asked for.
      type: str
      sample: application
    consistency_fallback:
      description: Whether the point fell back to crash consistency.
      type: bool
      sample: false
    warning:
      description: Why the point is only crash-consistent (null when it is not).
      type: str
      sample: null
    configuration:
      description: The VM configuration files captured with the point (C(files)), for a restore that registers the VM.
      type: dict
      sample: {"files": ["C:\\Hyper-V\\9b0c...\\Virtual Machines\\9b0c....vmcx"]}
    disks:
      description:
        - Per disk, the frozen file to read (C(path)), C(virtual_size), C(disk_id), C(parent_chain), and for RCT the
          C(previous_rct_id) and C(reference_point_id) of the newest reference point that tracked that disk.
      type: list
      elements: dict
      sample: [{"disk_id": "5f0b...", "path": "D:\\VMs\\web01\\web01.vhdx", "virtual_size": 42949672960,
                "parent_chain": [], "previous_rct_id": "rctX:5f0b...:12", "reference_point_id": "77aa..."}]
  sample: {"id": "1f2e...", "name": "hyperv.backup:r1", "method": "rct", "consistency": "application", "disks": []}
stale_removed:
  description: Stale recovery points of ours that were (or, in check mode, would be) removed.
  returned: when O(state=present) or O(state=cleaned)
  type: list
  elements: dict
  sample: [{"id": "0a1b...", "name": "hyperv.backup:20261124T220000Z-9f8e7d6c", "vm": "web01", "removed": true}]
id:
  description: The id of the recovery point O(state=absent) removed (or found already gone).
  returned: when O(state=absent)
  type: str
  sample: 1f2e3d4c-0000-4000-8000-000000000001
removed:
  description: Whether O(state=absent) removed the recovery point.
  returned: when O(state=absent)
  type: bool
  sample: true
reference_point:
  description: The reference point the recovery point became (null in check mode).
  returned: when O(state=reference_point)
  type: dict
  sample: {"id": "77aa...", "vm_id": "9b0c...", "consistency": "application", "rct_ids": {"5f0b...": "rctX:5f0b...:12"}}
removed_reference_points:
  description: Ids of the older reference points removed to keep O(keep_reference_points).
  returned: when O(state=reference_point)
  type: list
  elements: str
  sample: ["66bb..."]
kept_reference_points:
  description:
    - Older reference points of ours that O(keep_reference_points) would remove but that stay, each with the C(reason)
      (another repository's latest backup is based on it, or it shares an RCT id with a point that is kept).
  returned: when O(state=reference_point)
  type: list
  elements: dict
  sample: [{"id": "66bb...", "reason": "the latest backup in repository 4f3e... is based on it"}]
recovery_point_id:
  description: The recovery point the changes were listed for (O(id)).
  returned: when O(state=changes)
  type: str
  sample: 1f2e3d4c-0000-4000-8000-000000000001
changes_valid:
  description: Whether every disk's change list can be trusted; false means the backup must be full.
  returned: when O(state=changes)
  type: bool
  sample: true
reference_point_id:
  description: The reference point the changes are counted from (null when the VM has none).
  returned: when O(state=changes)
  type: str
  sample: 77aa...
disks:
  description: Per disk, C(changes_valid), C(reason), C(windows_error), merged and sorted C(ranges) as [offset, length], C(changed_bytes).
  returned: when O(state=changes)
  type: list
  elements: dict
  sample: [{"disk_id": "5f0b...", "path": "D:\\VMs\\web01\\web01.vhdx", "virtual_size": 42949672960, "changes_valid": true,
            "reason": null, "windows_error": null, "ranges": [[0, 65536]], "changed_bytes": 65536}]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hyperv.backup.plugins.module_utils.host.connection import HostSession, connection_argument_spec
from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError, HyperVBackupError
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import recovery_points as rp
from ansible_collections.hyperv.backup.plugins.module_utils.repository import vm_lineage
from ansible_collections.hyperv.backup.plugins.module_utils.repository.process_hardening import harden_process
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_options import open_repository, repository_argument_spec


def _find_vm(session, params, vms):
    if params["vm_id"]:
        wanted = [vm for vm in vms if vm["id"] == params["vm_id"].lower()]
        label = "id %s" % params["vm_id"]
    else:
        wanted = [vm for vm in vms if vm["name"] == params["vm"]]
        label = "name %s" % params["vm"]
    if not wanted:
        raise HostOperationError(session.host, "get_vms", "not_found", "no VM with %s" % label,
                                 hint="The host has: %s." % ", ".join(sorted(vm["name"] for vm in vms)))
    return wanted[0]


def previous_method_of(params, vm, host, host_facts=None):
    """(method, source): the option when given, else the method of the latest backup of this VM (its lineage: another
    host's VM reporting the same id is another VM) in the repository."""
    if params["previous_method"]:
        return params["previous_method"], "previous_method option"
    if not params["repository"]:
        return None, "no previous_method and no repository given: treated as the VM's first backup"
    # read only: the catalog cache is not rewritten by a listing here (check mode writes nothing)
    repo = open_repository(params).read_only_view()
    known = [r for r in repo.list_backups(vm=vm["id"]) if r.vm_id == vm["id"] and r.state == "complete"]
    cluster = (host_facts or {}).get("cluster")
    record = vm_lineage.choose_lineage(known, vm, host, cluster.get("name") if isinstance(cluster, dict) else None).latest
    if record is None:
        return None, "the repository has no complete backup of VM %s" % vm["name"]
    return record.method, "latest backup %s in the repository" % record.backup_id


def present(module, session):
    params = module.params
    run_id = params["run_id"] or rp.new_run_id()
    host_facts = session.run("get_host_info")
    vms = session.run("get_vms")
    vm = _find_vm(session, params, vms)
    stale = []
    if params["cleanup_stale"]:
        stale = [dict(p, vm=vm["name"]) for p in rp.clean_stale(session, vm["id"], keep_run_id=run_id, check_mode=module.check_mode)]
        vms = session.run("get_vms")
    previous_method, previous_source = previous_method_of(params, vm, session.host, host_facts)
    eligibility, decision = rp.decide_method(host_facts, vm, params["method"], previous_method)
    queue = rp.check_serialization(session, host_facts, _find_vm(session, params, vms), vms)
    result = dict(changed=True, run_id=run_id, method=decision.method, method_reason=decision.reason,
                  full_required=decision.full_required, rct=eligibility.to_dict(),
                  previous_method=previous_method, previous_method_source=previous_source,
                  serialization_key=queue["serialization_key"], stale_removed=stale,
                  recovery_point=None, consistency=None, consistency_fallback=False)
    if module.check_mode:
        return result
    point = rp.create_recovery_point(session, vm, decision.method, params["consistency"], run_id,
                                     local_paths=params["transport"] == "lab")
    rp.detach_lease(session, vm["id"], run_id)    # a later task hands the point back: the lease outlives this process
    if point["warning"]:
        module.warn(point["warning"])
    result.update(recovery_point=point, consistency=point["consistency"], consistency_fallback=point["consistency_fallback"])
    return result


def cleaned(module, session):
    params = module.params
    vms = session.run("get_vms")
    targets = [_find_vm(session, params, vms)] if (params["vm"] or params["vm_id"]) else vms
    stale = []
    for vm in targets:
        removed = rp.clean_stale(session, vm["id"], keep_run_id=params["run_id"], check_mode=module.check_mode)
        stale.extend(dict(p, vm=vm["name"]) for p in removed)
    return dict(changed=bool(stale), run_id=params["run_id"], stale_removed=stale)


def main():
    argument_spec = connection_argument_spec()
    argument_spec.update(repository_argument_spec())
    # only used to look up previous_method, so optional here (the backup modules require it)
    argument_spec["repository"] = dict(argument_spec["repository"], required=False)
    argument_spec.update(
        vm=dict(type="str"),
        vm_id=dict(type="str"),
        state=dict(type="str", default="present", choices=["present", "absent", "reference_point", "cleaned", "changes"]),
        id=dict(type="str"),
        method=dict(type="str", default="auto", choices=["auto", "rct", "vss"]),
        previous_method=dict(type="str", choices=["rct", "vss"]),
        consistency=dict(type="str", default="application", choices=list(rp.CONSISTENCY_CHOICES)),
        run_id=dict(type="str"),
        cleanup_stale=dict(type="bool", default=False),
        keep_reference_points=dict(type="int", default=1),
        reference_point_id=dict(type="str"),
    )
    module = AnsibleModule(
        argument_spec=argument_spec,
        supports_check_mode=True,
        mutually_exclusive=[("vm", "vm_id")],
        required_if=[("state", "absent", ("id",)), ("state", "reference_point", ("id",)), ("state", "changes", ("id",)),
                     ("state", "present", ("vm", "vm_id"), True), ("state", "absent", ("vm", "vm_id"), True),
                     ("state", "reference_point", ("vm", "vm_id"), True), ("state", "changes", ("vm", "vm_id"), True)],
    )
    harden_process()            # keys in memory: no core dumps; the passphrase variable is not passed to children
    params = module.params
    try:
        with HostSession.from_module_params(params) as session:
            state = params["state"]
            if state == "present":
                result = present(module, session)
            elif state == "cleaned":
                result = cleaned(module, session)
            else:
                vm = _find_vm(session, params, session.run("get_vms"))
                if state == "absent":
                    result = rp.remove_recovery_point(session, vm["id"], params["id"], check_mode=module.check_mode)
                elif state == "reference_point":
                    result = rp.convert_to_reference_point(session, vm["id"], params["id"], params["keep_reference_points"],
                                                           check_mode=module.check_mode)
                else:
                    result = dict(rp.changes_since_reference(session, vm["id"], params["id"], params["reference_point_id"]),
                                  changed=False)
    except HyperVBackupError as err:
        module.fail_json(msg=str(err), **err.details())
    module.exit_json(**result)


if __name__ == "__main__":
    main()
