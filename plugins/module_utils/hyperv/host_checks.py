# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host checks before a backup: make sure VSS runs and the guests can be quiesced, and the pre-flight list.

``ensure_vss_ready`` is workflow step 2 (first half) behind the hyperv_vss_ensure module: start the
Volume Shadow Copy service if it is stopped, report the Hyper-V VSS writer, and check (or enable)
the backup integration service ('VSS') of each VM. ``preflight_checks`` is the declared list of
checks hyperv_host_info and hyperv_vss_ensure both return, one ``{check, vm, ok, blocking, message}``
per check: a blocking one that is not ok means the VM cannot be backed up online.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv.method_choice import (
    RCT_MIN_BUILD, RCT_MIN_CLUSTER_LEVEL, RCT_MIN_CONFIGURATION_VERSION, parallel_safety, rct_eligibility, version_tuple)
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv.recovery_points import is_ours

VSS_SERVICE = "vss"
# The backup integration component is known by its GUID (the end of Msvm_VssComponent.DeviceID), which
# get_vms reports as the entry's 'id'; names are localised on non-English hosts (issue point 6). The
# name is only a fallback for entries without an id; get_vms names it 'VSS' whatever the host's language.
BACKUP_INTEGRATION_ID = "5ced1297-4598-4915-a5fc-ad21bb4d02a4"
BACKUP_INTEGRATION_NAMES = ("vss",)
# VSS_WRITER_STATE (vss.h): 1 VSS_WS_STABLE, 5 VSS_WS_WAITING_FOR_BACKUP_COMPLETE; 6 and up are failures.
# Only the number is judged: vssadmin's words and its "Last error" text are localised (issue point 6).
HEALTHY_WRITER_STATE_NUMBERS = (1, 5)
WINDOWS_SERVER_2012_R2_BUILD = 9600


def _is_backup_integration(service):
    ident = str(service.get("id") or "").strip().strip("{}").lower()
    if ident:
        return ident.rsplit(":", 1)[-1].rsplit("\\", 1)[-1] == BACKUP_INTEGRATION_ID
    return str(service.get("name", "")).strip().lower() in BACKUP_INTEGRATION_NAMES


def backup_integration(vm):
    """The VM's backup integration service entry, or None when the guest has none."""
    for service in vm.get("integration_services") or []:
        if _is_backup_integration(service):
            return service
    return None


def writer_state_number(writer):
    """The VSS_WRITER_STATE number of the hyperv_vss_writer fact ('state_number', or the '[N]' of 'state')."""
    number = (writer or {}).get("state_number")
    if number is not None:
        return int(number)
    match = re.match(r"\s*\[(\d+)\]", str((writer or {}).get("state") or ""))
    return int(match.group(1)) if match else None


def _check(check, vm, ok, message, blocking=True):
    return {"check": check, "vm": vm, "ok": bool(ok), "blocking": bool(blocking), "message": message}


def vss_service_check(service):
    running = service.get("status") == "Running"
    message = ("Volume Shadow Copy service is running" if running else
               "Volume Shadow Copy service is %s; hyperv_vss_ensure starts it" % service.get("status"))
    return _check("vss_service", None, running, message)


def vss_writer_check(writer):
    writer = writer or {}
    state = str(writer.get("state") or "")
    last_error = str(writer.get("last_error") or "")
    # vssadmin's words are localised; its "[N]" state number is not, so only the number is judged.
    number = writer_state_number(writer)
    ok = number in HEALTHY_WRITER_STATE_NUMBERS
    if writer.get("not_read"):
        # The vss_service check already blocks; a writer not read yet is no second failure.
        return _check("vss_writer", None, False, "Hyper-V VSS writer not read: %s (hyperv_vss_ensure starts the service)"
                      % writer["not_read"], blocking=False)
    if ok:
        message = "Hyper-V VSS writer is %s" % state + (" (last error: %s)" % last_error if last_error else "")
    elif not state:
        message = ("the Hyper-V VSS writer is not listed; start the Volume Shadow Copy service and check that the "
                   "Hyper-V role (vmms) is running")
    else:
        message = ("Hyper-V VSS writer is %s (last error: %s); restart the Hyper-V Virtual Machine Management "
                   "service (vmms) or the host, then check 'vssadmin list writers'" % (state, last_error or "none"))
    return _check("vss_writer", None, ok, message)


