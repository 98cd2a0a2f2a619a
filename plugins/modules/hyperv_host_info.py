#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module hyperv_host_info: what a Hyper-V host and its VMs look like to a backup."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: hyperv_host_info
short_description: Gather Hyper-V host and VM facts that decide how VMs are backed up
version_added: 0.1.0
description:
  - Returns the host's Windows version and build, its cluster and functional level, its Cluster Shared Volumes,
    its VSS providers and the state of the Hyper-V VSS writer and the Volume Shadow Copy service.
  - Returns every VM (or those named in O(vms)) with configuration version, state, disks, integration services,
    checkpoints and reference points, plus whether Resilient Change Tracking (RCT) can be used and every reason
    why not, the serialization key of its backups, and the pre-flight checks of the VM.
  - RCT needs Windows Server 2016 (build 14393) or later, VM configuration version 6.2 or later, cluster functional
    level 9 or higher for clustered VMs, and VHDX disks only.
  - Never changes anything on the host.
author:
  - hyperv.backup contributors (@hyperv-backup)
options:
  vms:
    description:
      - Names of the VMs to describe. All VMs of the host when not given.
      - A name that matches no VM is an error.
    type: list
    elements: str
    version_added: 0.1.0
extends_documentation_fragment:
  - hyperv.backup.connection
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: The module never changes anything, so check mode returns the same facts.
  diff_mode:
    support: none
  platform:
    platforms: posix
    details: Runs on the controller or a backup proxy and reaches the Hyper-V host over PSRP, WinRM or the lab transport.
notes:
  - Pre-flight checks with C(blocking=true) that are not C(ok) mean the VM cannot be backed up online until they are
    fixed; C(hyperv.backup.hyperv_vss_ensure) fixes the VSS service and can enable the backup integration service.
seealso:
  - module: hyperv.backup.hyperv_vss_ensure
  - module: hyperv.backup.hyperv_recovery_point
"""

EXAMPLES = r"""
- name: Describe a Hyper-V host and all its VMs
  hyperv.backup.hyperv_host_info:
    host: hv01.example.com
    username: EXAMPLE\backup
    password: "{{ vault_backup_password }}"
  delegate_to: localhost
  register: hv01

- name: Show which VMs cannot use RCT and why
  ansible.builtin.debug:
    msg: "{{ item.name }}: {{ item.rct.reasons | join('; ') }}"
  loop: "{{ hv01.vms | rejectattr('rct.eligible') }}"
  loop_control:
    label: "{{ item.name }}"

- name: Describe two VMs of a lab host
  hyperv.backup.hyperv_host_info:
    transport: lab
    lab_directory: /var/tmp/hyperv-lab
    host: lab-2016
    vms: [web01, sql01]
  register: lab_facts
"""

RETURN = r"""
host:
  description: Facts of the host.
  returned: always
  type: dict
  contains:
    computer_name:
      description: The host's computer name.
      type: str
      sample: HV01
    os_name:
      description: The Windows edition.
      type: str
      sample: Microsoft Windows Server 2022 Datacenter
    os_version:
      description: The Windows version.
      type: str
      sample: 10.0.20348
    os_build:
      description: The Windows build number.
      type: int
      sample: 20348
    cluster:
      description: The failover cluster the host belongs to, or null.
      type: dict
      sample: {"name": "HVCLUSTER", "functional_level": 11}
    csvs:
      description: Cluster Shared Volumes.
      type: list
      elements: dict
      sample: [{"name": "Cluster Disk 1", "path": "C:\\ClusterStorage\\Volume1"}]
    vss_providers:
      description: VSS providers installed on the host.
      type: list
      elements: dict
      sample: [{"name": "Microsoft Software Shadow Copy provider 1.0", "id": "{b5946137-7b9f-4925-af80-51abd60b20d5}",
                "type": "software"}]
    hyperv_vss_writer:
      description: The Microsoft Hyper-V VSS Writer and its state.
      type: dict
      sample: {"name": "Microsoft Hyper-V VSS Writer", "id": "{66841cd4-6ded-4f4b-8f17-fd23f8ddc3de}", "state": "[1] Stable",
               "last_error": "No error"}
  sample: {"computer_name": "HV01", "os_build": 20348, "cluster": null, "csvs": []}
vss_service:
  description: The Volume Shadow Copy service (it is a manual-start service, so Stopped is normal when idle).
  returned: always
  type: dict
  sample: {"name": "vss", "display_name": "Volume Shadow Copy", "status": "Stopped", "start_type": "Manual"}
