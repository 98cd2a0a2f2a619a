# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The virtual disks of one set of VM settings (current or a checkpoint), as DISK_SHAPE dicts.

Both ``get_vms`` (current settings) and the recovery points (a checkpoint's settings) read disks
here, so that paths, chains and disk ids agree. The chain inside one VSSD (hyperv_wmi.md section 2)::

    controller RASD (IDE: Address "0"/"1"; SCSI: no Address, numbered by enumeration order)
      <-Parent- drive RASD (AddressOnParent = location; "Physical Disk Drive" = pass-through)
        <-Parent- SASD (v2) / RASD (v1) "Virtual Hard Disk": HostResource[0] (v1: Connection[0]) = file

Facts come from GetVirtualHardDiskSettingData (v2) or GetVirtualHardDiskInfo (v1), following
ParentPath for ``parent_chain``. One unreadable disk (a missing file, a pass-through disk) becomes an
entry with ``problem`` instead of failing the whole inventory (issue point 14).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError
from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge import BridgeError
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import wmi

# ResourceSubType values: v2 [hyperv_wmi.md 2; os-win vmutilsv2], v1 without "Hyper-V:" [schema v1 RASD notes].
SUBTYPES = {
    "v2": {"ide": "Microsoft:Hyper-V:Emulated IDE Controller", "scsi": "Microsoft:Hyper-V:Synthetic SCSI Controller",
           "drive": "Microsoft:Hyper-V:Synthetic Disk Drive", "physical": "Microsoft:Hyper-V:Physical Disk Drive",
           "vhd": "Microsoft:Hyper-V:Virtual Hard Disk"},
    "v1": {"ide": "Microsoft Emulated IDE Controller", "scsi": "Microsoft Synthetic SCSI Controller",
           "drive": "Microsoft Synthetic Disk Drive", "physical": "Microsoft Physical Disk Drive",
           "vhd": "Microsoft Virtual Hard Disk"},
}
FORMATS = {2: "vhd", 3: "vhdx", 4: "vhds"}
TYPES = {2: "fixed", 3: "dynamic", 4: "differencing"}
MAX_CHAIN = 256
_INSTANCE_ID_KEY = re.compile(r'InstanceID="((?:[^"\\]|\\.)*)"', re.IGNORECASE)


def subtypes(ns):
    return SUBTYPES["v1" if wmi.is_v1(ns) else "v2"]


def settings_components(bridge, ns, vssd, operation):
    """Every RASD / SASD / component setting of one VSSD (Msvm_VirtualSystemSettingDataComponent)."""
    try:
        return bridge.associators(ns, vssd["__PATH"], "Msvm_VirtualSystemSettingDataComponent")
    except BridgeError as exc:
        raise wmi.bridge_failure(bridge, operation, exc, "reading the devices of %s" % vssd.get("ElementName"))


def _instance_id_of(path):
    """The InstanceID key inside an object path (Parent values), unescaped; None when absent.

    Parent holds an object path that Windows formats itself; comparing it with the bridge's
    __PATH text alone would depend on server-name and escaping details, so the key is compared too.
    """
    match = _INSTANCE_ID_KEY.search(str(path or ""))
    return match.group(1).replace("\\\\", "\\") if match else None


def is_parent(child, parent):
    """True when ``child.Parent`` refers to ``parent``."""
    reference = child.get("Parent")
    if not reference:
        return False
    if str(reference).lower() == str(parent.get("__PATH") or "").lower():
        return True
    key = _instance_id_of(reference)
    return key is not None and key.lower() == str(parent.get("InstanceID") or "").lower()


def storage_parts(parts):
    """The RASDs and SASDs among a VSSD's components (other setting classes are not read)."""
    return [p for p in parts if p.get("__CLASS") in ("Msvm_ResourceAllocationSettingData", "Msvm_StorageAllocationSettingData")]


def count_scsi_controllers(parts, ns):
    return len([p for p in storage_parts(parts) if p.get("ResourceSubType") == subtypes(ns)["scsi"]])


def disks_of(bridge, ns, parts, operation):
    """DISK_SHAPE entries of the virtual hard disks and pass-through disks among ``parts``."""
    names = subtypes(ns)
    parts = storage_parts(parts)
    controllers = [p for p in parts if p.get("ResourceSubType") in (names["ide"], names["scsi"])]
    scsi = [c for c in controllers if c.get("ResourceSubType") == names["scsi"]]
    drives = [p for p in parts if p.get("ResourceSubType") in (names["drive"], names["physical"])]
    media = [p for p in parts if p.get("ResourceSubType") == names["vhd"]]
    used = set()
    out = []
    for drive in drives:
        slot = _slot(drive, controllers, scsi, names, wmi.is_v1(ns))
        if drive.get("ResourceSubType") == names["physical"]:
            out.append(_passthrough(drive, slot))
            continue
        for index, medium in enumerate(media):
            if index not in used and is_parent(medium, drive):
                used.add(index)
                out.append(describe_medium(bridge, ns, medium, slot, operation))
    for index, medium in enumerate(media):
        if index not in used:       # a medium whose drive was not found: still a disk of the VM
            out.append(describe_medium(bridge, ns, medium, (None, None, None), operation))
    out.sort(key=lambda d: (d["controller_type"] != "IDE", d["controller_type"] is None, d["controller_number"] or 0,
                            d["controller_location"] or 0))
    return out


def _slot(drive, controllers, scsi, names, v1=False):
    """(controller_type, controller_number, controller_location) of a drive.

    v2 drives carry the location in AddressOnParent; v1 drives in Address (os-win's v1 code set
    Address on drives, its v2 code AddressOnParent; UNCONFIRMED beyond that code: the other one is
    the fallback either way).
    """
    first, second = ("Address", "AddressOnParent") if v1 else ("AddressOnParent", "Address")
    location = wmi.as_int(drive.get(first))
    if location is None:
        location = wmi.as_int(drive.get(second))
    for controller in controllers:
        if is_parent(drive, controller):
            if controller.get("ResourceSubType") == names["ide"]:
                return "IDE", wmi.as_int(controller.get("Address"), 0), location
            # SCSI controllers have no Address; PowerShell and os-win number them by enumeration order.
            return "SCSI", scsi.index(controller), location
    return None, None, location


def medium_path(medium):
    """The file of a virtual hard disk setting: HostResource[0] (v2 SASD); v1 RASDs carry it in Connection[0]."""
    return wmi.first(medium.get("HostResource")) or wmi.first(medium.get("Connection"))


def _blank(path, slot, problem=None):
    entry = {"path": path, "windows_path": path, "format": None, "type": None, "virtual_size": None, "block_size": None,
             "logical_sector_size": None, "disk_id": wmi.substitute_disk_id(path), "controller_type": slot[0],
             "controller_number": slot[1], "controller_location": slot[2], "parent_chain": [],
             "file_disk_id": wmi.substitute_disk_id(path), "chain_disk_ids": []}
    if problem:
        entry["problem"] = problem
    return entry


def _passthrough(drive, slot):
    physical = wmi.first(drive.get("HostResource"))
    entry = _blank(None, slot, "pass-through disk (%s): Hyper-V checkpoints and the Hyper-V VSS writer leave pass-through "
                               "disks out, so it is not part of any backup" % (physical or "physical disk"))
    entry["disk_id"] = wmi.substitute_disk_id(physical or drive.get("InstanceID"))
    return entry


def describe_medium(bridge, ns, medium, slot, operation):
    path = medium_path(medium)
    if not path:
        return _blank(None, slot, "the virtual hard disk setting %s names no file" % medium.get("InstanceID"))
    return describe_file(bridge, ns, path, slot, operation)


def describe_file(bridge, ns, path, slot=(None, None, None), operation="get_vms"):
    """DISK_SHAPE for one file; a file Hyper-V cannot open gives an entry with ``problem``."""
    try:
        facts = file_facts(bridge, ns, path, operation)
    except HostOperationError as exc:
        if exc.category in ("unreachable", "authentication"):
            raise
        return _blank(path, slot, "Hyper-V cannot read the virtual hard disk %s (it may be missing or in use): %s"
                      % (path, exc.message))
    chain, problem = [], None
    # Each file's own VirtualDiskId, top to base: what a backup records to notice later that the disk was rolled
    # back (a checkpoint applied, the file restored in place), issue 12 point 4. Read with the facts the chain
    # walk reads anyway: no extra call.
    chain_ids = [_own_id(facts, path)]
    parent = facts["parent_path"]
    while parent and len(chain) < MAX_CHAIN:
        if parent.lower() in [p.lower() for p in chain] or parent.lower() == path.lower():
            problem = "the parent chain of %s loops at %s" % (path, parent)
            break
        chain.append(parent)
        try:
            parent_facts = file_facts(bridge, ns, parent, operation)
            chain_ids.append(_own_id(parent_facts, parent))
            parent = parent_facts["parent_path"]
        except HostOperationError as exc:
            if exc.category in ("unreachable", "authentication"):
                raise
            problem = "the parent %s of %s cannot be read (missing or moved?): %s" % (parent, path, exc.message)
            break
    base = chain[-1] if chain else path
    entry = {"path": path, "windows_path": path, "format": facts["format"], "type": facts["type"],
             "virtual_size": facts["virtual_size"], "block_size": facts["block_size"],
             "logical_sector_size": facts["logical_sector_size"],
             # VirtualDiskId is empty before 2012 R2 (and absent in v1): then a stable substitute (issue point 5).
             "disk_id": facts["disk_id"] or wmi.substitute_disk_id(base), "controller_type": slot[0],
             "controller_number": slot[1], "controller_location": slot[2], "parent_chain": chain,
             "file_disk_id": chain_ids[0], "chain_disk_ids": chain_ids}
    if problem:
        entry["problem"] = problem
    return entry


def _own_id(facts, path):
    """A file's own VirtualDiskId; before 2012 R2 (none reported) the path-based substitute of that file."""
    return facts["disk_id"] or wmi.substitute_disk_id(path)


def _embedded(bridge, operation, result, name, path):
    """The embedded instance out-parameter ``name`` as a dict; unreadable CIM-XML fails this disk only."""
    text = (result.get("out") or {}).get(name)
    try:
        return wmi.parse_embedded(text) or {}
    except (ValueError, SyntaxError) as exc:     # CimXmlError is a ValueError, ElementTree's ParseError a SyntaxError
        raise HostOperationError(wmi.host_of(bridge), operation, "failed", "the %s of %s is not a readable embedded instance: %s"
                                 % (name, path, exc), hint="Report this with the host's Windows version; the bridge returned "
                                                           "unexpected CIM-XML.")


def file_facts(bridge, ns, path, operation="get_vms"):
    """{format, type, virtual_size, block_size, logical_sector_size, disk_id|None, parent_path|None} of one file."""
    ims = wmi.service(bridge, wmi.IMAGE_SERVICE, operation, ns)
    if wmi.is_v1(ns):
        result = wmi.call(bridge, operation, ns, ims["__PATH"], "GetVirtualHardDiskInfo", {"Path": path},
                          category="not_found", code_categories={32779: "not_found"},
                          what="GetVirtualHardDiskInfo(%s)" % path)
        info = _embedded(bridge, operation, result, "Info", path)
        # v1 knows VHD only (hyperv_wmi.md section 6); its sectors are 512 bytes and it reports no block size.
        return {"format": "vhd", "type": TYPES.get(wmi.as_int(info.get("Type"))),
                "virtual_size": wmi.as_int(info.get("MaxInternalSize")), "block_size": None, "logical_sector_size": 512,
                "disk_id": None, "parent_path": info.get("ParentPath") or None}
    result = wmi.call(bridge, operation, ns, ims["__PATH"], "GetVirtualHardDiskSettingData", {"Path": path},
                      category="not_found", code_categories={32779: "not_found"},
                      what="GetVirtualHardDiskSettingData(%s)" % path)
    data = _embedded(bridge, operation, result, "SettingData", path)
    disk_id = data.get("VirtualDiskId")
    if wmi.canonical_guid(disk_id) == "00000000-0000-0000-0000-000000000000":
        disk_id = None
    return {"format": FORMATS.get(wmi.as_int(data.get("Format"))), "type": TYPES.get(wmi.as_int(data.get("Type"))),
            "virtual_size": wmi.as_int(data.get("MaxInternalSize")), "block_size": wmi.as_int(data.get("BlockSize")),
            "logical_sector_size": wmi.as_int(data.get("LogicalSectorSize")),
            "disk_id": (wmi.canonical_guid(disk_id) or str(disk_id).lower()) if disk_id else None,
            "parent_path": data.get("ParentPath") or None}
