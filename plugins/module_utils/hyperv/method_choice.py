# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""RCT rules and the choice of backup method: the one place that decides rct or vss, and why.

Inputs are the result shapes of ``get_host_info`` and ``get_vms`` (see ``host_operations.py``).
Resilient Change Tracking needs Windows Server 2016 (build 14393) or later, a VM configuration
version of 6.2 or later, a cluster functional level of 9 or higher when the VM is clustered, and
VHDX disks only. Everything else is backed up through the host's VSS with the Hyper-V writer.

Windows Server 2008 / 2008 R2 add two limits on parallel work (``parallel_safety``): VMs on one
Cluster Shared Volume are backed up one at a time (the CSV goes into redirected access for the
whole snapshot), and parallel recovery points on one host need a hardware VSS provider (with one,
both limits go away).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HyperVBackupError

RCT_MIN_BUILD = 14393
RCT_MIN_CONFIGURATION_VERSION = "6.2"
RCT_MIN_CLUSTER_LEVEL = 9
# Windows Server 2012 is build 9200; anything older is the 2008 / 2008 R2 era with its CSV limits.
FIRST_BUILD_AFTER_2008_R2 = 9200

METHODS = ("rct", "vss")
REQUESTABLE_METHODS = ("auto",) + METHODS

# First build of each Windows Server release, newest first, so a build names its release.
_RELEASES = (
    (26100, "Windows Server 2025"),
    (20348, "Windows Server 2022"),
    (17763, "Windows Server 2019"),
    (14393, "Windows Server 2016"),
    (9600, "Windows Server 2012 R2"),
    (9200, "Windows Server 2012"),
    (7600, "Windows Server 2008 R2"),
    (6000, "Windows Server 2008"),
)
_CLUSTER_LEVEL_RELEASES = {6: "Windows Server 2008 R2", 7: "Windows Server 2012", 8: "Windows Server 2012 R2",
                           9: "Windows Server 2016", 10: "Windows Server 2019", 11: "Windows Server 2022",
                           12: "Windows Server 2025"}


def release_name(build):
    """'Windows Server 2012 R2' for 9600; 'an unknown Windows release' for builds before 2008."""
    for first_build, name in _RELEASES:
        if int(build) >= first_build:
            return name
    return "an unknown Windows release"


def version_tuple(text):
    """'10.0' -> (10, 0) so that configuration versions compare as numbers ('10.0' > '6.2')."""
    try:
        return tuple(int(part) for part in str(text).strip().split("."))
    except ValueError:
        raise HyperVBackupError("VM configuration version %r is not a dotted number such as '9.0'" % (text,),
                                hint="Check the configuration_version reported by Get-VM.")


class Eligibility:
    """Whether a VM on a host can be backed up with RCT, and every reason it cannot."""

    def __init__(self, eligible, reasons):
        self.eligible = bool(eligible)
        self.reasons = list(reasons)

    def to_dict(self):
        return {"eligible": self.eligible, "reasons": list(self.reasons)}

    def __repr__(self):
        return "Eligibility(eligible=%r, reasons=%r)" % (self.eligible, self.reasons)


class MethodDecision:
    """The method a backup uses, the reason given to the user, and whether it must be a full backup."""

    def __init__(self, method, reason, full_required):
        self.method = method
        self.reason = reason
        self.full_required = bool(full_required)

    def to_dict(self):
        return {"method": self.method, "reason": self.reason, "full_required": self.full_required}

    def __repr__(self):
        return "MethodDecision(method=%r, full_required=%r, reason=%r)" % (self.method, self.full_required, self.reason)


def rct_eligibility(host_facts, vm):
    """Apply the RCT rules to one VM on one host; each failed rule adds a reason a person understands."""
    reasons = []
    build = int(host_facts.get("os_build") or 0)
    if build < RCT_MIN_BUILD:
        reasons.append("host build %d (%s) is older than %d (%s); RCT needs Windows Server 2016 or later"
                       % (build, release_name(build), RCT_MIN_BUILD, release_name(RCT_MIN_BUILD)))
    config = vm.get("configuration_version")
    if config is None or version_tuple(config) < version_tuple(RCT_MIN_CONFIGURATION_VERSION):
        reasons.append("VM configuration version %s is older than %s; RCT needs 6.2 or later "
                       "(Update-VMVersion, with the VM off, raises it to the host's default)"
                       % (config, RCT_MIN_CONFIGURATION_VERSION))
    if vm.get("clustered"):
        cluster = host_facts.get("cluster") or {}
        level = cluster.get("functional_level")
        if level is None:
            reasons.append("VM is clustered but the host reports no cluster functional level; RCT needs level %d or higher"
                           % RCT_MIN_CLUSTER_LEVEL)
        elif int(level) < RCT_MIN_CLUSTER_LEVEL:
            reasons.append("cluster %s runs at functional level %d (%s); RCT needs level %d (%s) or higher "
                           "(Update-ClusterFunctionalLevel once every node runs Windows Server 2016 or later)"
                           % (cluster.get("name"), int(level), _CLUSTER_LEVEL_RELEASES.get(int(level), "unknown release"),
                              RCT_MIN_CLUSTER_LEVEL, _CLUSTER_LEVEL_RELEASES[RCT_MIN_CLUSTER_LEVEL]))
    not_vhdx = [disk.get("path") for disk in vm.get("disks") or [] if str(disk.get("format", "")).lower() != "vhdx"]
    if not_vhdx:
        reasons.append("disk(s) %s are not VHDX; RCT tracks VHDX disks only (Convert-VHD to .vhdx with the VM off)"
                       % ", ".join(str(path) for path in not_vhdx))
    return Eligibility(not reasons, reasons)


