# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The catalogue of named host operations: the one contract between modules and hosts.

A module asks a host session to ``run(name, **params)``. The session calls ``run_operation(bridge,
name, params)``, which checks the parameters and runs the Python function of that name in
``hyperv/`` over the WMI bridge (``host/bridge.py``): the same code for real hosts (psrp, winrm)
and for the lab (``LabBridge``). This module says which operations exist, which parameters each
takes, what each returns, and which function answers it.

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
    "parent_chain: [paths from the disk's parent to the base], windows_path, "
    "file_disk_id: (the file's own VirtualDiskId), chain_disk_ids: [VirtualDiskId of the file then of each parent up to the base], "
    "problem: text (only for a disk that cannot be backed up or read: pass-through, missing file)}"
)
VM_SHAPE = (
    "{id, name, generation, configuration_version|null, state: 'Running'|'Off'|'Saved'|'Paused' (or, while the VM changes "
    "state, 'Starting'|'Stopping'|'Saving'|'Pausing'|'Resuming'), "
    "path, windows_path, clustered, csv_path|null, scsi_controllers, "
    "integration_services: [{name, id, enabled, operational_status: 'OK'|'NoContact'|'LostCommunication'|"
    "'Degraded'|'Error'|'Disabled'}], disks: [DISK], "
    "checkpoints: [{id, name, type: 'Standard'|'Recovery', created, ours}], "
    "reference_points: [{id, created, type: 'RCT', rct_ids: {disk_id: rct_id}}], "
    "problem: text (only when part of the VM could not be read; the VM is still listed)}"
)
RECOVERY_POINT_SHAPE = (
    "{id, vm_id, vm_name, name, method: 'rct'|'vss', consistency: 'application'|'crash', created, "
    "disks: [DISK with path = the frozen file to read], configuration: {files: [paths], ...}}"
)