def integration_check(vm):
    """Whether the guest can be quiesced: backup integration present, enabled and answering."""
    name = vm.get("name")
    service = backup_integration(vm)
    if service is None:
        return _check("backup_integration", name, False,
                      "VM %s has no backup integration service (VSS): the guest cannot be quiesced. Install or update the "
                      "Hyper-V integration services in the guest (Linux: hv_vss_daemon), or back it up with "
                      "consistency: application_or_crash" % name)
    if not service.get("enabled"):
        return _check("backup_integration", name, False,
                      "VM %s has the backup integration service (VSS) disabled. Set enable_backup_integration: true "
                      "(Enable-VMIntegrationService -Name VSS)" % name)
    status = service.get("operational_status")
    if vm.get("state") == "Running" and status not in ("OK", None):
        return _check("backup_integration", name, False,
                      "VM %s: the backup integration service (VSS) is enabled but not answering (status %s). Check that "
                      "the guest has booted and its Hyper-V VSS requestor service runs, or back it up with "
                      "consistency: application_or_crash" % (name, status))
    if vm.get("state") != "Running":
        return _check("backup_integration", name, True,
                      "VM %s is %s: its disks are backed up as they are, no guest quiescing needed" % (name, vm.get("state")))
    return _check("backup_integration", name, True, "VM %s: backup integration service (VSS) enabled and answering" % name)


def scsi_controller_check(host_facts, vm):
    name = vm.get("name")
    needs = int(host_facts.get("os_build") or 0) == WINDOWS_SERVER_2012_R2_BUILD and int(vm.get("generation") or 1) == 1
    if not needs:
        return _check("scsi_controller", name, True, "VM %s: no SCSI controller needed for online backup on this host" % name)
    if int(vm.get("scsi_controllers") or 0) > 0:
        return _check("scsi_controller", name, True, "VM %s: Generation 1 VM has a SCSI controller" % name)
    return _check("scsi_controller", name, False,
                  "VM %s is a Generation 1 VM on a Windows Server 2012 R2 host without a SCSI controller; online backup "
                  "needs one. Shut the VM down and run Add-VMScsiController -VMName %s" % (name, name))


def configuration_version_check(host_facts, vm):
    name = vm.get("name")
    config = vm.get("configuration_version")
    if int(host_facts.get("os_build") or 0) < RCT_MIN_BUILD:
        return _check("configuration_version", name, True,
                      "VM %s: configuration version %s (the host predates RCT; backups use VSS)" % (name, config), blocking=False)
    if not str(config or "").strip():
        # An empty Version (issue point 14) is reported, never a reason to stop the run.
        return _check("configuration_version", name, False,
                      "VM %s: the host reports no configuration version, so RCT is not used and backups are full VSS "
                      "backups; check the VM with Get-VM | Select Name, Version" % name, blocking=False)
    if version_tuple(config) < version_tuple(RCT_MIN_CONFIGURATION_VERSION):
        return _check("configuration_version", name, False,
                      "VM %s: configuration version %s is older than %s, so RCT is not available and every backup is a "
                      "full VSS backup; Update-VMVersion (VM off) enables RCT" % (name, config, RCT_MIN_CONFIGURATION_VERSION),
                      blocking=False)
    return _check("configuration_version", name, True, "VM %s: configuration version %s supports RCT" % (name, config),
                  blocking=False)


def cluster_level_check(host_facts, vm):
    name = vm.get("name")
    cluster = host_facts.get("cluster")
    if not vm.get("clustered") or not cluster:
        return _check("cluster_functional_level", name, True, "VM %s is not clustered" % name, blocking=False)
    level = int(cluster.get("functional_level") or 0)
    ok = level >= RCT_MIN_CLUSTER_LEVEL or int(host_facts.get("os_build") or 0) < RCT_MIN_BUILD
    message = ("VM %s: cluster %s at functional level %d" % (name, cluster.get("name"), level) if ok else
               "VM %s: cluster %s at functional level %d is below %d, so RCT is not available; run "
               "Update-ClusterFunctionalLevel once every node runs Windows Server 2016 or later"
               % (name, cluster.get("name"), level, RCT_MIN_CLUSTER_LEVEL))
    return _check("cluster_functional_level", name, ok, message, blocking=False)


def stray_checkpoint_check(vm):
    name = vm.get("name")
    stray = [cp.get("name") for cp in vm.get("checkpoints") or [] if cp.get("type", "Recovery") == "Recovery" and is_ours(cp)]
    if not stray:
        return _check("stray_checkpoints", name, True, "VM %s: no recovery points left by earlier runs" % name, blocking=False)
    return _check("stray_checkpoints", name, False,
                  "VM %s has %d recovery point(s) left by earlier runs (%s); remove them with hyperv_recovery_point "
                  "state: cleaned" % (name, len(stray), ", ".join(str(s) for s in stray)), blocking=False)


def vm_checks(host_facts, vm):
    """The per-VM part of the pre-flight list."""
    return [integration_check(vm), scsi_controller_check(host_facts, vm), configuration_version_check(host_facts, vm),
            cluster_level_check(host_facts, vm), stray_checkpoint_check(vm)]


