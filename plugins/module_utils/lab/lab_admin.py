# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Building and changing lab hosts and VMs: what the hyperv_lab module (and tests) call.

Every function is idempotent and returns whether it changed something; with ``check_mode`` it
only says what it would change. Hosts are created with ``ensure_host``, VMs with ``ensure_vm``;
``churn`` plays guest writes, ``resize_disk`` and ``migrate_vm`` are the RCT invalidation events.
Host operations themselves (what a backup does) are in ``lab_host``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import copy
import os
import shutil

from ansible_collections.hyperv.backup.plugins.module_utils.lab import guest_filesystems, lab_disks, lab_rct, lab_vm
from ansible_collections.hyperv.backup.plugins.module_utils.errors import HyperVBackupError
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import (
    CONFIGURATION_VERSIONS, ERAS, LOCALES, OPERATIONAL_STATUSES, RCT_ID_PER_REFERENCE_POINT, SERVICE_STATUSES, VM_STATES, LabLayout,
    cluster_fact, csv_facts, host_document, make_private_dir, new_guid, quirk_value, validate_fault, validate_quirk, version_tuple)
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv.method_choice import rct_eligibility

GIB = 1024 ** 3
SERVICE_START_TYPES = ("Automatic", "Manual", "Disabled")


class LabError(HyperVBackupError):
    """A lab definition that cannot be applied (says what and how to fix it)."""


def _refuse(message, hint=None):
    raise LabError(message, hint=hint)


def _refuse_operation(category, message, hint=None, windows_error=None):
    """``fail`` for register_vm outside a host operation: the category goes into the details."""
    raise LabError(message, hint=hint, category=category, windows_error=windows_error)


# --- hosts ---------------------------------------------------------------------------------

def _normalise_services(services):
    """{name: 'running'|'stopped'|{status, start_type}} -> {name: {status?, start_type?}}."""
    out = {}
    for name, wanted in (services or {}).items():
        if isinstance(wanted, str):
            wanted = {"status": wanted}
        status = wanted.get("status")
        if status is not None:
            matches = [item for item in SERVICE_STATUSES if item.lower() == str(status).lower()]
            if not matches:
                _refuse("service %s: status %r is not one of %s" % (name, status, ", ".join(SERVICE_STATUSES)))
            status = matches[0]
        start_type = wanted.get("start_type")
        if start_type is not None and start_type not in SERVICE_START_TYPES:
            _refuse("service %s: start_type %r is not one of %s" % (name, start_type, ", ".join(SERVICE_START_TYPES)))
        out[name.lower()] = dict((key, value) for key, value in (("status", status), ("start_type", start_type)) if value)
    return out


def ensure_host(layout, era=None, cluster=None, csvs=None, hardware_vss_provider=None, services=None, faults=None,
                check_mode=False, locale=None, clock_offset_seconds=None, quirks=None):
    """Create the host or bring it to the given facts; returns (changed, host document).

    ``locale`` (en-US, de-DE), ``clock_offset_seconds`` (the host clock's skew against real time) and ``quirks``
    (lab_state.QUIRKS) are kept when None, like every other fact.
    """
    if era is not None and era not in ERAS:
        _refuse("era %r is not one of %s" % (era, ", ".join(sorted(ERAS))))
    if locale is not None and locale not in LOCALES:
        _refuse("locale %r is not one of %s" % (locale, ", ".join(LOCALES)))
    for fault in faults or []:
        try:
            validate_fault(fault)
        except ValueError as exc:
            _refuse(str(exc))
    for quirk in quirks or []:
        try:
            validate_quirk(quirk)
        except ValueError as exc:
            _refuse(str(exc))
    wanted_services = _normalise_services(services)
    if cluster is not None and cluster and not cluster.get("name"):
        _refuse("cluster needs a name", hint="Give cluster: {name: CLUSTER1, functional_level: 10}.")
    if check_mode and not layout.exists():
        return True, host_document(layout.host, era or "2022")
    make_private_dir(layout.lab_directory)
    make_private_dir(layout.host_dir)
    with layout.host_lock():
        created = not layout.exists()
        doc = host_document(layout.host, era or "2022") if created else layout.read_host()
        before = copy.deepcopy(doc)
        if era is not None:
            doc["era"] = era
        if cluster is not None:
            doc["cluster"] = dict(name=cluster["name"], functional_level=cluster.get("functional_level")) if cluster else None
        if csvs is not None:
            doc["csvs"] = list(csvs)
        if hardware_vss_provider is not None:
            doc["hardware_vss_provider"] = bool(hardware_vss_provider)
        for name, wanted in wanted_services.items():
            if name not in doc["services"]:
                _refuse("the lab host has no service %r; it emulates %s" % (name, ", ".join(sorted(doc["services"]))))
            doc["services"][name].update(wanted)
        if faults is not None:
            doc["faults"] = sorted(set(faults))
        if locale is not None:
            doc["locale"] = locale
        if clock_offset_seconds is not None:
            doc["clock_offset_seconds"] = clock_offset_seconds
        if quirks is not None:
            doc["quirks"] = sorted(set(quirks))
        changed = created or doc != before
        if changed and not check_mode:
            make_private_dir(layout.vms_dir)
            layout.write_host(doc)
    return changed, doc