OPERATIONS = dict((op.name, op) for op in [
    _op("get_host_info", {}, (
        "{computer_name, os_name, os_version, os_build, cluster: {name, functional_level}|null, "
        "csvs: [{name, path}], vss_providers: [{name, id, type: 'software'|'hardware'}], "
        "hyperv_vss_writer: {name, id, state ('[1] Stable' as vssadmin prints it), state_number, last_error}}"),
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
        "vm_id": (str, True), "method": (str, True), "consistency": (str, True), "tag": (str, True),
        # optional (issue 11): the 2008 R2 queue key of method_choice.parallel_safety, held as a lease (hyperv/locks.py)
        "serialization_key": (str, False)},
        RECOVERY_POINT_SHAPE + " plus consistency_fallback: bool",
        "Create a recovery checkpoint (rct: WMI CreateSnapshot type 32768; vss: host VSS with the "
        "Hyper-V writer). consistency is 'application' or 'application_or_crash'. tag names it as ours."),
    _op("get_recovery_points", {"vm_id": (str, True)},
        "[RECOVERY_POINT plus ours, held_by_live_run: bool (the run that made it still holds the VM's lease)]",
        "Recovery checkpoints of a VM (ours and others', with 'ours' set from the tag)."),
    _op("remove_recovery_point", {"vm_id": (str, True), "id": (str, True)},
        "{id, removed: bool}",
        "Remove a recovery checkpoint (its differencing disks merge back)."),
    _op("convert_to_reference_point", {"vm_id": (str, True), "id": (str, True),
                                       # optional (issue 11): recorded in the point's ownership marker (point 3)
                                       "repository_id": (str, False)},
        "{id, vm_id, created, consistency, type, ours, rct_ids: {disk_id: rct_id}, recovery_point_id, repositories, run_id, "
        "problem}",
        "Convert an RCT recovery checkpoint to a reference point (the checkpoint goes away)."),
    _op("get_reference_points", {"vm_id": (str, True)},
        "[{id, vm_id, created|null, consistency, type: 'RCT'|'Log', ours: bool, rct_ids: {disk_id: rct_id}, "
        "recovery_point_id|null, repositories: [repository ids], run_id|null, problem|null}]",
        "Reference points of a VM, oldest first (ours by the creation time our marker records; others' first)."),
    _op("remove_reference_point", {"vm_id": (str, True), "id": (str, True)},
        "{id, removed: bool}",
        "Destroy a reference point of ours (RCT); another product's or a log-based one is refused ('unsupported')."),
    _op("get_disk_changes", {
        "path": (str, True), "limit_id": (str, True), "byte_offset": (int, True), "byte_length": (int, True),
        # optional (issue 14): up to this many pages in one round trip (the loop runs on the host); default 1
        "max_pages": (int, False)},
        "{processed_byte_length, changed_byte_offsets: [int], changed_byte_lengths: [int], pages: int}",
        "Pages of the RCT change list of a frozen disk since limit_id (GetVirtualDiskChanges), from byte_offset within "
        "byte_length: one page, or up to max_pages; an invalid or unknown limit_id raises category 'change_tracking'."),
    _op("get_vm_configuration", {"vm_id": (str, True), "recovery_point_id": (str, False)},
        "{vm_id, name, generation, configuration_version, memory_bytes: null, processor_count: null, "
        "files: [{name, path, content (base64), length}], skipped_files: [{name, length, reason}], "
        "document: {id, name, generation, configuration_version, configuration_path, captured_from: "
        "'recovery_checkpoint'|'vss'|'live', format, disks: [{path, file_name, disk_id, controller_type, "
        "controller_number, controller_location}], ...}}",
        "The VM's configuration as captured with a recovery point: the files' content, read while the point exists "
        "(a recovery checkpoint's .vmcx/.xml and siblings, or the files in a host-VSS shadow copy)."),
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


# Operation -> (module under hyperv/, function). Imported when the operation runs, so that a module
# that is missing or broken fails only its own operations.
FUNCTIONS = {
    "get_host_info": ("inventory", "get_host_info"),
    "get_service": ("inventory", "get_service"),
    "start_service": ("inventory", "start_service"),
    "get_vms": ("inventory", "get_vms"),
    "enable_integration_service": ("inventory", "enable_integration_service"),
    "create_recovery_point": ("checkpoints", "create_recovery_point"),
    "get_recovery_points": ("checkpoints", "get_recovery_points"),
    "remove_recovery_point": ("checkpoints", "remove_recovery_point"),
    "convert_to_reference_point": ("reference_points", "convert_to_reference_point"),
    "get_reference_points": ("reference_points", "get_reference_points"),
    "remove_reference_point": ("reference_points", "remove_reference_point"),
    "get_disk_changes": ("change_tracking", "get_disk_changes"),
    "get_vm_configuration": ("vm_configuration", "get_vm_configuration"),
    "import_vm": ("vm_import", "import_vm"),
}


def _operation_module(module_name):
    """The module under hyperv/ named in FUNCTIONS, imported now.

    Written out as import statements (not importlib) because Ansible packs into a module's AnsiballZ
    payload only the module_utils it finds in import statements: a name built at run time would be
    missing on the managed node ("No module named ...hyperv.inventory").
    """
    # pylint: disable=import-outside-toplevel
    if module_name == "inventory":
        from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import inventory as module
    elif module_name == "checkpoints":
        from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import checkpoints as module
    elif module_name == "reference_points":
        from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import reference_points as module
    elif module_name == "change_tracking":
        from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import change_tracking as module
    elif module_name == "vm_configuration":
        from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import vm_configuration as module
    elif module_name == "vm_import":
        from ansible_collections.hyperv.backup.plugins.module_utils.hyperv import vm_import as module
    else:
        raise ImportError("no operation module %s" % module_name)
    return module


def operation_function(name):
    """The Python function that answers operation ``name`` (imported now)."""
    module_name, function_name = FUNCTIONS[name]
    return getattr(_operation_module(module_name), function_name)


def run_operation(bridge, name, params=None):
    """Check ``params`` against the operation and run it over ``bridge``; returns the documented shape.

    Unknown operations and parameters raise HostOperationError (category 'failed': a caller bug).
    An operation whose module cannot be imported fails alone, with category 'unsupported'.
    """
    # Imported here: errors.py is light, but this module is imported by everything else.
    from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError

    host = getattr(bridge, "host", None) or "host"
    try:
        checked = get_operation(name).check_params(dict(params or {}))
    except ValueError as exc:
        raise HostOperationError(host, name, "failed", str(exc),
                                 hint="This is a bug in the calling module; report it with the task that failed.")
    try:
        function = operation_function(name)
    except (ImportError, AttributeError) as exc:
        raise HostOperationError(host, name, "unsupported", "operation %s is not available in this collection: %s" % (name, exc),
                                 hint="Reinstall the hyperv.backup collection; a module under module_utils/hyperv is missing.")
    return function(bridge, **checked)
