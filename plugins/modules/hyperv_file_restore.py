#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module hyperv_file_restore: list partitions and files of a backup's disk, extract files from it."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: hyperv_file_restore
short_description: List and extract files from a Hyper-V VM backup without restoring the whole disk
version_added: 0.1.0
description:
  - Reads a guest file system inside a backed-up disk directly from the repository, fetching only the chunks the file
    system's metadata and the chosen files occupy (full or incremental backups, local or S3, encrypted or not).
  - File systems NTFS, ext2/3/4, FAT12/16/32 and exFAT are read with The Sleuth Kit (Python library pytsk3), XFS with
    dissect.xfs. Partition tables are MBR (with logical partitions) or GPT; a disk formatted without a table is
    partition 0.
  - O(state=listed) returns the partitions of the disk (number, scheme, type, offset, size, file system) and, with
    O(partition) or O(path), the entries under O(path) of that partition.
  - O(state=extracted) copies the files and directories that O(paths) select into O(dest) on the machine the module runs
    on, keeping modification times. Names that could leave O(dest) or are not valid names here (C(..), separators or NUL
    inside a name, control characters, invalid UTF-16 or undecodable bytes, Windows device names such as C(CON) or
    C(NUL), names over 255 bytes) are never written and are listed in RV(skipped), as are symbolic links and special
    files. An existing file is replaced only with O(force=true); without it the task fails before writing anything.
  - BitLocker volumes, partitions without a known file system and damaged partition tables fail with a message that
    names the partition.
  - The backup is chosen as M(hyperv.backup.hyperv_restore) chooses it.
author:
  - hyperv.backup contributors (@hyperv-backup)
extends_documentation_fragment:
  - hyperv.backup.repository
  - ansible.builtin.action_common_attributes
