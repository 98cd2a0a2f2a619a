#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module hyperv_restore: restore a VM's backup to verified disk files, optionally re-register the VM."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: hyperv_restore
short_description: Restore a Hyper-V VM backup to VHDX (or raw) files and optionally re-register the VM
version_added: 0.1.0
description:
  - Restores the latest backup of a VM, the one given by O(backup_id), or the latest at or before O(point_in_time),
    into O(destination) on the machine the module runs on (the backup proxy; for a lab host any directory the lab
    host can see, for example its VM folder).
  - Each disk becomes a dynamic VHDX that Hyper-V can attach (O(format=vhdx)), a dynamic VHD for Windows Server
    2008 and 2008 R2 hosts, which cannot attach VHDX (O(format=vhd)), or a sparse raw image for other hypervisors
    (O(format=raw)). Files are written under a temporary name, re-read and compared chunk by chunk with
    the backup's manifest (the repository's chunk ids; zero chunks must read as zeros), and renamed into place only
    when they match. A mismatch removes the file and fails.
  - An existing file is never overwritten unless O(force=true); names that would escape O(destination) are refused.
  - With O(host_destination) the disks go to a folder on the Hyper-V host instead, written through O(path_map) (the
    host's share mounted on this machine; a lab host maps its own paths), or written into O(destination) here,
    verified, and uploaded to the host's administrative share with the connection credentials (O(smb_access=true)).
  - With O(register=true) the VM is registered again on the host from the configuration files captured with the
    backup (stored in the repository, so this works after the recovery point is gone). The files are written to
    O(host_destination)C(\Virtual Machines), imported (ImportSystemDefinition; C(.vmcx) and C(.xml) configurations),
    each disk is attached at its original controller slot, network adapters are connected per O(switch_map), and
    the VM is realized. Windows Server 2008 R2 cannot import a configuration file this way; the disks and the
    configuration are delivered and the task fails with the manual steps.
author:
  - hyperv.backup contributors (@hyperv-backup)
extends_documentation_fragment:
  - hyperv.backup.connection
  - hyperv.backup.repository
  - ansible.builtin.action_common_attributes
options:
  host:
    description: The Hyper-V host to register the VM on or deliver the disks to; needed with O(register=true) or O(smb_access=true).
    type: str
    required: false
  vm:
    description: Name or id of the VM whose backup to restore (its latest, or the latest at or before O(point_in_time)).
    type: str
  backup_id:
    description: Restore this backup.
    type: str
  point_in_time:
    description:
      - Restore the latest backup whose recovery point was taken at or before this time (ISO 8601).
      - Latest is the repository's commit order, not a clock.
    type: str
  source_host:
    description:
      - With O(vm), the host the VM was backed up from.
      - Needed only when O(vm) names more than one VM in the repository (two hosts report the same VM id with
        different disks, or two VMs share a name); the restore refuses such a O(vm) without it rather than pick one.
    type: str
  destination:
    description:
      - Directory on this machine for the restored files (created if missing).
      - With O(host_destination) and O(smb_access=true), the staging directory where files are verified before upload.
      - One of O(destination) and O(host_destination) is required.
    type: path
  host_destination:
    description:
      - Windows folder on the Hyper-V host (for example C(D:\Restore\web01)) where the disks (and, with O(register=true),
        the configuration) go. Reached through O(path_map) or, with O(smb_access=true), over SMB.
      - Needed with O(register=true), unless O(destination) is under a folder the session's path map covers (lab hosts).
    type: str
  path_map:
    description:
      - Map of Windows path prefixes on the host to local directories on this machine where that storage is mounted
        (for example V(D:\\Restore) to V(/mnt/hv01-restore)); O(host_destination) is written through it.
    type: dict
  smb_access:
    description:
      - Upload the restored, verified files from O(destination) to O(host_destination) on the host's administrative
        share (C(\\host\D$\...)) with the connection credentials (needs the Python library smbprotocol).
    type: bool
    default: false
  switch_map:
    description:
      - With O(register=true), connect the VM's network adapters to virtual switches of the target host, by the
        name of the switch they were connected to (known on Windows Server 2016 and later). The key V(*) applies to
        every adapter (the only key that works on 2012 / 2012 R2). Adapters not mapped keep their configuration.
    type: dict
  format:
    description:
      - C(vhdx) (dynamic VHDX), C(vhd) (dynamic VHD, 2 MiB blocks, for Windows Server 2008 / 2008 R2 hosts; only for
        disks with 512-byte logical sectors) or C(raw) (sparse raw image).
    type: str
    choices: [vhdx, vhd, raw]
    default: vhdx
  force:
    description:
      - Replace existing files (only after the new file is verified).
      - A symbolic link at a target name counts as an existing file; it is replaced by the restored file, never
        followed.
    type: bool
    default: false
  disk_names:
    description:
      - File names per disk; default is the original file name. The format's extension replaces the name's own.
      - A key names a disk of the backup as C(exclude_disks) of M(hyperv.backup.hyperv_backup) does, case-insensitively,
        by its controller slot (C(scsi0-0), C(SCSI 0:0)), its original path or its file name.
      - A key that names no disk of the backup (or several), a disk named twice, and two disks that would get the same
        file name (compared without case, as on Windows; default names included) are refused before anything is written.
    type: dict
  verify:
    description: Re-read and compare every restored chunk with the backup before renaming the file into place.
    type: bool
    default: true
  register:
    description: Register the VM on O(host) from the captured configuration with the restored disks.
    type: bool
    default: false
  new_name:
    description: Name of the registered VM (default the original name).
    type: str
  generate_new_id:
    description: Give the registered VM a new id (needed when the original VM still exists on the host).
    type: bool
    default: false
  progress_file:
    description: JSON lines with percent and rate, at most once a second.
    type: path
notes:
  - Check mode returns RV(planned) (which files would be written or replaced) and writes nothing.
  - Supports C(async); the progress file shows how far a running restore is.
  - "Without O(host_destination) files are written on the machine the module runs on only."
  - "UNCONFIRMED on real hosts: importing the configuration of a recovery checkpoint (RCT backups) with
    ImportSystemDefinition; importing a 5.0 (.xml) configuration without its saved-state folder."
attributes:
  check_mode:
    support: full
    details: RV(planned) says which files would be written or replaced; nothing is written and no VM is registered.
  diff_mode:
    support: none
    details: A restore writes disk images; RV(planned) (check mode) and RV(disks) say which files, a diff would add nothing.
  platform:
    platforms: posix
    details:
      - Runs on the controller or a backup proxy; writes the files there, or on the Hyper-V host over SMB with
        O(host_destination).
seealso:
  - module: hyperv.backup.hyperv_backup_info
  - module: hyperv.backup.hyperv_backup
  - module: hyperv.backup.hyperv_backup_repository
"""

EXAMPLES = r"""
- name: Restore web01 as it was last night to raw images
  hyperv.backup.hyperv_restore:
    repository: /srv/backups
    vm: web01
    point_in_time: '2026-11-24T23:59:59Z'
    destination: /srv/restore/web01
    format: raw

- name: Restore a backup onto the host through its share mounted here, and register it as a new VM
  hyperv.backup.hyperv_restore:
    repository: /srv/backups
    backup_id: 20261125T061100Z-1a2b3c4d5e6f
    host_destination: 'D:\Restore\web01'
    path_map: {'D:\Restore': /mnt/hv01-restore}
    register: true
    host: hv01
    new_name: web01-restored
    generate_new_id: true
    switch_map: {'*': LAN}

- name: Restore over SMB (verified here first) and register on another host
  hyperv.backup.hyperv_restore:
    repository: /srv/backups
    vm: web01
    destination: /srv/restore/staging
    host_destination: 'D:\Restore\web01'
    smb_access: true
    register: true
    host: hv02
    username: '{{ hv_user }}'
    password: '{{ hv_password }}'
    switch_map: {External: LAN}

- name: Replace an earlier restore (the old files are replaced only after the new ones are verified)
  hyperv.backup.hyperv_restore:
    repository: /srv/backups
    vm: web01
    destination: /srv/restore/web01
    disk_names: {scsi0-0: web01-system.vhdx}
    force: true
"""

RETURN = r"""
backup_id:
  description: The backup that was restored.
  returned: always
  type: str
  sample: 20261125T061100Z-1a2b3c4d5e6f
vm:
  description: Name of the VM the backup is of.
  returned: always
  type: str
vm_id:
  description: Id of the VM the backup is of.
  returned: always
  type: str
backup_type:
  description: C(full) or C(incremental) (either restores the whole disk).
  returned: always
  type: str
created:
  description: When the backup was taken (ISO 8601, UTC).
  returned: always
  type: str
consistency:
  description: The consistency level the backup achieved (C(application) or C(crash)).
  returned: always
  type: str
destination:
  description: The directory the files are (or in check mode would be) written to.
  returned: always
  type: str
format:
  description: C(vhdx), C(vhd) or C(raw).
  returned: always
  type: str
duration_seconds:
  description: Time to write and verify all disks.
  returned: success, not in check mode
  type: float
bytes_per_second:
  description: Virtual disk bytes restored per second.
  returned: success, not in check mode
  type: int
disks:
  description:
    - Per disk the file written, its format, size, timings, and the verification hashes (manifest and restored).
    - With O(host_destination) also C(host_path) (the Windows path on the host) and, over SMB, C(uploaded_to).
  returned: success, not in check mode
  type: list
  elements: dict
verified:
  description: True when every restored disk matched the backup chunk by chunk.
  returned: success, not in check mode
  type: bool
registered_vm:
  description:
    - The VM registered on the host (vm_id, name, state), the configuration file it was imported from
      (configuration_path), the disks by controller slot (disks) and the network adapters mapped (network_adapters).
  returned: when register is true
  type: dict
host_destination:
  description: The Windows folder on the host the disks were (or would be) delivered to, or null.
  returned: always
  type: str
delivery:
  description: C(local) (this machine only), C(path_map) (written to the host folder through a mount) or C(smb) (uploaded).
  returned: always
  type: str
planned:
  description: The files that are (or in check mode would be) written, with C(host_path) when they go to the host.
  returned: always
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hyperv.backup.plugins.module_utils.host.connection import HostSession, connection_argument_spec
from ansible_collections.hyperv.backup.plugins.module_utils.errors import HyperVBackupError
from ansible_collections.hyperv.backup.plugins.module_utils.repository.process_hardening import harden_process
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_options import open_repository, repository_argument_spec
from ansible_collections.hyperv.backup.plugins.module_utils.backup.restore_engine import is_windows_path, run_restore


def main():
    argument_spec = connection_argument_spec()
    argument_spec["host"] = dict(argument_spec["host"], required=False)
    argument_spec.update(repository_argument_spec())
    argument_spec.update(
        vm=dict(type="str"),
        backup_id=dict(type="str"),
        point_in_time=dict(type="str"),
        source_host=dict(type="str"),
        destination=dict(type="path"),
        host_destination=dict(type="str"),
        path_map=dict(type="dict"),
        smb_access=dict(type="bool", default=False),
        switch_map=dict(type="dict"),
        format=dict(type="str", default="vhdx", choices=["vhdx", "vhd", "raw"]),
        force=dict(type="bool", default=False),
        disk_names=dict(type="dict"),
        verify=dict(type="bool", default=True),
        register=dict(type="bool", default=False),
        new_name=dict(type="str"),
        generate_new_id=dict(type="bool", default=False),
        progress_file=dict(type="path"),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           required_one_of=[("vm", "backup_id"), ("destination", "host_destination")],
                           mutually_exclusive=[("backup_id", "point_in_time")],
                           required_if=[("register", True, ("host",)), ("smb_access", True, ("host", "destination"))])
    harden_process()            # keys in memory: no core dumps; the passphrase variable is not passed to children
    params = module.params
    try:
        repo = open_repository(params)
        # A host folder without path_map / smb_access is reached through the session's own map (transport lab).
        host_path = params["host_destination"] or is_windows_path(params["destination"])
        if params["register"] or (host_path and params["host"] and not params["path_map"] and not params["smb_access"]):
            with HostSession.from_module_params(params) as session:
                result = run_restore(repo, params, session=session, check_mode=module.check_mode,
                                     progress_file=params["progress_file"])
        else:
            result = run_restore(repo, params, check_mode=module.check_mode, progress_file=params["progress_file"])
    except HyperVBackupError as err:
        module.fail_json(msg=str(err), **err.details())
    module.exit_json(**result)


if __name__ == "__main__":
    main()
