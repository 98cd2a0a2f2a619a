#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module hyperv_vss_ensure: make a Hyper-V host and its VMs ready for online (VSS) backups."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: hyperv_vss_ensure
short_description: Make sure VSS runs on a Hyper-V host and its VMs can be backed up online
version_added: 0.1.0
description:
  - Starts the Volume Shadow Copy service (C(vss)) when it is not running; the task is C(changed) only then.
  - Reports the state of the Microsoft Hyper-V VSS Writer.
  - Checks the backup integration service (C(VSS)) of each VM and either reports it or, with
    O(enable_backup_integration=true), enables it where it exists but is disabled.
  - Runs the pre-flight checks (VSS service and writer, backup integration service on and answering, a SCSI
    controller on Generation 1 VMs of Windows Server 2012 R2 hosts, configuration version, cluster functional level,
    recovery points left by earlier runs) and returns them.
  - Fails, naming each VM, the reason and what to do, when a blocking check fails, that is when a VM cannot be
    backed up online. Set O(fail_on_blocking=false) to only report.
author:
  - hyperv.backup contributors (@hyperv-backup)
options:
  vms:
    description:
      - Names of the VMs to check. All VMs of the host when not given.
    type: list
    elements: str
    version_added: 0.1.0
  enable_backup_integration:
    description:
      - Enable the guest backup integration service (C(VSS)) of the checked VMs where it exists but is disabled.
      - A guest without the service (no integration components) cannot be fixed from the host; the module fails for it.
    type: bool
    default: false
    version_added: 0.1.0
  fail_on_blocking:
    description:
      - Fail when a blocking pre-flight check fails (the VM cannot be backed up online).
      - With V(false) the problems are returned in RV(problems) and the task succeeds.
    type: bool
    default: true
    version_added: 0.1.0
extends_documentation_fragment:
  - hyperv.backup.connection
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Nothing is started or enabled; RV(would_start) and RV(vms[].would_enable) say what would be.
  diff_mode:
    support: full
    details:
      - The status of the Volume Shadow Copy service and, per checked VM, whether its backup integration service is
        enabled, before and after (in check mode, after as it would be). These are all the module changes.
  platform:
    platforms: posix
    details: Runs on the controller or a backup proxy and reaches the Hyper-V host over PSRP, WinRM or the lab transport.
seealso:
  - module: hyperv.backup.hyperv_host_info
  - module: hyperv.backup.hyperv_recovery_point
"""

EXAMPLES = r"""
- name: Start VSS and check every VM before the backup window
  hyperv.backup.hyperv_vss_ensure:
    host: hv01.example.com
    username: EXAMPLE\backup
    password: "{{ vault_backup_password }}"
  delegate_to: localhost

- name: Enable the backup integration service of two VMs
  hyperv.backup.hyperv_vss_ensure:
    host: hv01.example.com
    vms: [web01, sql01]
    enable_backup_integration: true
  delegate_to: localhost

- name: Only report problems, do not fail
  hyperv.backup.hyperv_vss_ensure:
    host: hv01.example.com
    fail_on_blocking: false
  delegate_to: localhost
  register: vss_state
"""

RETURN = r"""
would_start:
  description: Whether the Volume Shadow Copy service was (or, in check mode, would be) started.
  returned: always
  type: bool
  sample: true
vss_service:
  description: The Volume Shadow Copy service after the module ran (in check mode, as it is).
  returned: always
  type: dict
  sample: {"name": "vss", "display_name": "Volume Shadow Copy", "status": "Running", "previous_status": "Stopped",
           "start_type": "Manual"}
hyperv_vss_writer:
  description: The Microsoft Hyper-V VSS Writer and its state.
  returned: always
  type: dict
  sample: {"name": "Microsoft Hyper-V VSS Writer", "id": "{66841cd4-6ded-4f4b-8f17-fd23f8ddc3de}", "state": "[1] Stable",
           "last_error": "No error"}
vms:
  description: Per checked VM, its backup integration service and what the module did about it.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: VM name.
      type: str
      sample: web01
    id:
      description: VM id.
      type: str
      sample: 9b0c1e8e-4a55-4d7e-9d1c-5f4f2d3b7a10
    state:
      description: VM state.
      type: str
      sample: Running
    backup_integration:
      description: The backup integration service (null when the guest has none).
      type: dict
      sample: {"name": "VSS", "enabled": true, "operational_status": "OK"}
    would_enable:
      description: Whether the service was (or, in check mode, would be) enabled.
      type: bool
      sample: false
    enabled_now:
      description: Whether this run enabled the service.
      type: bool
      sample: false
    preflight:
      description: The VM's pre-flight checks.
      type: list
      elements: dict
      sample: [{"check": "scsi_controller", "vm": "web01", "ok": true, "blocking": true,
                "message": "VM web01: no SCSI controller needed for online backup on this host"}]
  sample: []
preflight:
  description: All pre-flight checks, host first, each C({check, vm, ok, blocking, message}).
  returned: always
  type: list
  elements: dict
  sample: [{"check": "vss_service", "vm": null, "ok": true, "blocking": true, "message": "Volume Shadow Copy service is running"}]
problems:
  description: Messages of the blocking checks that failed (what is wrong, for which VM, and what to do).
  returned: always
  type: list
  elements: str
  sample: ["VM db01 has no backup integration service (VSS): the guest cannot be quiesced. Install or update ..."]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hyperv.backup.plugins.module_utils.host.connection import HostSession, connection_argument_spec
from ansible_collections.hyperv.backup.plugins.module_utils.errors import HyperVBackupError
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv.host_checks import ensure_vss_ready
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv.host_diff import vss_ready_diff


def main():
    argument_spec = connection_argument_spec()
    argument_spec.update(
        vms=dict(type="list", elements="str"),
        enable_backup_integration=dict(type="bool", default=False),
        fail_on_blocking=dict(type="bool", default=True),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    try:
        with HostSession.from_module_params(params) as session:
            result = ensure_vss_ready(session, vm_names=params["vms"], check_mode=module.check_mode,
                                      enable_backup_integration=params["enable_backup_integration"])
    except HyperVBackupError as err:
        module.fail_json(msg=str(err), **err.details())
    if module._diff:
        result["diff"] = vss_ready_diff(result, params["host"], check_mode=module.check_mode)
    if result["problems"] and params["fail_on_blocking"]:
        module.fail_json(msg="Host %s is not ready for online backups: %s" % (params["host"], " ".join(result["problems"])),
                         **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