options:
  state:
    description: C(listed) (partitions and entries, read only) or C(extracted) (copy files into O(dest)).
    type: str
    choices: [listed, extracted]
    default: listed
  vm:
    description: Name or id of the VM whose latest backup (or the latest at or before O(point_in_time)) to read.
    type: str
  backup_id:
    description: Read this backup.
    type: str
  point_in_time:
    description: With O(vm), the latest backup whose recovery point was taken at or before this time (ISO 8601).
    type: str
  source_host:
    description: With O(vm), the host the VM was backed up from (needed only when O(vm) names VMs of several hosts).
    type: str
  disk:
    description:
      - The disk of the backup, named as a key of O(hyperv.backup.hyperv_restore#module:disk_names) (controller slot like
        C(scsi0-1), original path or file name). Needed only when the backup has several disks.
    type: str
  partition:
    description:
      - Partition number (GPT entry number, MBR 1-4 primary and 5 on logical, 0 for a disk without a table).
      - Default for O(state=extracted) and O(path) is the only partition with a readable file system.
    type: int
  path:
    description: With O(state=listed), the directory (or file) of O(partition) to list, from the partition's root.
    type: str
  recursive:
    description: With O(state=listed), list everything below O(path).
    type: bool
    default: false
  limit:
    description: With O(state=listed), return at most this many entries (0 for all); RV(truncated) says when more exist.
    type: int
    default: 1000
  paths:
    description:
      - With O(state=extracted), guest paths from the partition's root, or glob patterns matched part by part (C(*) never
        crosses a C(/)), for example C(/etc/hosts), C(/Users/*/Documents) or C(/var/log/*.log). A directory is copied with
        everything below it. A path or pattern that matches nothing fails the task.
    type: list
    elements: str
  dest:
    description: With O(state=extracted), the local directory the files go to, under their guest paths (created if missing).
    type: path
  force:
    description: Replace files that already exist in O(dest) (a symbolic link there is replaced, never followed).
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    details: O(state=listed) only reads; O(state=extracted) reports the files it would write and writes nothing.
  diff_mode:
    support: none
  platform:
    platforms: posix
    details: Runs on the controller or the backup proxy that reaches the repository; it never contacts a Hyper-V host.
notes:
  - Needs the Python libraries pytsk3 (NTFS, ext, FAT) and dissect.xfs (XFS) on the machine that runs it (requirements.txt).
  - The Sleuth Kit reports FAT times as local time of the machine that runs the module; run it with the guest's time zone
    (or UTC, as the lab does) for exact FAT modification times.
seealso:
  - module: hyperv.backup.hyperv_restore
  - module: hyperv.backup.hyperv_backup_info
  - module: hyperv.backup.hyperv_backup_repository
"""

EXAMPLES = r"""
- name: Show the partitions of web01's latest backup
  hyperv.backup.hyperv_file_restore:
    repository: /srv/backups
    vm: web01
  register: parts

- name: List C:\Users of partition 2 recursively (at most 200 entries)
  hyperv.backup.hyperv_file_restore:
    repository: /srv/backups
    vm: web01
    partition: 2
    path: /Users
    recursive: true
    limit: 200

- name: Extract the IIS configuration and all logs as they were last night
  hyperv.backup.hyperv_file_restore:
    repository: s3://backups/hyperv
    repository_passphrase: "{{ vault_repository_passphrase }}"
    vm: web01
    point_in_time: '2026-11-24T23:59:59Z'
    state: extracted
    partition: 2
    paths:
      - /Windows/System32/inetsrv/config/applicationHost.config
      - /inetpub/logs/LogFiles/*/*.log
    dest: /srv/restore/web01-files
    force: true
"""

RETURN = r"""
backup_id:
  description: The backup read.
  returned: always
  type: str
vm:
  description: Name of the VM the backup is of.
  returned: always
  type: str
vm_id:
  description: Id of the VM.
  returned: always
  type: str
backup_type:
  description: C(full) or C(incremental).
  returned: always
  type: str
created:
  description: When the backup was taken (ISO 8601, UTC).
  returned: always
  type: str
disk:
  description: The disk key read (for example C(scsi0-0)).
  returned: always
  type: str
partitions:
  description: With O(state=listed), each partition's number, scheme, type, type_name, name, offset, size and file system.
  returned: when state is listed
  type: list
  elements: dict
partition:
  description: The partition number listed or extracted from.
  returned: when a partition was opened
  type: int
filesystem:
  description: The partition's file system (C(ntfs), C(ext4), C(ext), C(xfs), C(fat32), C(fat), C(exfat)).
  returned: when a partition was opened
  type: str
entries:
  description: Entries under O(path) (path, type file/directory/symlink/other, size, mtime in seconds since the epoch).
  returned: when state is listed and a partition was opened
  type: list
  elements: dict
truncated:
  description: True when O(limit) cut the listing short.
  returned: when state is listed and a partition was opened
  type: bool
files:
  description: Files extracted (or in check mode to be extracted) with guest path, local target, size, mtime and (written) sha256.
  returned: when state is extracted
  type: list
  elements: dict
directories:
  description: Directories created or kept, with their guest modification times.
  returned: when state is extracted
  type: list
  elements: dict
skipped:
  description: Entries not extracted and why (unsafe names, symbolic links, special files).
  returned: when state is extracted
  type: list
  elements: dict
replaced:
  description: Local files that were (or would be) replaced (only with O(force)).
  returned: when state is extracted
  type: list
  elements: str
bytes_read:
  description: Bytes of stored chunks fetched from the repository (whole chunks; zero chunks cost nothing).
  returned: always
  type: int
chunks_read:
  description: Stored chunks fetched from the repository.
  returned: always
  type: int
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HyperVBackupError
from ansible_collections.hyperv.backup.plugins.module_utils.guestfs.file_restore import run_file_restore
from ansible_collections.hyperv.backup.plugins.module_utils.repository.process_hardening import harden_process
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_options import open_repository, repository_argument_spec


def main():
    argument_spec = repository_argument_spec()
    argument_spec.update(
        state=dict(type="str", choices=["listed", "extracted"], default="listed"),
        vm=dict(type="str"),
        backup_id=dict(type="str"),
        point_in_time=dict(type="str"),
        source_host=dict(type="str"),
        disk=dict(type="str"),
        partition=dict(type="int"),
        path=dict(type="str"),
        recursive=dict(type="bool", default=False),
        limit=dict(type="int", default=1000),
        paths=dict(type="list", elements="str"),
        dest=dict(type="path"),
        force=dict(type="bool", default=False),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           required_one_of=[("vm", "backup_id")], mutually_exclusive=[("backup_id", "point_in_time")],
                           required_if=[("state", "extracted", ("paths", "dest"))])
    harden_process()            # keys in memory: no core dumps; the passphrase variable is not passed to children
    try:
        result = run_file_restore(open_repository(module.params), module.params, check_mode=module.check_mode)
    except HyperVBackupError as err:
        module.fail_json(msg=str(err), **err.details())
    module.exit_json(**result)


if __name__ == "__main__":
    main()