def remove_host(layout, check_mode=False):
    if not os.path.isdir(layout.host_dir):
        return False
    if not check_mode:
        shutil.rmtree(layout.host_dir)
    return True


# --- VMs -----------------------------------------------------------------------------------

def find_vm(layout, name_or_id):
    """The vm.json of the VM with that id or (first) name, or None."""
    for vm_id in layout.vm_ids():
        vm = layout.read_vm(vm_id)
        if name_or_id in (vm["id"], vm["name"]):
            return vm
    return None


def _need_vm(layout, name_or_id):
    vm = find_vm(layout, name_or_id)
    if vm is None:
        _refuse("lab host %s has no VM named %r" % (layout.host, name_or_id), hint="Create it first with vms: [{name: ...}].")
    return vm


def _check_vm_spec(host_doc, spec):
    if not spec.get("name"):
        _refuse("every VM needs a name")
    if spec.get("generation") not in (None, 1, 2):
        _refuse("VM %s: generation must be 1 or 2" % spec["name"])
    version = spec.get("configuration_version")
    if version is not None:
        if str(version) not in CONFIGURATION_VERSIONS:
            _refuse("VM %s: configuration_version %r is not one of %s" % (spec["name"], version, ", ".join(CONFIGURATION_VERSIONS)))
        if version_tuple(version) > version_tuple(ERAS[host_doc["era"]]["max_config"]):
            _refuse("VM %s: configuration version %s is newer than a %s host supports (up to %s)"
                    % (spec["name"], version, host_doc["era"], ERAS[host_doc["era"]]["max_config"]))
    if spec.get("state") is not None and spec["state"] not in VM_STATES:
        _refuse("VM %s: state %r is not one of %s" % (spec["name"], spec["state"], ", ".join(VM_STATES)))
    if spec.get("csv") and spec["csv"] not in host_doc.get("csvs", []):
        _refuse("VM %s: csv %s is not one of the host's CSVs (%s)" % (spec["name"], spec["csv"], ", ".join(host_doc.get("csvs", [])) or "none"),
                hint="Add it to csvs of the host first.")
    for item in spec.get("integration_services") or []:
        if item.get("operational_status") not in (None,) + OPERATIONAL_STATUSES:
            _refuse("VM %s: integration service %s: operational_status %r is not one of %s"
                    % (spec["name"], item.get("name"), item.get("operational_status"), ", ".join(OPERATIONAL_STATUSES)))
    for fault in spec.get("faults") or []:
        try:
            validate_fault(fault, vm_level=True)
        except ValueError as exc:
            _refuse("VM %s: %s" % (spec["name"], exc))


