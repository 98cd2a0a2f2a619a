# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One moment of a lab host as the WMI emulation sees it: host.json, every vm.json, planned systems, jobs.

A ``World`` is read fresh for every bridge call (Ansible forks change the files in between) and is
never written back: methods lock and re-read the VM they change (``lab_vm`` conventions). It also
holds the identifiers the emulation derives from the lab's ids (always the same for the same VM,
checkpoint and disk slot) and the Windows <-> local path mapping (``lab_files``, helper H3).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ntpath
import os

from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge import BridgeError
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import host_faults, read_json
from ansible_collections.hyperv.backup.plugins.module_utils.lab.wmi_model import JobStore, guid_for

PLANNED_DIR = "wmi-planned"
VSS_IC_GUID = "5CED1297-4598-4915-A5FC-AD21BB4D02A4"
IDE_CONTROLLER_GUID = "83F8638B-8DCA-4152-9EDA-2CA8B33039B4"
FALLBACK_ROOT = "C:\\LabHost"


def _lab_files():
    try:
        from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_files   # helper H3's module
        return lab_files
    except ImportError:
        return None


def to_windows(layout, local_path, mapping=None):
    """The Windows path a real host would report for a lab file (lab_files when present, else C:\\LabHost\\...)."""
    files = _lab_files()
    if files is not None:
        return files.to_windows(layout, local_path, mapping=mapping)
    relative = os.path.relpath(os.path.abspath(local_path), layout.host_dir)
    return ntpath.join(FALLBACK_ROOT, *relative.split(os.sep)) if relative != "." else FALLBACK_ROOT


def to_local(layout, windows_path, mapping=None):
    """The lab file behind a Windows path, or None when no prefix of the path map covers it."""
    files = _lab_files()
    if files is not None:
        try:
            return files.to_local(layout, windows_path, mapping=mapping)
        except BridgeError:
            return None
    text = str(windows_path or "")
    if text.lower() == FALLBACK_ROOT.lower() or text.lower().startswith(FALLBACK_ROOT.lower() + "\\"):
        parts = [part for part in text[len(FALLBACK_ROOT):].split("\\") if part]
        return os.path.join(layout.host_dir, *parts)
    return None


def path_map(layout):
    files = _lab_files()
    if files is not None:
        return files.path_map(layout)
    return {FALLBACK_ROOT: layout.host_dir}


class World:
    """The lab host's files read once; see the module docstring."""

    def __init__(self, layout, host_doc, era, locale):
        self.layout = layout
        self.host_doc = host_doc
        self.era = era
        self.locale = locale
        self.computer = str(host_doc["name"]).upper()
        self.vms = []
        for vm_id in layout.vm_ids():
            try:
                self.vms.append(layout.read_vm(vm_id))
            except (OSError, ValueError):   # removed or being replaced while listing
                continue
        self.vms.sort(key=lambda vm: (vm["name"].lower(), vm["id"]))
        self.jobs = JobStore(layout.host_dir)
        self._mapping = None
        self.planned = []
        planned_dir = os.path.join(layout.host_dir, PLANNED_DIR)
        if os.path.isdir(planned_dir):
            for name in sorted(os.listdir(planned_dir)):
                if name.endswith(".json") and not name.startswith("."):
                    try:
                        self.planned.append(read_json(os.path.join(planned_dir, name)))
                    except (OSError, ValueError):
                        continue

    def win(self, local_path):
        if self._mapping is None:
            self._mapping = path_map(self.layout)
        return to_windows(self.layout, local_path, self._mapping)

    def local(self, windows_path):
        """The lab file behind a Windows path (None outside the path map)."""
        if not isinstance(windows_path, str) or not windows_path:
            return None
        if self._mapping is None:
            self._mapping = path_map(self.layout)
        return to_local(self.layout, windows_path, self._mapping)

    def faults(self, vm=None):
        return host_faults(self.host_doc, vm)

    def quirks(self):
        return set(str(quirk).partition(":")[0] for quirk in self.host_doc.get("quirks") or [])

    def vm_by_guid(self, guid):
        for vm in self.vms:
            if vm["id"].lower() == str(guid).lower():
                return vm
        return None

    def checkpoint_by_guid(self, guid):
        """(vm, checkpoint) whose checkpoint id is ``guid``, or (None, None)."""
        for vm in self.vms:
            for cp in vm["checkpoints"]:
                if cp["id"].lower() == str(guid).lower():
                    return vm, cp
        return None, None

    def planned_by_guid(self, guid):
        for planned in self.planned:
            if planned["id"].lower() == str(guid).lower():
                return planned
        return None


# --- identifiers -------------------------------------------------------------------------------

def vm_guid(vm):
    return vm["id"].upper()


def settings_id(guid):
    """VSSD InstanceID: "Microsoft:<VM GUID>" for a VM (observed); the same form for a checkpoint (UNCONFIRMED)."""
    return "Microsoft:%s" % guid.upper()


def guid_of_settings(instance_id):
    text = str(instance_id or "")
    return text.split(":", 1)[1] if text.lower().startswith("microsoft:") else None


def controllers_of(vm):
    """[(type, number)] of the VM's storage controllers: Gen 1 has IDE 0 and 1, plus its SCSI controllers."""
    out = [("IDE", 0), ("IDE", 1)] if vm.get("generation", 2) == 1 else []
    scsi = int(vm.get("scsi_controllers") or 0)
    used = [disk["controller_number"] for disk in vm.get("disks", []) + vm.get("passthrough_disks", [])
            if disk["controller_type"] == "SCSI"]
    if used:
        scsi = max(scsi, max(used) + 1)
    out.extend(("SCSI", number) for number in range(scsi))
    return out


def controller_id(owner_guid, vm, ctype, number):
    """Controller RASD InstanceID; the device GUID is the VM's, the prefix the owner's (VM or checkpoint)."""
    if ctype == "IDE":
        return "Microsoft:%s\\%s\\%d" % (owner_guid, IDE_CONTROLLER_GUID, number)
    return "Microsoft:%s\\%s\\0" % (owner_guid, guid_for(vm["id"], "scsi", number))


def drive_id(owner_guid, vm, slot):
    ctype, number, location = slot
    return "%s\\%d\\D" % (controller_id(owner_guid, vm, ctype, number), location)


def image_id(owner_guid, vm, slot):
    """SASD InstanceID, "Microsoft:<VM GUID>\\<GUID>\\<n>\\<m>\\L" as observed; what reference points list."""
    ctype, number, location = slot
    return "%s\\%d\\L" % (controller_id(owner_guid, vm, ctype, number), location)


def slot_of(disk):
    return disk["controller_type"], disk["controller_number"], disk["controller_location"]


def vss_settings_id(owner_guid):
    return "Microsoft:%s\\%s" % (owner_guid, VSS_IC_GUID)
