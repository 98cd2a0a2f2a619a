# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What ``hyperv_lab`` shows with ``--diff``: a lab host's settings and VMs before and after the task.

The summary holds what a person sets with the module (era, locale, services, faults, quirks, cluster, each VM's
settings, integration services, checkpoints and disk sizes), not file paths, ids or timestamps, so that a diff shows
only what the task changed. Disk contents (guest writes) are not part of it.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

HOST_KEYS = ("era", "locale", "clock_offset_seconds", "quirks", "cluster", "csvs", "hardware_vss_provider", "services", "faults")
VM_KEYS = ("generation", "configuration_version", "state", "csv", "scsi_controllers", "memory_bytes", "processor_count", "faults")


def vm_summary(vm):
    """The settings of one VM document, keyed for a readable diff."""
    out = dict((key, vm.get(key)) for key in VM_KEYS)
    out["integration_services"] = dict((s["name"], {"enabled": s.get("enabled"), "operational_status": s.get("operational_status")})
                                       for s in vm.get("integration_services") or [])
    out["checkpoints"] = [cp.get("name") for cp in vm.get("checkpoints") or [] if cp.get("type") == "Standard"]
    out["disks"] = [{"virtual_size": disk.get("virtual_size"), "format": disk.get("format")} for disk in vm.get("disks") or []]
    return out


def planned_vm_summary(vm, spec):
    """Check mode: the summary of ``vm`` (the document with the spec's settings applied in memory, or None for a VM
    the task would create) plus the disks and checkpoints the spec would add."""
    if vm is None:
        out = dict((key, spec.get(key)) for key in VM_KEYS if spec.get(key) is not None)
        out["state"] = "%s (would be created)" % (spec.get("state") or "Running")
        out["disks"] = [{"virtual_size": disk.get("size"), "format": "(would be added)"} for disk in spec.get("disks") or []]
        out["checkpoints"] = list(spec.get("checkpoints") or [])
        return out
    out = vm_summary(vm)
    for disk in (spec.get("disks") or [])[len(out["disks"]):]:
        out["disks"].append({"virtual_size": disk.get("size"), "format": "(would be added)"})
    out["checkpoints"].extend(name for name in spec.get("checkpoints") or [] if name not in out["checkpoints"])
    return out


def host_summary(layout, host_doc=None, planned_vms=None):
    """Summary of the lab host of ``layout`` ({} when it does not exist).

    Check mode passes ``host_doc`` as the task would write it and ``planned_vms`` ({name: summary, or None for a VM
    the task would remove}) over what is stored."""
    if host_doc is None:
        if not layout.exists():
            return {}
        host_doc = layout.read_host()
    out = dict((key, host_doc.get(key)) for key in HOST_KEYS)
    vms = {}
    for vm_id in layout.vm_ids() if layout.exists() else []:
        try:
            vm = layout.read_vm(vm_id)
        except (IOError, OSError):      # removed (or migrated) by a concurrent task since it was listed
            continue
        vms[vm["name"]] = vm_summary(vm)
    for name, summary in (planned_vms or {}).items():
        if summary is None:
            vms.pop(name, None)
        else:
            vms[name] = summary
    out["vms"] = vms
    return out


def new_host_doc(doc, params):
    """Check mode on a host that does not exist yet: lab_admin.ensure_host returns a fresh document without the
    task's settings; these are the settings the task would give it (as ensure_host applies them)."""
    doc = dict(doc, services=dict((name, dict(value)) for name, value in doc["services"].items()))
    for key in ("era", "locale", "clock_offset_seconds", "hardware_vss_provider"):
        if params.get(key) is not None:
            doc[key] = params[key]
    for key in ("csvs", "faults", "quirks"):
        if params.get(key) is not None:
            doc[key] = list(params[key]) if key == "csvs" else sorted(set(params[key]))
    if params.get("cluster"):
        doc["cluster"] = {"name": params["cluster"]["name"], "functional_level": params["cluster"].get("functional_level")}
    for name, wanted in (params.get("services") or {}).items():
        wanted = {"status": wanted} if isinstance(wanted, str) else wanted
        doc["services"].setdefault(name.lower(), {}).update((k, v) for k, v in wanted.items() if v)
    return doc


def after_summary(layout, before, planned, check_mode=False, removed=False, changed=True):
    """The summary after the task: read back after a real run; in check mode built from ``planned`` (see
    hyperv_lab's apply), where only disk resizes, applied checkpoints and migrations are not foreseen."""
    if removed:
        return {} if changed else before
    if not check_mode:
        return host_summary(layout)
    if not changed:
        return before
    return host_summary(layout, planned.get("host_doc"), planned.get("vms"))


def lab_diff(layout, before, after):
    return {"before": before, "after": after,
            "before_header": "lab host %s" % layout.host, "after_header": "lab host %s" % layout.host}