def _add_disk_from_spec(layout, host_doc, vm, disk_spec, index):
    """Create (or copy in) one disk described by the module's disks entry (a new one in the era's format)."""
    disks_dir = layout.disks_dir(vm["id"])
    make_private_dir(disks_dir)
    if disk_spec.get("from_file"):
        source = disk_spec["from_file"]
        extension = os.path.splitext(source)[1].lower()
        if extension not in (".vhdx", ".vhd"):
            _refuse("from_file %s must be a .vhdx or .vhd file" % source)
        path = os.path.join(disks_dir, "%s_disk%d%s" % (lab_disks.disk_file_stem(vm["name"]), index, extension))
        try:
            lab_disks.copy_in(source, path)
        except ValueError as exc:
            _refuse(str(exc))
        return lab_vm.add_disk(vm, path, lab_disks.describe(path))
    path = lab_disks.base_disk_path(disks_dir, vm["name"], index, ERAS[host_doc["era"]]["disk_format"])
    size = int(disk_spec.get("size") or 4 * GIB)
    block_size = int(disk_spec["block_size"]) if disk_spec.get("block_size") else None
    sector = int(disk_spec.get("logical_sector_size") or 512)
    lab_disks.create_base_disk(path, size, block_size=block_size, logical_sector_size=sector)
    disk = lab_vm.add_disk(vm, path, lab_disks.describe(path))
    fill = disk_spec.get("fill")
    if fill and float(fill.get("percent") or 0) > 0:
        lab_vm.guest_write(disk, fill.get("seed", 0), lab_disks.fill_plan(fill.get("seed", 0), fill["percent"], size))
    if disk_spec.get("guest_filesystem"):
        try:
            disk["guest_filesystem"] = guest_filesystems.populate_disk(layout.vm_dir(vm["id"]), disk, disk_spec["guest_filesystem"])
        except ValueError as exc:
            _refuse("VM %s, disk %d: %s" % (vm["name"], index, exc))
    return disk


def _apply_vm_changes(vm, spec):
    """Apply the mutable fields of a spec to an existing VM document; returns the names changed."""
    changed = []
    for key in ("state", "scsi_controllers", "memory_bytes", "processor_count", "csv"):
        if key in spec and spec[key] is not None and vm.get(key) != spec[key]:
            vm[key] = spec[key]
            changed.append(key)
    if spec.get("configuration_version") is not None and spec["configuration_version"] != vm["configuration_version"]:
        if version_tuple(spec["configuration_version"]) < version_tuple(vm["configuration_version"]):
            _refuse("VM %s: configuration version %s cannot go down to %s (Update-VMVersion only raises it)"
                    % (vm["name"], vm["configuration_version"], spec["configuration_version"]))
        vm["configuration_version"] = spec["configuration_version"]
        changed.append("configuration_version")
    if spec.get("generation") is not None and spec["generation"] != vm["generation"]:
        _refuse("VM %s is generation %d; a generation cannot be changed (remove and recreate the VM)" % (vm["name"], vm["generation"]))
    for item in spec.get("integration_services") or []:
        stored = [entry for entry in vm["integration_services"] if entry["name"] == item.get("name")]
        if not stored:
            _refuse("VM %s: unknown integration service %r; known: %s"
                    % (vm["name"], item.get("name"), ", ".join(entry["name"] for entry in vm["integration_services"])))
        for key in ("enabled", "operational_status"):
            if item.get(key) is not None and stored[0][key] != item[key]:
                stored[0][key] = item[key]
                changed.append("integration_services")
    if spec.get("faults") is not None and sorted(set(spec["faults"])) != sorted(vm.get("faults", [])):
        vm["faults"] = sorted(set(spec["faults"]))
        changed.append("faults")
    return changed