def preflight_checks(host_facts, vss_service, vms):
    """Host checks (VSS service, writer) followed by every VM's checks."""
    checks = [vss_service_check(vss_service), vss_writer_check(host_facts.get("hyperv_vss_writer"))]
    for vm in vms:
        checks.extend(vm_checks(host_facts, vm))
    return checks


def blocking_failures(checks):
    return [c for c in checks if c["blocking"] and not c["ok"]]


def ensure_vss_ready(session, vm_names=None, enable_backup_integration=False, check_mode=False):
    """Start VSS if needed, enable backup integration if asked, and return the state plus the pre-flight list.

    Result: {changed, would_start, vss_service, hyperv_vss_writer, vms: [...], preflight: [...],
    problems: [messages of blocking failures]}. Nothing changes in check mode; the would_* keys say
    what would. A service that will not start raises HostOperationError (category 'service').
    """
    changed = False
    service = session.run("get_service", name=VSS_SERVICE)
    would_start = service.get("status") != "Running"
    if would_start:
        changed = True
        if not check_mode:
            started = session.run("start_service", name=VSS_SERVICE)
            service = dict(service, status=started.get("status"), previous_status=started.get("previous_status"))
            if started.get("status") != "Running":
                raise HostOperationError(session.host, "start_service", "service",
                                         "the Volume Shadow Copy service is %s after starting it" % started.get("status"),
                                         hint="Check the System event log for VSS errors (vssadmin list writers).")
    host_facts = session.run("get_host_info")
    vms = session.run("get_vms", names=list(vm_names)) if vm_names else session.run("get_vms")
    vm_reports = []
    for index, vm in enumerate(vms):
        service_entry = backup_integration(vm)
        report = {"name": vm.get("name"), "id": vm.get("id"), "state": vm.get("state"),
                  "backup_integration": dict(service_entry) if service_entry else None,
                  "would_enable": False, "enabled_now": False}
        if enable_backup_integration and service_entry is not None and not service_entry.get("enabled"):
            report["would_enable"] = True
            changed = True
            if not check_mode:
                result = session.run("enable_integration_service", vm_id=vm["id"], name=service_entry.get("name"))
                report["enabled_now"] = True
                report["backup_integration"] = dict(service_entry, enabled=bool(result.get("enabled", True)),
                                                    operational_status=result.get("operational_status"))
                vms[index] = _with_service(vm, report["backup_integration"])
            else:
                # check mode: judge the VM as it would be once enabled, so the result shows what remains
                status = service_entry.get("operational_status")
                vms[index] = _with_service(vm, dict(service_entry, enabled=True,
                                                    operational_status="OK" if status in (None, "Disabled") else status))
        vm_reports.append(report)
    checks = preflight_checks(host_facts, service, vms)
    if check_mode and would_start:
        # Nothing was started: say what would happen, and do not judge the writer before VSS runs.
        for check in checks:
            if check["check"] == "vss_service":
                check.update(ok=True, message="check mode: the Volume Shadow Copy service is %s and would be started"
                             % service.get("status"))
            elif check["check"] == "vss_writer" and not check["ok"]:
                check.update(blocking=False, message="check mode: " + check["message"] + " (judged once VSS runs)")
    for report in vm_reports:
        report["preflight"] = [c for c in checks if c["vm"] == report["name"]]
    return {"changed": changed, "would_start": would_start, "vss_service": service,
            "hyperv_vss_writer": host_facts.get("hyperv_vss_writer"), "vms": vm_reports, "preflight": checks,
            "problems": [c["message"] for c in blocking_failures(checks)]}


def _with_service(vm, service):
    services = [service if backup_integration({"integration_services": [s]}) else s for s in vm.get("integration_services") or []]
    return dict(vm, integration_services=services)


def host_inventory(session, vm_names=None):
    """Everything hyperv_host_info returns: host facts, VSS state, and per VM the RCT rules, queue key and pre-flight."""
    host_facts = session.run("get_host_info")
    service = session.run("get_service", name=VSS_SERVICE)
    vms = session.run("get_vms", names=list(vm_names)) if vm_names else session.run("get_vms")
    keys = parallel_safety(host_facts, vms)
    host_checks = [vss_service_check(service), vss_writer_check(host_facts.get("hyperv_vss_writer"))]
    described = []
    for vm in vms:
        eligibility = rct_eligibility(host_facts, vm)
        described.append(dict(vm, rct=eligibility.to_dict(), serialization_key=keys[vm["id"]]["serialization_key"],
                              serialization_reason=keys[vm["id"]]["reason"], preflight=vm_checks(host_facts, vm)))
    return {"host": host_facts, "vss_service": service, "vms": described, "preflight": host_checks}