preflight:
  description: Host-level pre-flight checks (VSS service and Hyper-V VSS writer).
  returned: always
  type: list
  elements: dict
  sample: [{"check": "vss_writer", "vm": null, "ok": true, "blocking": true, "message": "Hyper-V VSS writer is [1] Stable"}]
vms:
  description: The VMs, sorted by name.
  returned: always
  type: list
  elements: dict
  contains:
    id:
      description: VM id (lowercase GUID).
      type: str
      sample: 9b0c1e8e-4a55-4d7e-9d1c-5f4f2d3b7a10
    name:
      description: VM name.
      type: str
      sample: web01
    generation:
      description: VM generation (1 or 2).
      type: int
      sample: 2
    configuration_version:
      description: VM configuration version.
      type: str
      sample: "9.0"
    state:
      description: Running, Off, Saved or Paused.
      type: str
      sample: Running
    clustered:
      description: Whether the VM is a cluster role.
      type: bool
      sample: false
    csv_path:
      description: The CSV the VM lives on, or null.
      type: str
      sample: C:\ClusterStorage\Volume1
    path:
      description: The folder of the VM's configuration on the host (a Windows path), or null when the host does not say.
      type: str
      sample: C:\ProgramData\Microsoft\Windows\Hyper-V
    windows_path:
      description: The same folder as RV(vms[].path), always as the Windows path the host reported.
      type: str
      sample: C:\ProgramData\Microsoft\Windows\Hyper-V
    scsi_controllers:
      description: Number of SCSI controllers (a Generation 1 VM needs one for online backup on Windows Server 2012 R2).
      type: int
      sample: 1
    disks:
      description: Virtual disks with path, format, type, virtual size, disk id, controller and parent chain.
      type: list
      elements: dict
      sample: [{"path": "D:\\VMs\\web01\\web01.vhdx", "format": "vhdx", "type": "dynamic", "virtual_size": 42949672960,
                "disk_id": "5f0b...", "controller_type": "SCSI", "parent_chain": []}]
    integration_services:
      description: Guest integration services with enabled flag and operational status.
      type: list
      elements: dict
      sample: [{"name": "VSS", "enabled": true, "operational_status": "OK"}]
    checkpoints:
      description: Checkpoints; C(ours) marks recovery points this collection created.
      type: list
      elements: dict
      sample: [{"id": "1f2e...", "name": "hyperv.backup:20261125T061100Z-1a2b3c4d", "type": "Recovery", "ours": true}]
    reference_points:
      description: RCT reference points with their change-tracking ids per disk.
      type: list
      elements: dict
      sample: [{"id": "77aa...", "type": "RCT", "rct_ids": {"5f0b...": "rctX:5f0b...:12"}}]
    rct:
      description: Whether RCT can be used, and each reason why not.
      type: dict
      sample: {"eligible": false, "reasons": ["host build 9600 (Windows Server 2012 R2) is older than 14393 (Windows Server 2016); ..."]}
    serialization_key:
      description:
        - Backups of VMs with the same key must run one at a time (Windows Server 2008 R2 CSV or software-only VSS);
          null when parallel backups are safe.
      type: str
      sample: HV01:csv:C:\ClusterStorage\Volume1
    serialization_reason:
      description: Why the VM has (or has no) serialization key.
      type: str
      sample: parallel backups are safe on Windows Server 2022
    preflight:
      description: Pre-flight checks of the VM, each C({check, vm, ok, blocking, message}).
      type: list
      elements: dict
      sample: [{"check": "backup_integration", "vm": "web01", "ok": true, "blocking": true,
                "message": "VM web01: backup integration service (VSS) enabled and answering"}]
  sample: []
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hyperv.backup.plugins.module_utils.host.connection import HostSession, connection_argument_spec
from ansible_collections.hyperv.backup.plugins.module_utils.errors import HyperVBackupError
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv.host_checks import host_inventory


def main():
    argument_spec = connection_argument_spec()
    argument_spec.update(vms=dict(type="list", elements="str"))
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    try:
        with HostSession.from_module_params(module.params) as session:
            inventory = host_inventory(session, module.params["vms"])
    except HyperVBackupError as err:
        module.fail_json(msg=str(err), **err.details())
    module.exit_json(changed=False, **inventory)


if __name__ == "__main__":
    main()