def ensure_vm(layout, spec, check_mode=False):
    """Create or update one VM from a module spec; returns (changed, vm document or None)."""
    host_doc = layout.read_host()
    _check_vm_spec(host_doc, spec)
    if spec.get("present", True) is False:
        return remove_vm(layout, spec["name"], check_mode=check_mode), None
    with layout.host_lock():
        vm = find_vm(layout, spec["name"])
        if vm is None:
            if check_mode:
                return True, None
            vm = lab_vm.new_vm_document(
                new_guid(), spec["name"], generation=spec.get("generation") or 2,
                configuration_version=spec.get("configuration_version") or ERAS[host_doc["era"]]["max_config"],
                state=spec.get("state") or "Running", csv=spec.get("csv"),
                scsi_controllers=1 if spec.get("scsi_controllers") is None else spec["scsi_controllers"],
                memory_bytes=spec.get("memory_bytes") or 2 * GIB, processor_count=spec.get("processor_count") or 2,
                integration_services=spec.get("integration_services"))
            vm["faults"] = sorted(set(spec.get("faults") or []))
            make_private_dir(layout.vm_dir(vm["id"]))
            if not spec.get("disks"):
                lab_vm.save_configuration(layout, vm)
            layout.write_vm(vm)   # visible (and its name taken) before the host lock is released
            _index(layout, vm["id"], vm["name"])
            created = True
        else:
            created = False
    with layout.vm_lock(vm["id"]):
        if not created:
            vm = layout.read_vm(vm["id"])
        changes = [] if created else _apply_vm_changes(vm, spec)
        wanted_disks = spec.get("disks") or []
        if not created and len(wanted_disks) > len(vm["disks"]) and vm["checkpoints"]:
            _refuse("VM %s has checkpoints; remove them before adding disks" % vm["name"])
        for index in range(len(vm["disks"]), len(wanted_disks)):
            changes.append("disks")
            if not check_mode:
                _add_disk_from_spec(layout, host_doc, vm, wanted_disks[index], index)
        existing = set(cp["name"] for cp in vm["checkpoints"] if cp["type"] == "Standard")
        for name in spec.get("checkpoints") or []:
            if name not in existing:
                changes.append("checkpoints")
                if not check_mode:
                    lab_vm.freeze(layout, vm, name, "Standard")
        if (created or changes) and not check_mode:
            layout.write_vm(vm)
            lab_vm.save_configuration(layout, vm)
    return bool(created or changes), vm


def remove_standard_checkpoint(layout, vm_name, checkpoint_name, check_mode=False):
    """Delete a user's standard checkpoint by name (its child merges now or once on top); returns changed."""
    vm = _need_vm(layout, vm_name)
    with layout.vm_lock(vm["id"]):
        vm = layout.read_vm(vm["id"])
        found = [cp for cp in vm["checkpoints"] if cp["type"] == "Standard" and cp["name"] == checkpoint_name]
        if not found:
            return False
        if not check_mode:
            lab_vm.remove_checkpoint(layout, vm, found[0])
            layout.write_vm(vm)
    return True


def apply_checkpoint(layout, vm_name, checkpoint_name, check_mode=False):
    """Apply a standard checkpoint by name, as an administrator does in Hyper-V Manager (ApplySnapshot, see
    lab_vm.apply_checkpoint): the VM's disks go back to the checkpoint's state, what the guest wrote since is
    discarded, and the VM is Off. Always changes; returns the discarded files ([] in check mode)."""
    vm = _need_vm(layout, vm_name)
    with layout.vm_lock(vm["id"]):
        vm = layout.read_vm(vm["id"])
        standard = [cp for cp in vm["checkpoints"] if cp["type"] == "Standard"]
        found = [cp for cp in standard if cp["name"] == checkpoint_name]
        if not found:
            _refuse("VM %s has no standard checkpoint named %r" % (vm["name"], checkpoint_name),
                    hint="Its standard checkpoints: %s." % (", ".join(cp["name"] for cp in standard) or "none"))
        if check_mode:
            return []
        discarded = lab_vm.apply_checkpoint(vm, found[-1])
        layout.write_vm(vm)
    return discarded


def _index(layout, vm_id, name, remove=False):
    """Keep host.json's VM index (caller holds the host lock)."""
    doc = layout.read_host()
    if remove:
        doc["vms"].pop(vm_id, None)
    else:
        doc["vms"][vm_id] = name
    layout.write_host(doc)


def remove_vm(layout, name_or_id, check_mode=False):
    """Unregister a VM and delete its directory (disks registered in place elsewhere are kept)."""
    with layout.host_lock():
        vm = find_vm(layout, name_or_id)
        if vm is None:
            return False
        if not check_mode:
            with layout.vm_lock(vm["id"]):
                shutil.rmtree(layout.vm_dir(vm["id"]))
            _index(layout, vm["id"], None, remove=True)
    return True


