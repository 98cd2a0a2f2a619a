# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab host: a file-backed Hyper-V host that answers every operation of ``host_operations``.

``LabTransport(lab_directory, host).run(operation_name, params)`` is what the session layer calls
for ``transport: lab``. It returns the same result shapes a real host's script returns and raises
``HostOperationError`` with the category a real host would give (see docs/lab_host.md for the
rules and the faults that can be injected). Disk paths in results are real local paths (the
backup engine reads them directly); ``windows_path`` beside them is for display.

State lives under ``<lab_directory>/<host>/`` (``lab_state``); the lab module builds hosts and VMs
with ``lab_admin``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import os

from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_rct, lab_vm
from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError, VirtualDiskError
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv.host_operations import get_operation
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import (
    ERAS, HARDWARE_VSS_PROVIDER, HYPERV_VSS_WRITER, SOFTWARE_VSS_PROVIDER, LabLayout, cluster_fact, csv_facts,
    host_faults, new_guid, version_tuple)
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv.method_choice import RCT_MIN_BUILD, rct_eligibility

# Windows error codes the lab reports (as a real host's script would pass them on).
WINRM_CANNOT_CONNECT = "0x80338012"
ACCESS_DENIED = "0x80070005"
SERVICE_NO_RESPONSE = "0x8007041D"      # ERROR_SERVICE_REQUEST_TIMEOUT (1053)
SERVICE_DISABLED = "0x80070422"         # ERROR_SERVICE_DISABLED (1058)
WMI_FAILED = "32768"                    # Msvm job "Failed"
WMI_INVALID_PARAMETER = "32773"
WMI_FILE_NOT_FOUND = "32779"
VSS_E_WRITERERROR_RETRYABLE = "0x800423F3"
VSS_E_SNAPSHOT_SET_IN_PROGRESS = "0x80042316"
# Operations that do not go through the Hyper-V management service (vmms).
HOST_LEVEL_OPERATIONS = ("get_host_info", "get_service", "start_service", "get_disk_changes")