def choose_method(eligibility, requested="auto", previous_method=None, vss_available=True):
    """Decide rct or vss for the next recovery point of a VM.

    ``previous_method`` is the method of the VM's earlier recovery points (from the repository or the
    user). A VM backed up with VSS keeps VSS under 'auto' so its chain does not change method behind
    the user's back; asking for 'rct' switches it, and the next backup is then a full RCT backup.
    """
    if requested not in REQUESTABLE_METHODS:
        raise HyperVBackupError("method %r is not one of %s" % (requested, ", ".join(REQUESTABLE_METHODS)),
                                hint="Use method: auto, rct or vss.")
    if previous_method not in (None,) + METHODS:
        raise HyperVBackupError("previous_method %r is not one of rct, vss" % (previous_method,),
                                hint="Leave previous_method unset for a VM without earlier backups.")
    why_not_rct = "; ".join(eligibility.reasons)

    if requested == "vss":
        return _vss("VSS was requested", vss_available, why_not_rct)
    if requested == "rct":
        if not eligibility.eligible:
            raise HyperVBackupError("RCT was requested but this VM cannot use it: %s." % why_not_rct,
                                    hint="Fix the reasons above or use method: auto / vss.",
                                    category="unsupported", reasons=list(eligibility.reasons))
        if previous_method == "vss":
            return MethodDecision("rct", "RCT was requested for a VM whose earlier recovery points came from VSS; "
                                         "this backup is a full RCT backup that starts a new change-tracking chain", True)
        if previous_method is None:
            return MethodDecision("rct", "RCT was requested; first RCT backup of this VM, so it is a full backup", True)
        return MethodDecision("rct", "RCT was requested; the VM's earlier recovery points are RCT, "
                                     "so an incremental is possible", False)

    # auto
    if previous_method == "vss":
        return _vss("earlier recovery points of this VM came from VSS, so VSS is kept; set method: rct to switch "
                    "(the next backup is then a full RCT backup)", vss_available, why_not_rct)
    if not eligibility.eligible:
        if previous_method == "rct":
            return _vss("earlier recovery points were RCT but RCT is no longer possible (%s); using VSS with a full backup"
                        % why_not_rct, vss_available, why_not_rct)
        return _vss("RCT is not possible (%s); using VSS" % why_not_rct, vss_available, why_not_rct)
    if previous_method == "rct":
        return MethodDecision("rct", "host and VM meet the RCT rules and earlier recovery points are RCT; "
                                     "an incremental is possible", False)
    return MethodDecision("rct", "host and VM meet the RCT rules (Windows Server 2016+, configuration version 6.2+, "
                                 "VHDX disks); first backup of this VM, so it is a full RCT backup", True)


def _vss(reason, vss_available, why_not_rct):
    """A VSS decision; VSS backups are always full (VSS gives no change list)."""
    if not vss_available:
        raise HyperVBackupError("VSS cannot be used: the host's Volume Shadow Copy service or Hyper-V VSS writer is "
                                "not available (%s)." % reason, hint="Run hyperv_vss_ensure first.",
                                category="service", rct_reasons=why_not_rct)
    return MethodDecision("vss", reason, True)


def parallel_safety(host_facts, vms):
    """For each VM: the key of the queue its backups must share, or None when parallel is safe.

    Returns ``{vm_id: {vm_id, vm_name, serialization_key, reason}}``. Only Windows Server 2008 and
    2008 R2 hosts without a hardware VSS provider serialise: per CSV across the cluster
    ('<cluster>:csv:<path>': every node's VMs on that CSV share one queue) for VMs on a CSV, per host
    ('<host>:host') for the others.
    """
    host = host_facts.get("computer_name") or "host"
    cluster = (host_facts.get("cluster") or {}).get("name") or host
    build = int(host_facts.get("os_build") or 0)
    has_hardware_provider = any(p.get("type") == "hardware" for p in host_facts.get("vss_providers") or [])
    result = {}
    for vm in vms:
        key, reason = None, "parallel backups are safe on %s" % release_name(build)
        if build and build < FIRST_BUILD_AFTER_2008_R2:
            if has_hardware_provider:
                reason = "%s host with a hardware VSS provider: parallel recovery points are safe" % release_name(build)
            elif vm.get("csv_path"):
                key = "%s:csv:%s" % (cluster, vm["csv_path"])
                reason = ("VM is on CSV %s of a %s host without a hardware VSS provider: VMs on one CSV are backed up "
                          "one at a time (the CSV is in redirected access during the snapshot)" % (vm["csv_path"], release_name(build)))
            else:
                key = "%s:host" % host
                reason = ("%s host without a hardware VSS provider: recovery points on this host are taken one at a time"
                          % release_name(build))
        result[vm["id"]] = {"vm_id": vm["id"], "vm_name": vm.get("name"), "serialization_key": key, "reason": reason}
    return result