def register_vm(layout, document, disk_paths, new_name=None, generate_new_id=False, fail=_refuse_operation):
    """import_vm: a VM from a captured configuration, its disks registered in place (new disk ids)."""
    for path in disk_paths:
        if not os.path.isfile(path):
            fail("not_found", "The system cannot find the file specified: %s" % path,
                 hint="Restore the disk first; pass local paths on the lab host.")
    with layout.host_lock():
        vm_id = new_guid() if generate_new_id else str(document["id"]).lower()
        if os.path.exists(layout.vm_file(vm_id)):
            fail("failed", "a virtual machine with the identifier %s already exists on the host" % vm_id,
                 hint="Remove the existing VM first or import with generate_new_id.")
        vm = lab_vm.new_vm_document(vm_id, new_name or document["name"], generation=document["generation"],
                                    configuration_version=document["configuration_version"], state="Off",
                                    scsi_controllers=document.get("scsi_controllers", 1),
                                    memory_bytes=document.get("memory_bytes", 2 * GIB),
                                    processor_count=document.get("processor_count", 2),
                                    integration_services=document.get("integration_services"))
        for path in disk_paths:
            facts = lab_disks.describe(path)
            if len(facts["chain"]) > 1:
                fail("failed", "%s is a differencing disk; import needs standalone restored disks" % path)
            lab_vm.add_disk(vm, path, facts)
        make_private_dir(layout.vm_dir(vm_id))
        layout.write_vm(vm)
        lab_vm.save_configuration(layout, vm)
        _index(layout, vm_id, vm["name"])
    return vm


# --- guest activity and invalidation events --------------------------------------------------

def churn(layout, vm_name, seed=0, writes=16, write_size=64 * 1024, offsets=None, disk=0, check_mode=False):
    """Guest writes into the VM's current disk file; returns {vm, vm_id, disk_id, path, seed, writes}."""
    vm = _need_vm(layout, vm_name)
    with layout.vm_lock(vm["id"]):
        vm = layout.read_vm(vm["id"])
        if not 0 <= disk < len(vm["disks"]):
            _refuse("VM %s has %d disk(s); churn disk index %d does not exist" % (vm["name"], len(vm["disks"]), disk))
        target = vm["disks"][disk]
        if write_size % target["logical_sector_size"]:
            _refuse("write_size %d is not a multiple of the %d-byte sector" % (write_size, target["logical_sector_size"]))
        try:
            planned = lab_disks.plan_writes(seed, writes, write_size, target["virtual_size"], offsets)
            if any(offset % target["logical_sector_size"] for offset, _length in planned):
                _refuse("churn offsets must be multiples of the %d-byte sector" % target["logical_sector_size"])
            written = planned if check_mode else lab_vm.guest_write(target, seed, planned)
        except ValueError as exc:
            _refuse("VM %s: %s" % (vm["name"], exc))
    ranges = [{"offset": item[0], "length": item[1]} if isinstance(item, tuple) else item for item in written]
    return {"vm": vm["name"], "vm_id": vm["id"], "disk_id": target["disk_id"], "path": target["current"], "seed": seed,
            "writes": ranges}


def guest_files(layout, vm_name, files, disk=0, partition=1, check_mode=False):
    """Guest file writes (create, change, delete) in a partition of a disk made with guest_filesystem; the changed
    blocks are written as guest writes, so the next incremental carries them. Returns {vm, disk_id, partition, changed}."""
    vm = _need_vm(layout, vm_name)
    with layout.vm_lock(vm["id"]):
        vm = layout.read_vm(vm["id"])
        if not 0 <= disk < len(vm["disks"]):
            _refuse("VM %s has %d disk(s); guest_files disk index %d does not exist" % (vm["name"], len(vm["disks"]), disk))
        target = vm["disks"][disk]
        if check_mode:
            return {"vm": vm["name"], "disk_id": target["disk_id"], "partition": partition, "changed": [f["path"] for f in files]}
        try:
            done = guest_filesystems.change_files(target, partition, files)
        except ValueError as exc:
            _refuse("VM %s: %s" % (vm["name"], exc))
    return dict(done, vm=vm["name"], disk_id=target["disk_id"])