class LabHost:
    """One lab host; ``run`` dispatches an operation name to the ``op_<name>`` method."""

    def __init__(self, lab_directory, host):
        self.layout = LabLayout(lab_directory, host)
        self.host = host
        self._operation = None

    # --- plumbing ------------------------------------------------------------------------

    def fail(self, category, message, hint=None, windows_error=None):
        raise HostOperationError(self.host, self._operation, category, message, hint=hint, windows_error=windows_error)

    def run(self, operation_name, params=None):
        """Run one operation like a real host would; raises HostOperationError on failure."""
        self._operation = operation_name
        try:
            checked = get_operation(operation_name).check_params(dict(params or {}))
        except ValueError as exc:
            self.fail("failed", str(exc), hint="This is a bug in the caller; the lab host takes what host_operations documents.")
        host_doc = self._reachable_host()
        if operation_name not in HOST_LEVEL_OPERATIONS:
            self._require_running(host_doc, "vmms", "Hyper-V cannot manage virtual machines without it")
        try:
            return getattr(self, "op_" + operation_name)(host_doc, **checked)
        except VirtualDiskError as exc:
            self.fail("failed", "a virtual disk file of the lab host is unusable: %s" % exc, hint=exc.hint)

    def _reachable_host(self):
        if not self.layout.exists():
            self.fail("unreachable", "WinRM cannot complete the operation: the lab host %s does not exist under %s"
                      % (self.host, self.layout.lab_directory),
                      hint="Create it with the hyperv.backup.hyperv_lab module, or check host and lab_directory.",
                      windows_error=WINRM_CANNOT_CONNECT)
        host_doc = self.layout.read_host()
        faults = host_faults(host_doc)
        if "unreachable" in faults:
            self.fail("unreachable", "WinRM cannot complete the operation. Verify that the specified computer name is valid, "
                      "that the computer is accessible over the network, and that a firewall exception for the WinRM service "
                      "is enabled.", hint="Check that the host is up and port 5985/5986 is reachable (lab fault 'unreachable').",
                      windows_error=WINRM_CANNOT_CONNECT)
        if "auth_fails" in faults:
            self.fail("authentication", "Access is denied: the credentials were refused.",
                      hint="Check username, password and auth (lab fault 'auth_fails').", windows_error=ACCESS_DENIED)
        return host_doc

    def _vm(self, vm_id):
        if not vm_id or not os.path.isfile(self.layout.vm_file(vm_id)):
            self.fail("not_found", "Hyper-V was unable to find a virtual machine with id '%s'." % vm_id,
                      hint="List the VMs with get_vms; the VM may have been removed or moved to another host.")
        return self.layout.read_vm(vm_id)

    def _all_vms(self):
        out = []
        for vm_id in self.layout.vm_ids():
            try:
                out.append(self.layout.read_vm(vm_id))
            except FileNotFoundError:   # removed or migrated while listing
                continue
        return out

    def _service(self, host_doc, name):
        service = host_doc["services"].get(str(name).lower())
        if service is None:
            self.fail("not_found", "Cannot find any service with service name '%s'." % name,
                      hint="The lab host has services: %s." % ", ".join(sorted(host_doc["services"])))
        return service

    def _require_running(self, host_doc, name, why):
        service = self._service(host_doc, name)
        if service["status"] != "Running":
            self.fail("service", "the %s service (%s) is %s; %s" % (service["display_name"], name, service["status"], why),
                      hint="Start it first (start_service / hyperv_vss_ensure).")

    # --- host ----------------------------------------------------------------------------

    def host_info(self, host_doc):
        era = ERAS[host_doc["era"]]
        providers = [dict(SOFTWARE_VSS_PROVIDER)]
        if host_doc.get("hardware_vss_provider"):
            providers.append(dict(HARDWARE_VSS_PROVIDER))
        failed = "vss_writer_failed" in host_faults(host_doc)
        writer = dict(HYPERV_VSS_WRITER, state="[8] Failed" if failed else "[1] Stable",
                      last_error="Retryable error" if failed else "No error")
        return {"computer_name": host_doc["name"].upper(), "os_name": era["os_name"], "os_version": era["os_version"],
                "os_build": era["os_build"], "cluster": cluster_fact(host_doc), "csvs": csv_facts(host_doc),
                "vss_providers": providers, "hyperv_vss_writer": writer}

    def facts(self):
        """(host facts, VMs) read straight from the files, faults not applied: what the lab module reports."""
        host_doc = self.layout.read_host()
        self._operation = "get_vms"
        return self.host_info(host_doc), self.op_get_vms(host_doc)

    def op_get_host_info(self, host_doc):
        return self.host_info(host_doc)

    def op_get_service(self, host_doc, name):
        service = self._service(host_doc, name)
        return {"name": str(name).lower(), "display_name": service["display_name"], "status": service["status"],
                "start_type": service["start_type"]}

    def op_start_service(self, host_doc, name):
        key = str(name).lower()
        with self.layout.host_lock():
            host_doc = self.layout.read_host()
            service = self._service(host_doc, key)
            previous = service["status"]
            result = {"name": key, "display_name": service["display_name"], "previous_status": previous}
            if previous == "Running":
                return dict(result, status=previous, changed=False)
            if "service_wont_start:%s" % key in host_faults(host_doc):
                self.fail("service", "Service '%s (%s)' cannot be started due to the following error: Cannot start service %s "
                          "on computer '.'. The service did not respond to the start or control request in a timely fashion."
                          % (service["display_name"], key, key),
                          hint="Check the System event log for service control manager errors (lab fault "
                               "'service_wont_start:%s')." % key, windows_error=SERVICE_NO_RESPONSE)
            if service["start_type"] == "Disabled":
                self.fail("service", "Service '%s (%s)' cannot be started due to the following error: The service cannot be "
                          "started, either because it is disabled or because it has no enabled devices associated with it."
                          % (service["display_name"], key), hint="Set its start type to Manual or Automatic.",
                          windows_error=SERVICE_DISABLED)
            service["status"] = "Running"
            self.layout.write_host(host_doc)
        return dict(result, status="Running", changed=True)

    # --- VMs -----------------------------------------------------------------------------

    def op_get_vms(self, host_doc, names=None, ids=None):
        vms = self._all_vms()
        for wanted, key in ((names, "name"), (ids, "id")):
            if wanted:
                known = set(vm[key] for vm in vms)
                missing = [item for item in wanted if item not in known]
                if missing:
                    self.fail("not_found", "Hyper-V was unable to find a virtual machine with %s %s."
                              % (key, ", ".join("'%s'" % item for item in missing)),
                              hint="Check the VM %s(s); the host has: %s." % (key, ", ".join(sorted(known)) or "no VMs"))
                vms = [vm for vm in vms if vm[key] in wanted]
        vms.sort(key=lambda vm: (vm["name"].lower(), vm["id"]))
        return [lab_vm.vm_result(self.layout, host_doc, vm) for vm in vms]

    def op_enable_integration_service(self, host_doc, vm_id, name):
        self._vm(vm_id)
        with self.layout.vm_lock(vm_id):
            vm = self._vm(vm_id)
            listed = lab_vm.integration_services(host_doc, vm)
            if name not in [item["name"] for item in listed]:
                self.fail("not_found", "No integration service named '%s' is available for VM '%s'." % (name, vm["name"]),
                          hint="The VM lists: %s. A guest without integration components has no 'VSS' service "
                               "(lab fault 'integration_missing')." % ", ".join(item["name"] for item in listed))
            stored = [item for item in vm["integration_services"] if item["name"] == name][0]
            changed = not stored["enabled"]
            if changed:
                stored["enabled"] = True
                self.layout.write_vm(vm)
        now = [item for item in lab_vm.integration_services(host_doc, vm) if item["name"] == name][0]
        return {"vm_id": vm_id, "name": name, "enabled": True, "operational_status": now["operational_status"],
                "changed": changed}

    # --- recovery points -----------------------------------------------------------------

    def _check_consistency(self, host_doc, vm, consistency):
        """Return the consistency the checkpoint gets, or fail when 'application' is impossible."""
        if consistency not in ("application", "application_or_crash", "crash"):
            self.fail("failed", "consistency %r is not 'application' or 'application_or_crash'" % consistency)
        if consistency == "crash":
            return "crash"
        problem = None
        if vm["state"] == "Running":
            vss = [item for item in lab_vm.integration_services(host_doc, vm) if item["name"] == lab_vm.VSS_SERVICE]
            if not vss:
                problem = "the backup integration service (VSS) is not installed in the guest"
            elif not vss[0]["enabled"]:
                problem = "the backup integration service (VSS) is disabled"
            elif vss[0]["operational_status"] != "OK":
                problem = "the backup integration service (VSS) reports %s" % vss[0]["operational_status"]
            elif host_doc["era"] == "2012r2" and vm["scsi_controllers"] == 0:
                problem = "the VM cannot be hot backed up since it has no SCSI controllers attached (event 10103)"
        if problem is None:
            return "application"
        if consistency == "application_or_crash":
            return "crash"
        self.fail("integration", "cannot create an application-consistent checkpoint of VM '%s': %s." % (vm["name"], problem),
                  hint="Enable the 'VSS' integration service and make sure the guest runs the integration components "
                       "(vmicvss / hv_vss_daemon), or ask for consistency 'application_or_crash'.")
        return None

    def _check_method(self, host_doc, vm, method):
        if method == "rct":
            eligibility = rct_eligibility(self.host_info(host_doc), lab_vm.vm_result(self.layout, host_doc, vm))
            if not eligibility.eligible:
                self.fail("unsupported", "RCT recovery checkpoints are not possible for VM '%s': %s."
                          % (vm["name"], "; ".join(eligibility.reasons)), hint="Use method 'vss' for this VM.")
        elif method == "vss":
            self._require_running(host_doc, "vss", "host VSS backups need it")
            if "vss_writer_failed" in host_faults(host_doc):
                self.fail("recovery_point", "Could not create backup checkpoint for VM '%s': the Microsoft Hyper-V VSS Writer "
                          "is in a failed state (Retryable error)." % vm["name"],
                          hint="Restart the vmms service or the host to reset the writer, then retry (lab fault "
                               "'vss_writer_failed').", windows_error=VSS_E_WRITERERROR_RETRYABLE)
        else:
            self.fail("unsupported", "method %r is not 'rct' or 'vss'" % (method,))

    def _check_csv_one_at_a_time(self, host_doc, vm):
        """2008 R2 CSV with only the software provider: one VSS backup per CSV at a time."""
        if host_doc["era"] != "2008r2" or not vm.get("csv") or host_doc.get("hardware_vss_provider"):
            return
        for other in self._all_vms():
            if other["id"] == vm["id"] or other.get("csv") != vm["csv"]:
                continue
            if any(cp["type"] == "Recovery" and cp.get("method") == "vss" for cp in other["checkpoints"]):
                self.fail("busy", "the Cluster Shared Volume %s is in backup for VM '%s'; with the software VSS provider only "
                          "one VM on a CSV can be backed up at a time on Windows Server 2008 R2." % (vm["csv"], other["name"]),
                          hint="Back up VMs on the same CSV one after the other (serial), or install a hardware VSS provider.",
                          windows_error=VSS_E_SNAPSHOT_SET_IN_PROGRESS)

    def op_create_recovery_point(self, host_doc, vm_id, method, consistency, tag):
        vm = self._vm(vm_id)
        # The CSV rule looks at other VMs, so then the host lock is held too (always host before VM).
        csv_rule = method == "vss" and host_doc["era"] == "2008r2" and vm.get("csv")
        with (self.layout.host_lock() if csv_rule else contextlib.nullcontext()):
            with self.layout.vm_lock(vm_id):
                vm = self._vm(vm_id)
                self._check_method(host_doc, vm, method)
                if method == "vss":
                    self._check_csv_one_at_a_time(host_doc, vm)
                if "recovery_point_fails" in host_faults(host_doc, vm):
                    self.fail("recovery_point", "Failed to create VM recovery checkpoint for '%s' (Virtual machine ID %s). "
                              "Error code: 32768." % (vm["name"], vm["id"].upper()),
                              hint="Check the Hyper-V-VMMS Admin event log on the host (lab fault 'recovery_point_fails').",
                              windows_error=WMI_FAILED)
                got = self._check_consistency(host_doc, vm, consistency)
                cp = lab_vm.freeze(self.layout, vm, tag, "Recovery", method=method, consistency=got)
                self.layout.write_vm(vm)
        result = lab_vm.recovery_point_result(self.layout, host_doc, vm, cp)
        result["consistency_fallback"] = consistency == "application_or_crash" and got == "crash"
        return result

    def op_get_recovery_points(self, host_doc, vm_id):
        vm = self._vm(vm_id)
        return [lab_vm.recovery_point_result(self.layout, host_doc, vm, cp) for cp in vm["checkpoints"] if cp["type"] == "Recovery"]

    def op_remove_recovery_point(self, host_doc, vm_id, id):  # pylint: disable=redefined-builtin
        self._vm(vm_id)
        with self.layout.vm_lock(vm_id):
            vm = self._vm(vm_id)
            cp = lab_vm.find_checkpoint(vm, id)
            if cp is None:
                return {"id": id, "removed": False}
            if cp["type"] != "Recovery":
                self.fail("recovery_point", "checkpoint %s of VM '%s' is a %s checkpoint, not a recovery checkpoint"
                          % (id, vm["name"], cp["type"]), hint="Only recovery checkpoints are removed by backups.")
            lab_vm.remove_checkpoint(self.layout, vm, cp)
            self.layout.write_vm(vm)
        return {"id": id, "removed": True}

    def op_convert_to_reference_point(self, host_doc, vm_id, id):  # pylint: disable=redefined-builtin
        self._vm(vm_id)
        with self.layout.vm_lock(vm_id):
            vm = self._vm(vm_id)
            cp = lab_vm.find_checkpoint(vm, id)
            if cp is None:
                self.fail("not_found", "VM '%s' has no checkpoint with id %s." % (vm["name"], id),
                          hint="List them with get_recovery_points.")
            if cp["type"] != "Recovery":
                self.fail("recovery_point", "Only recovery snapshots can be converted to reference points; %s is %s."
                          % (id, cp["type"]))
            if cp.get("method") != "rct":
                self.fail("unsupported", "recovery checkpoint %s of VM '%s' was created with method %s; only RCT checkpoints "
                          "become reference points" % (id, vm["name"], cp.get("method")), hint="Remove it instead.")
            rct_ids = {}
            for disk in vm["disks"]:
                entry = cp["disks"][disk["disk_id"]]
                tracking = lab_rct.load(disk["rct_file"], disk["disk_id"])
                rct_ids[disk["disk_id"]] = lab_rct.issue_id(tracking, entry["freeze_seq"])
                lab_rct.save(disk["rct_file"], tracking)
            lab_vm.remove_checkpoint(self.layout, vm, cp)
            point = {"id": new_guid(), "vm_id": vm_id, "created": cp["created"], "consistency": cp["consistency"],
                     "rct_ids": rct_ids}
            vm["reference_points"].append(point)
            self.layout.write_vm(vm)
        return dict(point)

    def op_get_reference_points(self, host_doc, vm_id):
        vm = self._vm(vm_id)
        return [dict(point) for point in vm["reference_points"]]

    def op_remove_reference_point(self, host_doc, vm_id, id):  # pylint: disable=redefined-builtin
        self._vm(vm_id)
        with self.layout.vm_lock(vm_id):
            vm = self._vm(vm_id)
            points = [point for point in vm["reference_points"] if point["id"] == id]
            if not points:
                return {"id": id, "removed": False}
            for disk in vm["disks"]:
                rct_id = points[0]["rct_ids"].get(disk["disk_id"])
                if rct_id:
                    tracking = lab_rct.load(disk["rct_file"], disk["disk_id"])
                    lab_rct.forget_id(tracking, rct_id, "its reference point %s was destroyed" % id)
                    lab_rct.save(disk["rct_file"], tracking)
            vm["reference_points"] = [point for point in vm["reference_points"] if point["id"] != id]
            self.layout.write_vm(vm)
        return {"id": id, "removed": True}

    # --- change tracking -----------------------------------------------------------------

    def _owner_of(self, path):
        for vm in self._all_vms():
            disk, info = lab_vm.file_interval(vm, path)
            if disk is not None:
                return vm, disk, info
        self.fail("not_found", "The system cannot find the file specified: %s" % path,
                  hint="Pass the disk path of a recovery point (get_recovery_points) of a VM on this host.",
                  windows_error=WMI_FILE_NOT_FOUND)
        return None, None, None

    def op_get_disk_changes(self, host_doc, path, limit_id, byte_offset, byte_length):
        path = os.path.abspath(path)
        vm, disk, info = self._owner_of(path)
        capable = rct_eligibility(self.host_info(host_doc), lab_vm.vm_result(self.layout, host_doc, vm))
        if ERAS[host_doc["era"]]["os_build"] < RCT_MIN_BUILD:
            self.fail("unsupported", "GetVirtualDiskChanges needs Windows Server 2016 or later; this host runs %s"
                      % ERAS[host_doc["era"]]["os_name"], hint="Use VSS full backups on this host.")
        if not capable.eligible:
            self.fail("change_tracking", "change tracking is not enabled for %s: %s" % (path, "; ".join(capable.reasons)),
                      hint="Take a full backup.", windows_error="0xC03A002A")
        if "rct_invalid" in host_faults(host_doc, vm):
            self.fail("change_tracking", "The specified change tracking identifier is not valid: %s" % limit_id,
                      hint="Take a full backup to start a new chain (lab fault 'rct_invalid').",
                      windows_error=lab_rct.ERROR_VHD_INVALID_CHANGE_TRACKING_ID)
        size = disk["virtual_size"]
        if byte_offset < 0 or byte_length <= 0 or byte_offset + byte_length > size:
            self.fail("failed", "GetVirtualDiskChanges: invalid parameter: byte_offset %d + byte_length %d must lie within the "
                      "%d-byte virtual disk" % (byte_offset, byte_length, size),
                      hint="Page with byte_offset += processed_byte_length until the virtual size.",
                      windows_error=WMI_INVALID_PARAMETER)
        with self.layout.vm_lock(vm["id"]):
            tracking = lab_rct.load(disk["rct_file"], disk["disk_id"])
        try:
            since = lab_rct.lookup(tracking, limit_id)
        except lab_rct.RctLookupError as exc:
            self.fail("change_tracking", str(exc), hint="Take a full backup to start a new chain.",
                      windows_error=exc.windows_error)
        upto = tracking["sequence"] if info["to_seq"] is None else info["to_seq"]
        processed, offsets, lengths = lab_rct.changes(tracking, since, upto, byte_offset, byte_length, size)
        return {"processed_byte_length": processed, "changed_byte_offsets": offsets, "changed_byte_lengths": lengths}

    # --- configuration and import --------------------------------------------------------

    def op_get_vm_configuration(self, host_doc, vm_id, recovery_point_id=None):
        vm = self._vm(vm_id)
        if recovery_point_id:
            cp = lab_vm.find_checkpoint(vm, recovery_point_id)
            if cp is None:
                self.fail("not_found", "VM '%s' has no recovery checkpoint with id %s." % (vm["name"], recovery_point_id))
            document, files = cp["configuration"], [cp["configuration_file"]]
        else:
            document = lab_vm.configuration_document(vm)
            files = [os.path.join(self.layout.vm_dir(vm_id), lab_vm.CONFIG_FILE)]
        return {"vm_id": vm_id, "name": document["name"], "generation": document["generation"],
                "configuration_version": document["configuration_version"], "memory_bytes": document["memory_bytes"],
                "processor_count": document["processor_count"], "files": files, "document": document}

    def op_import_vm(self, host_doc, configuration, disk_paths, new_name=None, generate_new_id=False):
        document = configuration.get("document", configuration)
        for key in ("id", "name", "generation", "configuration_version"):
            if key not in document:
                self.fail("failed", "the configuration has no %r; pass the result of get_vm_configuration" % key)
        if version_tuple(document["configuration_version"]) > version_tuple(ERAS[host_doc["era"]]["max_config"]):
            self.fail("unsupported", "the VM's configuration version %s is newer than this host supports (%s, up to %s)"
                      % (document["configuration_version"], ERAS[host_doc["era"]]["os_name"], ERAS[host_doc["era"]]["max_config"]),
                      hint="Import it on a newer host.")
        wanted = len(document.get("disks", disk_paths))
        if len(disk_paths) != wanted:
            self.fail("failed", "the configuration has %d disk(s) but %d disk path(s) were given" % (wanted, len(disk_paths)),
                      hint="Pass one restored disk path per disk of the configuration, in its order.")
        from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_admin  # avoids an import cycle
        vm = lab_admin.register_vm(self.layout, document, [os.path.abspath(p) for p in disk_paths], new_name=new_name,
                                   generate_new_id=generate_new_id, fail=self.fail)
        return {"vm_id": vm["id"], "name": vm["name"], "state": vm["state"]}


class LabTransport(LabHost):
    """The session layer's entry point: ``LabTransport(lab_directory, host).run(operation_name, params)``."""

    def close(self):
        """Nothing to close (no connection); present for the session layer."""


class LabFleet:
    """All lab hosts under one directory."""

    def __init__(self, lab_directory):
        self.lab_directory = os.path.abspath(lab_directory)

    def host_names(self):
        """Names of the lab hosts that exist (a directory with a host.json)."""
        if not os.path.isdir(self.lab_directory):
            return []
        return sorted(name for name in os.listdir(self.lab_directory)
                      if not name.startswith(".") and LabLayout(self.lab_directory, name).exists())

    def host(self, name):
        return LabHost(self.lab_directory, name)


def operation_names():
    """Operations the lab host answers (every one of host_operations.OPERATIONS)."""
    return sorted(name[3:] for name in dir(LabHost) if name.startswith("op_"))
