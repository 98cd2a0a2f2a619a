#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module hyperv_backup_export: serve one disk of a backup read-only over NBD (nbdkit), or stop serving it."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: hyperv_backup_export
short_description: Serve one disk of a Hyper-V VM backup read-only as an NBD export
version_added: 0.1.0
description:
  - With O(state=present), starts an NBD server (nbdkit with its Python plugin) on this machine that serves one disk of
    a backup read-only, reading the backup's chunks from the repository on demand (local or S3, encrypted or not; every
    chunk is checked against its id). Nothing is restored first.
  - A Linux machine mounts the export with C(nbd-client) or C(qemu-nbd) and the guest's file system; QEMU/KVM boots a
    VM from it (C(nbd://) URL) while a full restore runs. Hyper-V has no NBD client. See C(docs/export.md).
  - One export per O(address) and O(port). Running the task again for the same backup, disk and export name on a running
    export changes nothing; a different backup on a port that is in use is refused.
  - With O(state=absent), stops the export on O(address) and O(port) and removes its files.
  - The export's state (pid, what it serves) is kept in a directory of its own under O(state_dir); one whose process is
    gone is removed whenever the module runs.
  - The repository's passphrase and S3 keys reach nbdkit in a file readable only by the user, which nbdkit removes as it
    starts; they never appear on a command line.
author:
  - hyperv.backup contributors (@hyperv-backup)
extends_documentation_fragment:
  - hyperv.backup.repository
  - ansible.builtin.action_common_attributes
options:
  state:
    description: V(present) starts (or keeps) the export, V(absent) stops it.
    type: str
    choices: [present, absent]
    default: present
  vm:
    description: Name or id of the VM whose backup to export (its latest, or the latest at or before O(point_in_time)).
    type: str
  backup_id:
    description: Export this backup.
    type: str
  point_in_time:
    description: Export the latest backup whose recovery point was taken at or before this time (ISO 8601), as M(hyperv.backup.hyperv_restore).
    type: str
  source_host:
    description: With O(vm), the host the VM was backed up from, when O(vm) names more than one VM in the repository.
    type: str
  disk:
    description:
      - The disk of the backup to export, named as the O(hyperv.backup.hyperv_restore#module:disk_names) keys of
        M(hyperv.backup.hyperv_restore), by its controller slot (C(scsi0-0), C(SCSI 0:0)), its original path or file name.
      - May be left unset when the backup has one disk.
    type: str
  address:
    description:
      - The address nbdkit listens on. The default serves this machine only; use an address of the network the client is
        on (or V(0.0.0.0)) to serve others, preferably with O(tls=true).
    type: str
    default: 127.0.0.1
  port:
    description: The TCP port nbdkit listens on; one export per address and port.
    type: int
    default: 10809
  export_name:
    description:
      - The NBD export name clients ask for (the path of the C(nbd://) URL). Default C(<backup_id>-<disk_key>).
      - A client asking for another name is refused; one asking for the empty (default) name gets this export.
    type: str
  tls:
    description:
      - Require TLS (nbdkit C(--tls=require)); plain clients are refused. Needs O(tls_certificates) or O(tls_psk_file).
      - The URL becomes C(nbds://).
    type: bool
    default: false
  tls_certificates:
    description: Directory with C(ca-cert.pem), C(server-cert.pem) and C(server-key.pem) (nbdkit-tls(1)).
    type: path
  tls_psk_file:
    description: File of pre-shared keys (C(username:hexkey) lines, as C(psktool) writes them) for TLS-PSK.
    type: path
  state_dir:
    description:
      - Directory for the state of the exports on this machine (one subdirectory each).
      - Default C(exports) under the repository memory directory (E(HYPERV_BACKUP_STATE_DIR), else
        C($XDG_STATE_HOME/hyperv.backup) or C(~/.local/state/hyperv.backup)).
    type: path
  nbdkit_path:
    description: The nbdkit program; found on E(PATH) when unset.
    type: path
attributes:
  check_mode:
    support: full
    details: Says whether an export would be started or stopped, and its URL; starts and stops nothing.
  diff_mode:
    support: none
    details: The result says what is served.
  platform:
    platforms: posix
    details: Runs on a Linux backup proxy with nbdkit and nbdkit-plugin-python (Debian packages); never contacts a Hyper-V host.
requirements:
  - nbdkit and its Python plugin (Debian packages C(nbdkit), C(nbdkit-plugin-python)); the plugin's Python must be the
    same minor version as the module's interpreter or have the repository's Python packages installed.
notes:
  - The export is read-only; writes from the client fail. To change the disk, restore it.
  - An NBD client that reads a chunk that is damaged in the repository gets an I/O error at that offset, never wrong data.
  - The server keeps running after the task; stop it with O(state=absent). It does not survive a reboot.
seealso:
  - module: hyperv.backup.hyperv_restore
  - module: hyperv.backup.hyperv_backup_info
  - name: nbdkit
    description: The NBD server used.
    link: https://libguestfs.org/nbdkit.1.html
"""

EXAMPLES = r"""
- name: Serve the system disk of web01's latest backup to this machine
  hyperv.backup.hyperv_backup_export:
    repository: /srv/backups
    vm: web01
    disk: scsi0-0
    port: 10809
  register: export

- name: Mount it read-only (Linux guest file system)
  ansible.builtin.shell: |
    modprobe nbd
    nbd-client -readonly -name {{ export.export_name }} 127.0.0.1 10809 /dev/nbd0
    mount -o ro,norecovery /dev/nbd0p1 /mnt/web01
  changed_when: true

- name: Serve last night's backup of an encrypted S3 repository to the KVM host over TLS
  hyperv.backup.hyperv_backup_export:
    repository: s3://backups/hyperv
    repository_passphrase: "{{ vault_repository_passphrase }}"
    vm: web01
    point_in_time: '2026-11-24T23:59:59Z'
    address: 0.0.0.0
    port: 10810
    tls: true
    tls_certificates: /etc/pki/nbdkit

- name: Stop the export
  hyperv.backup.hyperv_backup_export:
    repository: /srv/backups
    port: 10809
    state: absent
"""

RETURN = r"""
url:
  description: The NBD URL of the export (C(nbds://) with TLS), for qemu-img, qemu-system or nbdinfo; null when nothing was known on the port.
  returned: always
  type: str
  sample: nbd://127.0.0.1:10809/20261125T061100Z-1a2b3c4d5e6f-scsi0-0
pid:
  description: Process id of nbdkit (null in check mode when it would be started).
  returned: always
  type: int
  sample: 41234
export_name:
  description: The export name served.
  returned: always
  type: str
  sample: 20261125T061100Z-1a2b3c4d5e6f-scsi0-0
address:
  description: The address nbdkit listens on.
  returned: always
  type: str
  sample: 127.0.0.1
port:
  description: The port nbdkit listens on.
  returned: always
  type: int
  sample: 10809
backup_id:
  description: The backup served.
  returned: always
  type: str
  sample: 20261125T061100Z-1a2b3c4d5e6f
vm:
  description: Name of the VM the backup is of.
  returned: always
  type: str
  sample: web01
vm_id:
  description: Id of the VM the backup is of.
  returned: always
  type: str
  sample: 7d5c7a34-2f0e-4f5e-9b8e-0a1b2c3d4e5f
disk_key:
  description: The disk served (controller slot).
  returned: always
  type: str
  sample: scsi0-0
virtual_size:
  description: Size of the disk in bytes.
  returned: always
  type: int
  sample: 68719476736
tls:
  description: Whether the export requires TLS.
  returned: always
  type: bool
  sample: false
state_file:
  description: The export's state file on this machine.
  returned: state is present
  type: str
  sample: /root/.local/state/hyperv.backup/exports/127.0.0.1_10809/state.json
log_file:
  description: nbdkit's log of the export just started.
  returned: when an export was started
  type: str
  sample: /root/.local/state/hyperv.backup/exports/127.0.0.1_10809/nbdkit.log
stopped:
  description: Whether a running nbdkit was stopped (V(false) when only a stale state was removed).
  returned: state is absent
  type: bool
  sample: true
stale_removed:
  description: State directories of exports whose process was gone, removed by this run (empty in check mode).
  returned: always
  type: list
  elements: str
  sample: [127.0.0.1_10811]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HyperVBackupError
from ansible_collections.hyperv.backup.plugins.module_utils.export.nbd_export import DEFAULT_PORT, absent, present
from ansible_collections.hyperv.backup.plugins.module_utils.repository.process_hardening import harden_process
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_options import open_repository, repository_argument_spec


def main():
    argument_spec = repository_argument_spec()
    argument_spec.update(
        state=dict(type="str", default="present", choices=["present", "absent"]),
        vm=dict(type="str"),
        backup_id=dict(type="str"),
        point_in_time=dict(type="str"),
        source_host=dict(type="str"),
        disk=dict(type="str"),
        address=dict(type="str", default="127.0.0.1"),
        port=dict(type="int", default=DEFAULT_PORT),
        export_name=dict(type="str"),
        tls=dict(type="bool", default=False),
        tls_certificates=dict(type="path"),
        tls_psk_file=dict(type="path", no_log=False),
        state_dir=dict(type="path"),
        nbdkit_path=dict(type="path"),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           required_if=[("state", "present", ("vm", "backup_id"), True)],
                           mutually_exclusive=[("backup_id", "point_in_time")])
    harden_process()            # keys in memory: no core dumps; the passphrase variable is not passed to nbdkit
    params = module.params
    try:
        if params["state"] == "absent":
            result = absent(params, check_mode=module.check_mode)
        else:
            nbdkit = params["nbdkit_path"] or module.get_bin_path("nbdkit", required=False)
            if not nbdkit and not module.check_mode:
                raise HyperVBackupError("nbdkit is not installed on this machine.",
                                        hint="Install the Debian packages nbdkit and nbdkit-plugin-python (see bindep.txt).")
            result = present(open_repository(params), params, nbdkit, check_mode=module.check_mode)
    except HyperVBackupError as err:
        module.fail_json(msg=str(err), **err.details())
    module.exit_json(**result)


if __name__ == "__main__":
    main()