def resize_disk(layout, vm_name, disk=0, size=None, check_mode=False):
    """Grow a disk (VM without checkpoints); its RCT ids become invalid. Returns changed."""
    vm = _need_vm(layout, vm_name)
    with layout.vm_lock(vm["id"]):
        vm = layout.read_vm(vm["id"])
        if not 0 <= disk < len(vm["disks"]):
            _refuse("VM %s has no disk %d" % (vm["name"], disk))
        target = vm["disks"][disk]
        if size == target["virtual_size"]:
            return False
        if vm["checkpoints"]:
            _refuse("VM %s has checkpoints; Hyper-V cannot resize a disk with checkpoints" % vm["name"],
                    hint="Remove the checkpoints first.")
        if check_mode:
            return True
        try:
            lab_disks.grow(target["current"], size)
        except ValueError as exc:
            _refuse(str(exc))
        target["virtual_size"] = size
        target["base_type"] = lab_disks.describe(target["current"])["type"]   # a grown fixed disk is dynamic
        tracking = lab_rct.load(target["rct_file"], target["disk_id"])
        lab_rct.invalidate_all(tracking, "the disk was resized (VHD changed offline)")
        lab_rct.save(target["rct_file"], tracking)
        layout.write_vm(vm)
        lab_vm.save_configuration(layout, vm)
    return True


def _rct_host_facts(host_doc):
    """The host facts RCT eligibility looks at (build and cluster), straight from the lab's files: a migration
    decides this as Hyper-V itself would, without asking the emulated host through its faults."""
    return {"os_build": ERAS[host_doc["era"]]["os_build"], "os_version": ERAS[host_doc["era"]]["os_version"],
            "cluster": cluster_fact(host_doc), "csvs": csv_facts(host_doc)}


def migrate_vm(layout, vm_name, target_host, check_mode=False):
    """Move a VM to another lab host of the same lab directory; returns changed.

    A target without RCT (older than 2016, or a cluster below level 9) invalidates the disks' RCT ids.
    """
    vm = find_vm(layout, vm_name)
    target = LabLayout(layout.lab_directory, target_host)
    if vm is None:
        if find_vm(target, vm_name) is not None:
            return False   # already moved
        _need_vm(layout, vm_name)
    if not target.exists():
        _refuse("migration target lab host %s does not exist" % target_host)
    target_doc = target.read_host()
    if version_tuple(vm["configuration_version"]) > version_tuple(ERAS[target_doc["era"]]["max_config"]):
        _refuse("VM %s has configuration version %s; %s supports up to %s"
                % (vm["name"], vm["configuration_version"], target_host, ERAS[target_doc["era"]]["max_config"]),
                hint="Migrate it to a newer host.")
    if check_mode:
        return True
    first, second = sorted([layout, target], key=lambda item: item.host)
    with first.host_lock(), second.host_lock():
        with layout.vm_lock(vm["id"]):
            vm = layout.read_vm(vm["id"])
            old_dir, new_dir = layout.vm_dir(vm["id"]), target.vm_dir(vm["id"])
            make_private_dir(target.vms_dir)
            os.rename(old_dir, new_dir)
        vm = _rebase_paths(vm, old_dir, new_dir)
        if vm.get("csv") not in target_doc.get("csvs", []):
            vm["csv"] = None
        facts = _rct_host_facts(target_doc)
        eligibility = rct_eligibility(facts, lab_vm.vm_result(target, target_doc, vm))
        for disk in vm["disks"]:
            if os.path.exists(disk["rct_file"]) and not eligibility.eligible:
                tracking = lab_rct.load(disk["rct_file"], disk["disk_id"])
                lab_rct.invalidate_all(tracking, "the VM was migrated to %s, where it has no RCT (%s)"
                                       % (target_host, "; ".join(eligibility.reasons)))
                lab_rct.save(disk["rct_file"], tracking)
        target.write_vm(vm)
        lab_vm.save_configuration(target, vm)
        _index(layout, vm["id"], None, remove=True)
        _index(target, vm["id"], vm["name"])
    return True


