#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module hyperv_lab: create and change file-backed lab Hyper-V hosts and their VMs."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: hyperv_lab
short_description: Build lab Hyper-V hosts and VMs to rehearse backups on
version_added: 0.1.0
description:
  - Creates, changes or removes a B(lab host), a file-backed emulator of a Hyper-V host stored under
    O(lab_directory)/O(host). Every module of this collection can target it with C(transport=lab),
    the same O(lab_directory) and O(host).
  - A lab host answers the same host operations as a real one (facts, services, VMs, recovery
    checkpoints, reference points, Resilient Change Tracking, configuration capture and import), with
    the same failures. Its VM disks are real VHDX files; checkpoints are real differencing C(.avhdx) files.
  - One task per host can build the host, its VMs and their disks, play guest writes (O(churn)), grow a
    disk (O(resize_disk)) and move a VM to another lab host (O(migrate_to)).
  - Faults (O(faults), O(vms[].faults)) make the host fail the way real hosts do, for rehearsing errors.
  - See C(docs/lab_host.md) for the emulation rules.
author:
  - hyperv.backup contributors (@hyperv-backup)
options:
  transport:
    description:
      - Accepted so that a task or C(module_defaults) can give C(transport=lab) as to the other modules; this module only
        manages lab hosts.
      - This module is in the C(module_defaults) group C(group/hyperv.backup.lab), not in C(group/hyperv.backup.hyperv),
        because it takes none of the connection options (credentials) that group carries for real hosts.
    type: str
    choices: [lab]
    default: lab
  lab_directory:
    description:
      - Directory that holds the lab hosts (one sub-directory per host); created owner-only if missing.
      - If not set, the environment variable E(HYPERV_LAB_DIRECTORY) is used.
    type: path
    required: true
  host:
    description:
      - Name of the lab host (a plain name, no path separators).
      - If not set, the environment variable E(HYPERV_HOST) is used.
    type: str
    required: true
  state:
    description:
      - V(present) creates the host if needed and applies the other options.
      - V(absent) deletes the host with all its VMs and disk files.
    type: str
    choices: [present, absent]
    default: present
  era:
    description:
      - Windows Server release the host pretends to run; sets the version and build (V(2008r2) 6.1.7601,
        V(2012) 6.2.9200, V(2012r2) 6.3.9600, V(2016) 10.0.14393, V(2019) 10.0.17763, V(2022) 10.0.20348,
        V(2025) 10.0.26100), the Hyper-V WMI namespaces it has (C(root\virtualization) on 2008 R2 and 2012,
        C(root\virtualization\v2) from 2012), the PowerShell version it reports and the newest VM
        configuration version it supports (2008 R2, 2012 and 2012 R2 5.0, 2016 8.0, 2019 9.0, 2022 10.0,
        2025 12.0).
      - V(2025) is the 2022 model plus configuration versions 11.0 and 12.0; its other details are not
        confirmed by a source (see C(docs/lab_host.md)).
      - A new host defaults to V(2022); an existing host keeps its era unless this is set.
    type: str
    choices: ['2008r2', '2012', '2012r2', '2016', '2019', '2022', '2025']
  locale:
    description:
      - Language of the host. It localises what Windows localises and the collection must never match on
        (integration service names, service display names, the text of C(vssadmin) and C(diskshadow)).
      - A new host defaults to V(en-US); an existing host keeps its locale unless this is set.
    type: str
    choices: [en-US, de-DE]
  clock_offset_seconds:
    description:
      - How far the host's clock is ahead of real time (negative when behind), in seconds. Times the host
        reports (file times, the current time, shadow copy creation times) come from this clock, so plays
        can rehearse hosts and proxies whose clocks disagree.
      - A new host defaults to V(0); an existing host keeps its offset unless this is set.
    type: int
  quirks:
    description:
      - Behaviours to switch on; replaces the current list. V(slow_shadow_create_seconds:<seconds>) makes
        each C(diskshadow) shadow copy set creation take that long, holding the host's single creation
        window open (to rehearse two backups that create shadow copies at once). V(byte_length_strict) makes
        C(GetVirtualDiskChanges) refuse a C(ByteLength) that is not less than the virtual disk's size (the strict
        reading of Microsoft's page), so the change-list paging is rehearsed both ways.
        V(rct_id_per_reference_point) gives every reference point its own RCT id, also for a disk that did not
        change, so destroying one point invalidates only its own ids; without it an unchanged disk gets the same
        id again and destroying any point holding an id invalidates it (what Windows does is undocumented).
      - A new host has none; an existing host keeps its list unless this is set.
    type: list
    elements: str
  cluster:
    description:
      - Cluster membership. Omit to leave unchanged; an empty dictionary makes the host standalone.
    type: dict
    suboptions:
      name:
        description: Cluster name.
        type: str
      functional_level:
        description:
          - ClusterFunctionalLevel (8 = 2012 R2, 9 = 2016, 10 = 2019, 11 = 2022). RCT needs 9 or higher.
          - Defaults to the level of the host's era.
        type: int
  csvs:
    description: Cluster Shared Volume paths, like C(C:\ClusterStorage\Volume1).
    type: list
    elements: str
  hardware_vss_provider:
    description: Whether a hardware VSS provider is installed beside the Microsoft software provider.
    type: bool
  services:
    description:
      - Desired state of the host services C(vss), C(swprv) and C(vmms), by name. Each value is a status
        (C(Running), C(Stopped)) or a dictionary with C(status) and C(start_type) (C(Automatic), C(Manual),
        C(Disabled)). New hosts have C(vss) and C(swprv) stopped (manual start) and C(vmms) running.
    type: dict
  faults:
    description:
      - Faults of the whole host; replaces the current list. V(unreachable), V(auth_fails),
        V(service_wont_start:<service>), V(integration_missing), V(integration_no_contact),
        V(recovery_point_fails), V(vss_writer_failed), V(rct_invalid).
    type: list
    elements: str
  vms:
    description:
      - VMs to create or change, matched by name. Existing VMs keep disks and checkpoints; missing disks
        are added at the end and missing standard checkpoints are created.
    type: list
    elements: dict
    suboptions:
      name:
        description: VM name.
        type: str
        required: true
      present:
        description: V(false) removes the VM and its directory.
        type: bool
        default: true
      generation:
        description: VM generation (cannot change later). Defaults to 2 for a new VM.
        type: int
        choices: [1, 2]
      configuration_version:
        description: VM configuration version; defaults to the newest the host's era supports. Can only go up.
        type: str
        choices: ['5.0', '6.2', '8.0', '9.0', '10.0', '11.0', '12.0']
      state:
        description: Power state. Defaults to C(Running) for a new VM.
        type: str
        choices: [Running, 'Off', Saved, Paused]
      csv:
        description: The CSV (one of O(csvs)) the VM lives on; makes it clustered when the host is in a cluster.
        type: str
      scsi_controllers:
        description: Number of SCSI controllers. Defaults to 1 for a new VM.
        type: int
      memory_bytes:
        description: Startup memory.
        type: int
      processor_count:
        description: Virtual processors.
        type: int
      integration_services:
        description: Integration service settings by name (C(VSS) is the backup one).
        type: list
        elements: dict
        suboptions:
          name:
            description: Service name, for example C(VSS) or C(Heartbeat).
            type: str
            required: true
          enabled:
            description: Whether the service is enabled.
            type: bool
          operational_status:
            description: What the guest reports.
            type: str
            choices: [OK, NoContact, LostCommunication, Degraded, Error, Disabled]
      faults:
        description:
          - Faults of this VM only; replaces its list. V(integration_missing), V(integration_no_contact),
            V(recovery_point_fails), V(rct_invalid).
        type: list
        elements: str
      checkpoints:
        description: Names of standard checkpoints the VM must have (created if missing).
        type: list
        elements: str
      disks:
        description: Disks in controller order. New disks are dynamic VHDX files unless O(vms[].disks[].from_file) is set.
        type: list
        elements: dict
        suboptions:
          size:
            description: Virtual size in bytes (default 4 GiB).
            type: int
          block_size:
            description: VHDX block size in bytes (default 32 MiB).
            type: int
          logical_sector_size:
            description: 512 or 4096.
            type: int
            choices: [512, 4096]
          from_file:
            description: A standalone VHDX or VHD file to copy in as this disk (rehearse on your own image).
            type: path
          guest_filesystem:
            description:
              - A partition table and real file systems populated from local directories, made with the file system's own
                tools without mounting anything - NTFS (mkntfs, ntfscp; files at the top level only), ext4 (mkfs.ext4 -d), XFS
                (mkfs.xfs -p, at least 300 MiB) or FAT32 (mkfs.fat, mcopy). Modification times of the sources are kept.
            type: dict
            suboptions:
              scheme:
                description: C(gpt) or C(mbr) (at most 4 partitions).
                type: str
                choices: [gpt, mbr]
                default: gpt
              partitions:
                description: Partitions in disk order, from 1 MiB on.
                type: list
                elements: dict
                required: true
                suboptions:
                  type:
                    description: The file system.
                    type: str
                    required: true
                    choices: [ntfs, ext4, xfs, fat32]
                  source:
                    description: Directory whose files the file system gets (empty when unset).
                    type: path
                  size:
                    description: Size in bytes (the last partition takes the rest of the disk when unset).
                    type: int
                  label:
                    description: Volume label.
                    type: str
          fill:
            description: Deterministic data written into a new disk (1 MiB chunks).
            type: dict
            suboptions:
              seed:
                description: Seed of the data and of the chunks picked.
                type: int
                default: 0
              percent:
                description: Share of the virtual size to fill.
                type: float
                required: true
  churn:
    description:
      - Guest writes into the current disk file of VMs (the newest checkpoint child if any). Always changes.
      - Write C(i) of seed C(s) holds deterministic pseudo-random bytes, so tests can regenerate them.
    type: list
    elements: dict
    suboptions:
      vm:
        description: VM name.
        type: str
        required: true
      disk:
        description: Disk index (controller order).
        type: int
        default: 0
      seed:
        description: Seed of the offsets and the data.
        type: int
        default: 0
      writes:
        description: Number of writes at seeded random 4 KiB-aligned offsets (ignored with O(churn[].offsets)).
        type: int
        default: 16
      write_size:
        description: Bytes per write (a multiple of the logical sector size).
        type: int
        default: 65536
      offsets:
        description: Exact byte offsets to write at instead of random ones.
        type: list
        elements: int
  guest_files:
    description:
      - Guest file writes into a partition of a disk made with O(vms[].disks[].guest_filesystem) (create, change, delete);
        the partition is made again from its changed files and only the blocks that differ are written as guest
        writes, so the next incremental carries the file changes. Always changes.
    type: list
    elements: dict
    suboptions:
      vm:
        description: VM name.
        type: str
        required: true
      disk:
        description: Disk index (controller order).
        type: int
        default: 0
      partition:
        description: Partition number (1 is the first).
        type: int
        default: 1
      files:
        description: The files to write or delete.
        type: list
        elements: dict
        required: true
        suboptions:
          path:
            description: Path from the partition's root, for example C(/etc/app.conf).
            type: str
            required: true
          content:
            description: Text to write.
            type: str
          source:
            description: A local file to copy in instead of O(guest_files[].files[].content).
            type: path
          mtime:
            description: Modification time to give the file (seconds since the epoch; even seconds for FAT32).
            type: int
          state:
            description: C(present) writes the file, C(absent) deletes it (or a directory with everything below it).
            type: str
            choices: [present, absent]
            default: present
  resize_disk:
    description:
      - Grow a disk of a VM without checkpoints. Its RCT ids become invalid, as on Windows
        (0xC03A0022), so the next backup must be full.
    type: dict
    suboptions:
      vm:
        description: VM name.
        type: str
        required: true
      disk:
        description: Disk index.
        type: int
        default: 0
      size:
        description: New virtual size in bytes (larger than the current one).
        type: int
        required: true
  apply_checkpoint:
    description:
      - Apply a standard checkpoint of a VM, as an administrator does in Hyper-V Manager (WMI C(ApplySnapshot)).
        Each disk's current differencing file is discarded with what the guest wrote since, and a new one (a new
        file with its own VirtualDiskId) starts from the checkpoint's state. The VM is C(Off) afterwards.
      - Change tracking is left as the worst case for a backup, the RCT ids stay valid and the reverted blocks are not
        reported as changed, so only the backup's disk identity check notices the rollback.
      - Applied after O(vms) and before O(resize_disk), O(churn) and O(migrate_to). Always changes.
    type: dict
    suboptions:
      vm:
        description: VM name.
        type: str
        required: true
      checkpoint:
        description: Name of the standard checkpoint (the newest of that name when several have it).
        type: str
        required: true
  migrate_to:
    description:
      - Move a VM to another lab host in the same O(lab_directory). A target without RCT (before 2016, or
        a cluster below level 9) invalidates the VM's RCT ids.
    type: dict
    suboptions:
      vm:
        description: VM name.
        type: str
        required: true
      host:
        description: Target lab host name (must exist).
        type: str
        required: true
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying the lab.
    support: full
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: partial
    details:
      - The diff shows the host's settings (era, locale, clock offset, quirks, cluster, CSVs, services, faults) and per VM
        its settings, integration services, standard checkpoints and disk sizes; O(state=absent) shows the whole host going.
      - Guest writes (O(churn)) change disk contents only, which the diff does not show.
      - In check mode O(resize_disk), O(apply_checkpoint) and O(migrate_to) are not foreseen (a real run shows them).
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: posix
notes:
  - The lab host lives on the machine that runs the module (usually the controller with C(delegate_to=localhost)).
  - Files are created owner-only. Concurrent tasks on one lab host are safe (file locks per host and per VM).
