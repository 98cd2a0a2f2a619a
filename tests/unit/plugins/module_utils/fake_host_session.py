"""A tiny in-memory host session for unit tests of flows: answers host operations with the contract's shapes.

Only what the flows of method_choice / host_checks / recovery_points need; the lab emulator
(lab_host.py) is the full one and is used by the integration tests.
"""
import copy

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv.host_operations import get_operation


def make_vm(name, vm_id=None, state="Running", generation=2, config="9.0", vss="OK", vss_enabled=True, disks=1,
            scsi=1, clustered=False, csv_path=None, disk_format="vhdx"):
    vm_id = vm_id or "id-" + name
    services = [{"name": "Heartbeat", "enabled": True, "operational_status": "OK"}]
    if vss is not None:
        services.append({"name": "VSS", "enabled": vss_enabled, "operational_status": vss if vss_enabled else "Disabled"})
    return {"id": vm_id, "name": name, "generation": generation, "configuration_version": config, "state": state,
            "path": "/lab/" + name, "clustered": clustered, "csv_path": csv_path, "scsi_controllers": scsi,
            "integration_services": services, "checkpoints": [], "reference_points": [],
            "disks": [{"path": "/lab/%s/disk%d.%s" % (name, i, disk_format), "format": disk_format, "type": "dynamic",
                       "virtual_size": 1 << 30, "block_size": 1 << 25, "logical_sector_size": 512,
                       "disk_id": "%s-disk%d" % (vm_id, i), "controller_type": "SCSI", "controller_number": 0,
                       "controller_location": i, "parent_chain": []} for i in range(disks)]}


class FakeHostSession:
    """Answers run(op, **params); every call is recorded in ``calls``; ``faults`` makes operations fail."""

    def __init__(self, build=20348, vms=(), vss_status="Stopped", writer_state="[1] Stable", cluster=None,
                 providers=("software",), name="hv01"):
        self.host = name
        self.calls = []
        self.faults = {}
        self.vss_status = vss_status
        self.facts = {"computer_name": name, "os_name": "Windows Server", "os_version": "10.0.%d" % build, "os_build": build,
                      "cluster": cluster, "csvs": [],
                      "vss_providers": [{"name": p, "id": p, "type": p} for p in providers],
                      "hyperv_vss_writer": {"name": "Microsoft Hyper-V VSS Writer", "id": "w", "state": writer_state,
                                            "last_error": "No error"}}
        self.vms = dict((vm["id"], copy.deepcopy(vm)) for vm in vms)
        self.points = dict((vm_id, []) for vm_id in self.vms)
        self.references = dict((vm_id, []) for vm_id in self.vms)
        self.pages = {}      # path -> callable(limit_id, offset, length) -> page dict
        self.consistency = "application"
        self._counter = 0

    def fail(self, operation, category, message="injected", windows_error=None):
        raise HostOperationError(self.host, operation, category, message, windows_error=windows_error)

    def _next(self, prefix):
        self._counter += 1
        return "%s-%d" % (prefix, self._counter)

    def run(self, op, **params):
        get_operation(op).check_params(params)
        self.calls.append((op, params))
        if op in self.faults:
            self.fail(op, *self.faults[op])
        return getattr(self, "_" + op)(**params)

    def _get_service(self, name):
        return {"name": name, "display_name": "Volume Shadow Copy", "status": self.vss_status, "start_type": "Manual"}

    def _start_service(self, name):
        previous, self.vss_status = self.vss_status, "Running"
        return {"name": name, "display_name": "Volume Shadow Copy", "status": "Running", "previous_status": previous,
                "changed": previous != "Running"}

    def _get_host_info(self):
        return copy.deepcopy(self.facts)

    def _get_vms(self, names=None, ids=None):
        vms = list(self.vms.values())
        if names:
            missing = [n for n in names if n not in [vm["name"] for vm in vms]]
            if missing:
                self.fail("get_vms", "not_found", "no VM named %s" % missing[0])
            vms = [vm for vm in vms if vm["name"] in names]
        for vm in vms:
            vm["checkpoints"] = [{"id": p["id"], "name": p["name"], "type": "Recovery", "created": p["created"],
                                  "ours": p["name"].startswith("hyperv.backup:")} for p in self.points[vm["id"]]]
        return copy.deepcopy(vms)

    def _enable_integration_service(self, vm_id, name):
        for service in self.vms[vm_id]["integration_services"]:
            if service["name"] == name:
                changed = not service["enabled"]
                service.update(enabled=True, operational_status="OK")
                return {"vm_id": vm_id, "name": name, "enabled": True, "operational_status": "OK", "changed": changed}
        self.fail("enable_integration_service", "integration", "no service %s" % name)

    def _create_recovery_point(self, vm_id, method, consistency, tag):
        achieved = self.consistency
        if achieved == "crash" and consistency == "application":
            self.fail("create_recovery_point", "integration", "the guest could not be quiesced")
        vm = self.vms[vm_id]
        point = {"id": self._next("rp"), "vm_id": vm_id, "vm_name": vm["name"], "name": tag, "method": method,
                 "consistency": achieved, "created": "2026-11-25T06:00:%02dZ" % self._counter,
                 "disks": [dict(d, path=d["path"] + ".avhdx") for d in vm["disks"]], "configuration": {"files": []}}
        self.points[vm_id].append(point)
        return dict(copy.deepcopy(point), consistency_fallback=achieved == "crash")

    def _get_recovery_points(self, vm_id):
        return copy.deepcopy(self.points[vm_id])

    def _remove_recovery_point(self, vm_id, id):  # pylint: disable=redefined-builtin
        before = len(self.points[vm_id])
        self.points[vm_id] = [p for p in self.points[vm_id] if p["id"] != id]
        return {"id": id, "removed": len(self.points[vm_id]) < before}

    def _convert_to_reference_point(self, vm_id, id):  # pylint: disable=redefined-builtin
        point = [p for p in self.points[vm_id] if p["id"] == id][0]
        self._remove_recovery_point(vm_id, id)
        # ours/type/recovery_point_id as hyperv/reference_points.py reports them (the ownership marker on the host)
        reference = {"id": self._next("ref"), "vm_id": vm_id, "created": point["created"], "consistency": point["consistency"],
                     "ours": True, "type": "RCT", "recovery_point_id": id, "repositories": [],
                     "rct_ids": dict((d["disk_id"], "rct:%s:%d" % (d["disk_id"], self._counter)) for d in point["disks"])}
        self.references[vm_id].append(reference)
        return copy.deepcopy(reference)

    def _get_reference_points(self, vm_id):
        return copy.deepcopy(self.references[vm_id])

    def _remove_reference_point(self, vm_id, id):  # pylint: disable=redefined-builtin
        before = len(self.references[vm_id])
        self.references[vm_id] = [r for r in self.references[vm_id] if r["id"] != id]
        return {"id": id, "removed": len(self.references[vm_id]) < before}

    def _get_disk_changes(self, path, limit_id, byte_offset, byte_length, max_pages=1):
        # one page per call: the contract says "up to max_pages", and the paging tests count the calls
        return self.pages[path](limit_id, byte_offset, byte_length)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False