def _rebase_paths(value, old, new):
    """Every path under ``old`` in a vm.json value rewritten under ``new``."""
    if isinstance(value, dict):
        return dict((_rebase_paths(key, old, new), _rebase_paths(item, old, new)) for key, item in value.items())
    if isinstance(value, list):
        return [_rebase_paths(item, old, new) for item in value]
    if isinstance(value, str) and (value == old or value.startswith(old + os.sep)):
        return new + value[len(old):]
    return value


# --- fixtures for the WMI emulation (lab_bridge): what other software and broken hosts leave behind -----

def add_foreign_reference_point(layout, vm_name, reference_point_type=1):
    """Give a VM a reference point this collection did not create; returns its record.

    ``reference_point_type`` 1 = log based (Hyper-V Replica or another product's log tracking: no RCT ids,
    HasAssociatedData true), 2 = RCT based (another backup product: RCT ids issued at the disks' current
    state, so its chain stays usable). Both appear as Msvm_VirtualSystemReferencePoint and must survive
    every run of this collection (issue 11, point 3).
    """
    if int(reference_point_type) not in (1, 2):
        _refuse("reference_point_type must be 1 (log based) or 2 (RCT based), not %r" % (reference_point_type,))
    vm = _need_vm(layout, vm_name)
    with layout.vm_lock(vm["id"]):
        vm = layout.read_vm(vm["id"])
        rct_ids = {}
        if int(reference_point_type) == 2:
            per_point = quirk_value(layout.read_host(), RCT_ID_PER_REFERENCE_POINT, False) is True
            for disk in vm["disks"]:
                tracking = lab_rct.load(disk["rct_file"], disk["disk_id"])
                rct_ids[disk["disk_id"]] = lab_rct.issue_id(tracking, tracking["sequence"], per_point)
                lab_rct.save(disk["rct_file"], tracking)
        point = {"id": new_guid(), "vm_id": vm["id"], "created": None, "consistency": "crash", "rct_ids": rct_ids,
                 "type": int(reference_point_type), "foreign": True}
        vm["reference_points"].append(point)
        layout.write_vm(vm)
    return dict(point)


def add_passthrough_disk(layout, vm_name, controller_type="SCSI", controller_number=0, controller_location=None):
    """Attach a pass-through (physical) disk to a VM; returns its record.

    WMI shows it as a "Microsoft:Hyper-V:Physical Disk Drive" RASD whose HostResource is a host disk path,
    with no SASD; checkpoints need IgnoreNonSnapshottableDisks (issue 11, point 14).
    """
    vm = _need_vm(layout, vm_name)
    with layout.vm_lock(vm["id"]):
        vm = layout.read_vm(vm["id"])
        used = [(item["controller_type"], item["controller_number"], item["controller_location"])
                for item in vm["disks"] + vm.get("passthrough_disks", [])]
        if controller_location is None:
            controller_location = max([slot[2] for slot in used if slot[:2] == (controller_type, controller_number)] + [-1]) + 1
        slot = (controller_type, int(controller_number), int(controller_location))
        if slot in used:
            _refuse("VM %s already has a disk at %s %d:%d" % (vm["name"], slot[0], slot[1], slot[2]))
        item = {"controller_type": slot[0], "controller_number": slot[1], "controller_location": slot[2],
                "disk_guid": new_guid().upper()}
        vm.setdefault("passthrough_disks", []).append(item)
        layout.write_vm(vm)
    return dict(item)


def remove_disk_file(layout, vm_name, disk=0):
    """Make a VM's current disk file go missing (deleted behind Hyper-V's back); returns the path removed.

    The VM's settings still name the file, as on Windows; GetVirtualHardDiskSettingData answers 32779
    (File not found) for it (issue 11, point 14).
    """
    vm = _need_vm(layout, vm_name)
    with layout.vm_lock(vm["id"]):
        vm = layout.read_vm(vm["id"])
        if not 0 <= disk < len(vm["disks"]):
            _refuse("VM %s has no disk %d" % (vm["name"], disk))
        path = vm["disks"][disk]["current"]
        if os.path.exists(path):
            os.unlink(path)
    return path