seealso:
  - module: hyperv.backup.hyperv_host_info
    description: Every other module reaches a lab host with O(hyperv.backup.hyperv_host_info#module:transport=lab).
  - module: hyperv.backup.hyperv_backup
"""

EXAMPLES = r"""
- name: Build a 2022 lab host with two running VMs
  hyperv.backup.hyperv_lab:
    lab_directory: /srv/lab
    host: hv01
    era: '2022'
    services:
      vss: Running
    vms:
      - name: web01
        disks:
          - size: 2147483648
            fill: {seed: 1, percent: 10}
      - name: db01
        generation: 1
        configuration_version: '9.0'
        disks:
          - size: 1073741824
          - size: 1073741824

- name: A 2008 R2 cluster node with VMs on a CSV and a failing VSS writer
  hyperv.backup.hyperv_lab:
    lab_directory: /srv/lab
    host: old01
    era: 2008r2
    cluster: {name: OLDCLUSTER}
    csvs: ['C:\ClusterStorage\Volume1']
    faults: [vss_writer_failed]
    vms:
      - name: app01
        csv: 'C:\ClusterStorage\Volume1'
        disks: [{size: 1073741824}]

- name: A German Windows Server 2025 host whose clock runs 90 seconds ahead
  hyperv.backup.hyperv_lab:
    lab_directory: /srv/lab
    host: hv25
    era: '2025'
    locale: de-DE
    clock_offset_seconds: 90
    vms:
      - name: app25
        configuration_version: '12.0'
        disks: [{size: 1073741824}]

- name: Hold each shadow copy creation open for 5 seconds (two backups meet VSS's one-at-a-time rule)
  hyperv.backup.hyperv_lab:
    lab_directory: /srv/lab
    host: hv01
    quirks: ['slow_shadow_create_seconds:5']

- name: Guest writes between two backups
  hyperv.backup.hyperv_lab:
    lab_directory: /srv/lab
    host: hv01
    churn:
      - vm: web01
        seed: 7
        writes: 32
  register: churned

- name: Roll web01 back to its checkpoint "before-upgrade" (the next backup must notice and be full)
  hyperv.backup.hyperv_lab:
    lab_directory: /srv/lab
    host: hv01
    apply_checkpoint:
      vm: web01
      checkpoint: before-upgrade

- name: Rehearse on your own image, with the backup integration service not answering
  hyperv.backup.hyperv_lab:
    lab_directory: /srv/lab
    host: hv01
    vms:
      - name: mine
        disks: [{from_file: /images/mine.vhdx}]
        integration_services:
          - name: VSS
            operational_status: NoContact

- name: Remove the lab host
  hyperv.backup.hyperv_lab:
    lab_directory: /srv/lab
    host: hv01
    state: absent
"""

RETURN = r"""
host:
  description: The host facts, as C(get_host_info) returns them (absent after O(state=absent)).
  returned: when state is present and the host exists
  type: dict
  sample:
    computer_name: HV01
    os_name: Microsoft Windows Server 2022 Datacenter
    os_version: 10.0.20348
    os_build: 20348
    cluster: null
    csvs: []
    vss_providers: [{name: Microsoft Software Shadow Copy provider 1.0, id: '{b5946137-7b9f-4925-af80-51abd60b20d5}', type: software}]
    hyperv_vss_writer: {name: Microsoft Hyper-V VSS Writer, id: '{66841cd4-6ded-4f4b-8f17-fd23f8ddc3de}', state: '[1] Stable', last_error: No error}
vms:
  description:
    - Every VM of the host as C(get_vms) returns them (disk C(path) and C(windows_path) are Windows paths, as a real
      host reports them), plus per disk C(local_path), the lab file behind it on this machine.
  returned: when state is present and the host exists
  type: list
  elements: dict
  sample:
    - id: 5f0c6f1e-2b1a-4c55-9a43-0d1c2f3e4a5b
      name: web01
      generation: 2
      configuration_version: '10.0'
      state: Running
      disks:
        - path: C:\Hyper-V\5f0c6f1e-2b1a-4c55-9a43-0d1c2f3e4a5b\Virtual Hard Disks\web01_disk0.vhdx
          windows_path: C:\Hyper-V\5f0c6f1e-2b1a-4c55-9a43-0d1c2f3e4a5b\Virtual Hard Disks\web01_disk0.vhdx
          local_path: /srv/lab/hv01/vms/5f0c6f1e-2b1a-4c55-9a43-0d1c2f3e4a5b/Virtual Hard Disks/web01_disk0.vhdx
          format: vhdx
          virtual_size: 2147483648
churned:
  description: One entry per O(churn) item; C(writes) lists the byte ranges the guest wrote.
  returned: when churn is given
  type: list
  elements: dict
  sample:
    - vm: web01
      vm_id: 5f0c6f1e-2b1a-4c55-9a43-0d1c2f3e4a5b
      disk_id: 0b6a3c1d-7e2f-4a9b-8c1d-2e3f4a5b6c7d
      path: /srv/lab/hv01/vms/5f0c6f1e-2b1a-4c55-9a43-0d1c2f3e4a5b/Virtual Hard Disks/web01_disk0.vhdx
      seed: 7
      writes: [{offset: 1048576, length: 65536}]
applied_checkpoint:
  description: The checkpoint O(apply_checkpoint) applied and the differencing files that were discarded (lab paths).
  returned: when apply_checkpoint is given
  type: dict
  sample:
    vm: web01
    checkpoint: before-upgrade
    discarded: [/srv/lab/hv01/vms/5f0c6f1e-2b1a-4c55-9a43-0d1c2f3e4a5b/Virtual Hard Disks/web01_disk0_0C1D2E3F-4A5B-6C7D-8E9F-0A1B2C3D4E5F.avhdx]
"""

from ansible.module_utils.basic import AnsibleModule, env_fallback

from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_admin, lab_diff
from ansible_collections.hyperv.backup.plugins.module_utils.errors import HyperVBackupError
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_host import LabTransport
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import LabLayout


def argument_spec():
    disk = dict(size=dict(type="int"), block_size=dict(type="int"), logical_sector_size=dict(type="int", choices=[512, 4096]),
                from_file=dict(type="path"),
                fill=dict(type="dict", options=dict(seed=dict(type="int", default=0), percent=dict(type="float", required=True))),
                guest_filesystem=dict(type="dict", options=dict(
                    scheme=dict(type="str", choices=["gpt", "mbr"], default="gpt"),
                    partitions=dict(type="list", elements="dict", required=True, options=dict(
                        type=dict(type="str", required=True, choices=["ntfs", "ext4", "xfs", "fat32"]), source=dict(type="path"),
                        size=dict(type="int"), label=dict(type="str"))))))
    integration = dict(name=dict(type="str", required=True), enabled=dict(type="bool"),
                       operational_status=dict(type="str", choices=["OK", "NoContact", "LostCommunication", "Degraded", "Error", "Disabled"]))
    vm = dict(
        name=dict(type="str", required=True), present=dict(type="bool", default=True), generation=dict(type="int", choices=[1, 2]),
        configuration_version=dict(type="str", choices=["5.0", "6.2", "8.0", "9.0", "10.0", "11.0", "12.0"]),
        state=dict(type="str", choices=["Running", "Off", "Saved", "Paused"]), csv=dict(type="str"),
        scsi_controllers=dict(type="int"), memory_bytes=dict(type="int"), processor_count=dict(type="int"),
        integration_services=dict(type="list", elements="dict", options=integration),
        faults=dict(type="list", elements="str"), checkpoints=dict(type="list", elements="str"),
        disks=dict(type="list", elements="dict", options=disk))
    churn = dict(vm=dict(type="str", required=True), disk=dict(type="int", default=0), seed=dict(type="int", default=0),
                 writes=dict(type="int", default=16), write_size=dict(type="int", default=65536),
                 offsets=dict(type="list", elements="int"))
    return dict(
        transport=dict(type="str", choices=["lab"], default="lab"),
        lab_directory=dict(type="path", required=True, fallback=(env_fallback, ["HYPERV_LAB_DIRECTORY"])),
        host=dict(type="str", required=True, fallback=(env_fallback, ["HYPERV_HOST"])),
        state=dict(type="str", choices=["present", "absent"], default="present"),
        era=dict(type="str", choices=["2008r2", "2012", "2012r2", "2016", "2019", "2022", "2025"]),
        locale=dict(type="str", choices=["en-US", "de-DE"]),
        clock_offset_seconds=dict(type="int"),
        quirks=dict(type="list", elements="str"),
        cluster=dict(type="dict", options=dict(name=dict(type="str"), functional_level=dict(type="int"))),
        csvs=dict(type="list", elements="str"),
        hardware_vss_provider=dict(type="bool"),
        services=dict(type="dict"),
        faults=dict(type="list", elements="str"),
        vms=dict(type="list", elements="dict", options=vm),
        churn=dict(type="list", elements="dict", options=churn),
        guest_files=dict(type="list", elements="dict", options=dict(
            vm=dict(type="str", required=True), disk=dict(type="int", default=0), partition=dict(type="int", default=1),
            files=dict(type="list", elements="dict", required=True, options=dict(
                path=dict(type="str", required=True), content=dict(type="str"), source=dict(type="path"), mtime=dict(type="int"),
                state=dict(type="str", choices=["present", "absent"], default="present"))))),
        resize_disk=dict(type="dict", options=dict(vm=dict(type="str", required=True), disk=dict(type="int", default=0),
                                                   size=dict(type="int", required=True))),
        apply_checkpoint=dict(type="dict", options=dict(vm=dict(type="str", required=True), checkpoint=dict(type="str", required=True))),
        migrate_to=dict(type="dict", options=dict(vm=dict(type="str", required=True), host=dict(type="str", required=True))),
    )


def apply(params, check_mode, planned=None):
    """Apply the module's parameters to the lab; returns the exit_json keyword arguments.

    ``planned`` (a dict) gets the host document and the VM summaries as the task writes them (check mode: would
    write them), for --diff (lab_diff.py)."""
    planned = {} if planned is None else planned
    layout = LabLayout(params["lab_directory"], params["host"])
    if params["state"] == "absent":
        return {"changed": lab_admin.remove_host(layout, check_mode=check_mode)}
    cluster = params["cluster"]
    if cluster is not None and not cluster.get("name"):
        cluster = {}
    changed, planned["host_doc"] = lab_admin.ensure_host(
        layout, era=params["era"], cluster=cluster, csvs=params["csvs"], hardware_vss_provider=params["hardware_vss_provider"],
        services=params["services"], faults=params["faults"], check_mode=check_mode, locale=params["locale"],
        clock_offset_seconds=params["clock_offset_seconds"], quirks=params["quirks"])
    result = {}
    planned["vms"] = {}
    if not layout.exists():   # check mode on a host that does not exist yet
        planned["host_doc"] = lab_diff.new_host_doc(planned["host_doc"], params)
        planned["vms"] = dict((spec["name"], lab_diff.planned_vm_summary(None, spec)) for spec in params["vms"] or [] if spec["present"])
        return {"changed": changed}
    for spec in params["vms"] or []:
        vm_changed, vm = lab_admin.ensure_vm(layout, spec, check_mode=check_mode)
        changed = changed or vm_changed
        planned["vms"][spec["name"]] = lab_diff.planned_vm_summary(vm, spec) if spec["present"] else None
    if params["apply_checkpoint"]:
        item = params["apply_checkpoint"]
        discarded = lab_admin.apply_checkpoint(layout, item["vm"], item["checkpoint"], check_mode=check_mode)
        result["applied_checkpoint"] = {"vm": item["vm"], "checkpoint": item["checkpoint"], "discarded": discarded}
        changed = True
    if params["resize_disk"]:
        item = params["resize_disk"]
        changed = lab_admin.resize_disk(layout, item["vm"], disk=item["disk"], size=item["size"], check_mode=check_mode) or changed
    if params["churn"]:
        result["churned"] = [lab_admin.churn(layout, item["vm"], seed=item["seed"], writes=item["writes"],
                                             write_size=item["write_size"], offsets=item["offsets"], disk=item["disk"],
                                             check_mode=check_mode) for item in params["churn"]]
        changed = True
    if params["guest_files"]:
        result["guest_files"] = [lab_admin.guest_files(layout, item["vm"], item["files"], disk=item["disk"], partition=item["partition"],
                                                       check_mode=check_mode) for item in params["guest_files"]]
        changed = True
    if params["migrate_to"]:
        item = params["migrate_to"]
        changed = lab_admin.migrate_vm(layout, item["vm"], item["host"], check_mode=check_mode) or changed
    result["host"], result["vms"] = LabTransport(params["lab_directory"], params["host"]).facts()
    result["changed"] = changed
    return result


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    params = module.params
    try:
        layout = LabLayout(params["lab_directory"], params["host"])
        before = lab_diff.host_summary(layout) if module._diff else None
        planned = {}
        result = apply(params, module.check_mode, planned)
        if module._diff:
            result["diff"] = lab_diff.lab_diff(layout, before, lab_diff.after_summary(
                layout, before, planned, check_mode=module.check_mode, removed=params["state"] == "absent", changed=result["changed"]))
    except HyperVBackupError as err:
        module.fail_json(msg=str(err), **err.details())
    except ValueError as err:
        module.fail_json(msg="hyperv_lab on lab host %s: %s" % (module.params["host"], err))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
