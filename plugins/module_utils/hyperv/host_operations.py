# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The catalogue of named host operations: the one contract between modules and hosts.

A module asks a host session to ``run(name, **params)``. Every transport answers the same
operations with the same result shapes: ``psrp`` and ``winrm`` by running the PowerShell script of
that name (``powershell_scripts.py``), ``lab`` by the emulator (``lab_host.py``). This module says
which operations exist, which parameters each takes, and what each returns, so that the scripts,
the emulator and the modules can be checked against one list.

Result conventions: snake_case keys, sizes in bytes, times as ISO 8601 UTC strings, ids as strings
(VM ids are lowercase GUIDs without braces). Failures are raised as ``HostOperationError`` with a
``category`` from ``ERROR_CATEGORIES``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


# Error categories a transport maps its failures to, so modules can react without parsing text.
ERROR_CATEGORIES = (
    "unreachable",        # the host did not answer (DNS, TCP, TLS, timeout)
    "authentication",     # credentials refused
    "not_found",          # a named VM, disk, checkpoint or reference point does not exist
    "service",            # a Windows service could not be started or queried
    "integration",        # the guest backup integration service is missing, off or not answering
    "recovery_point",     # creating, converting or removing a checkpoint failed
    "change_tracking",    # an RCT id is invalid, missing, or tracking is off (fall back to full)
    "unsupported",        # the host or VM cannot do what was asked (era, version, format)
    "busy",               # the operation is unsafe now (e.g. another backup holds the CSV)
    "failed",             # anything else Windows reported
)


class Operation:
    """One named host operation: its parameters (name -> (type, required)) and a result summary."""

    def __init__(self, name, params, returns, summary):
        self.name = name
        self.params = params
        self.returns = returns
        self.summary = summary

    def check_params(self, given):
        """Return the parameters with unknown ones refused and required ones enforced."""
        unknown = sorted(set(given) - set(self.params))
        if unknown:
            raise ValueError("operation %s does not take parameter(s): %s" % (self.name, ", ".join(unknown)))
        missing = sorted(k for k, (_t, required) in self.params.items() if required and given.get(k) is None)
        if missing:
            raise ValueError("operation %s needs parameter(s): %s" % (self.name, ", ".join(missing)))
        return dict((k, v) for k, v in given.items() if v is not None)


def _op(name, params, returns, summary):
    return Operation(name, params, returns, summary)


# Shapes reused below (documentation for implementers and for RETURN blocks).
DISK_SHAPE = (
    "{path, format: 'vhdx'|'vhd', type: 'fixed'|'dynamic'|'differencing', virtual_size, block_size, "
    "logical_sector_size, disk_id, controller_type: 'IDE'|'SCSI', controller_number, controller_location, "
    "parent_chain: [paths from the disk's parent to the base]}"
)
VM_SHAPE = (
    "{id, name, generation, configuration_version, state: 'Running'|'Off'|'Saved'|'Paused', "
    "path, clustered, csv_path|null, scsi_controllers, "
    "integration_services: [{name, enabled, operational_status: 'OK'|'NoContact'|'LostCommunication'|"
    "'Degraded'|'Error'|'Disabled'}], disks: [DISK], "
    "checkpoints: [{id, name, type: 'Standard'|'Recovery', created, ours}], "
    "reference_points: [{id, created, type: 'RCT', rct_ids: {disk_id: rct_id}}]}"
)
RECOVERY_POINT_SHAPE = (
    "{id, vm_id, vm_name, name, method: 'rct'|'vss', consistency: 'application'|'crash', created, "
    "disks: [DISK with path = the frozen file to read], configuration: {files: [paths], ...}}"
)

OPERATIONS = dict((op.name, op) for op in [
    _op("get_host_info", {}, (
        "{computer_name, os_name, os_version, os_build, cluster: {name, functional_level}|null, "
        "csvs: [{name, path}], vss_providers: [{name, id, type: 'software'|'hardware'}], "
        "hyperv_vss_writer: {name, id, state, last_error}}"),
        "Host version and build, cluster and CSVs, VSS providers and the Hyper-V VSS writer."),
    _op("get_service", {"name": (str, True)},
        "{name, display_name, status: 'Running'|'Stopped'|..., start_type}",
        "State of one Windows service (vss, swprv, vmms)."),
    _op("start_service", {"name": (str, True)},
        "{name, display_name, status, previous_status, changed}",
        "Start a service if it is not running; fails with category 'service' if it will not start."),
    _op("get_vms", {"names": (list, False), "ids": (list, False)},
        "[VM] -- all VMs, or those named; a name that matches nothing raises not_found",
        "VMs with configuration version, state, disks, integration services, checkpoints, reference points."),
    _op("enable_integration_service", {"vm_id": (str, True), "name": (str, True)},
        "{vm_id, name, enabled, operational_status, changed}",
        "Enable a guest integration service (the backup one is 'VSS')."),
    _op("create_recovery_point", {
        "vm_id": (str, True), "method": (str, True), "consistency": (str, True), "tag": (str, True)},
        RECOVERY_POINT_SHAPE + " plus consistency_fallback: bool",
        "Create a recovery checkpoint (rct: WMI CreateSnapshot type 32768; vss: host VSS with the "
        "Hyper-V writer). consistency is 'application' or 'application_or_crash'. tag names it as ours."),
    _op("get_recovery_points", {"vm_id": (str, True)},
        "[RECOVERY_POINT]",
        "Recovery checkpoints of a VM (ours and others', with 'ours' set from the tag)."),
    _op("remove_recovery_point", {"vm_id": (str, True), "id": (str, True)},
        "{id, removed: bool}",
        "Remove a recovery checkpoint (its differencing disks merge back)."),
    _op("convert_to_reference_point", {"vm_id": (str, True), "id": (str, True)},
        "{id, vm_id, created, consistency, rct_ids: {disk_id: rct_id}}",
        "Convert an RCT recovery checkpoint to a reference point (the checkpoint goes away)."),
    _op("get_reference_points", {"vm_id": (str, True)},
        "[{id, vm_id, created, consistency, rct_ids: {disk_id: rct_id}}]",
        "Reference points of a VM, oldest first."),
    _op("remove_reference_point", {"vm_id": (str, True), "id": (str, True)},
        "{id, removed: bool}",
        "Destroy a reference point."),
    _op("get_disk_changes", {
        "path": (str, True), "limit_id": (str, True), "byte_offset": (int, True), "byte_length": (int, True)},
        "{processed_byte_length, changed_byte_offsets: [int], changed_byte_lengths: [int]}",
        "One page of the RCT change list of a frozen disk since limit_id (GetVirtualDiskChanges); "
        "an invalid or unknown limit_id raises category 'change_tracking'."),
    _op("get_vm_configuration", {"vm_id": (str, True), "recovery_point_id": (str, False)},
        "{vm_id, name, generation, configuration_version, memory_bytes, processor_count, files: [paths], "
        "document: {...}}",
        "The VM's configuration as captured with a recovery point (the .vmcx and its siblings)."),
    _op("import_vm", {"configuration": (dict, True), "disk_paths": (list, True), "new_name": (str, False),
                      "generate_new_id": (bool, False)},
        "{vm_id, name, state}",
        "Register a VM from a captured configuration with the given (restored) disks."),
])


def get_operation(name):
    """Return the Operation called ``name`` or raise ValueError naming the known ones."""
    try:
        return OPERATIONS[name]
    except KeyError:
        raise ValueError("unknown host operation %r; known: %s" % (name, ", ".join(sorted(OPERATIONS))))
