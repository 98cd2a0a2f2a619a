"""Lab host under Ansible forks: several processes churning, checkpointing and adding VMs on one host at once."""
import json
import multiprocessing
import os
import signal
import stat

from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_admin
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_host import LabTransport
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import LabLayout

from test_lab_helpers import SMALL_DISK, TAG, GuestModel, build_host, read_all

ROUNDS = 4


def _backup_rounds(lab_dir, vm_name, seed):
    """What one fork does: guest writes, recovery point, more writes, convert or remove; returns the churns."""
    layout = LabLayout(lab_dir, "hv01")
    transport = LabTransport(lab_dir, "hv01")
    vm_id = lab_admin.find_vm(layout, vm_name)["id"]
    churns = []
    for number in range(ROUNDS):
        churns.append(lab_admin.churn(layout, vm_name, seed=seed * 100 + number, writes=8))
        point = transport.run("create_recovery_point", {"vm_id": vm_id, "method": "rct", "consistency": "application", "tag": TAG})
        churns.append(lab_admin.churn(layout, vm_name, seed=seed * 100 + 50 + number, writes=8))
        op = "convert_to_reference_point" if number % 2 else "remove_recovery_point"
        transport.run(op, {"vm_id": vm_id, "id": point["id"]})
        transport.run("start_service", {"name": "swprv"})
    return vm_name, churns


def _add_vms(lab_dir, names):
    layout = LabLayout(lab_dir, "hv01")
    for name in names:
        lab_admin.ensure_vm(layout, {"name": name, "disks": [{"size": SMALL_DISK}]})
        lab_admin.ensure_host(layout, faults=["rct_invalid"] if len(name) % 2 else [])
    lab_admin.ensure_host(layout, faults=[])
    return None, []


def _run(job):
    function, args = job
    return function(*args)


def test_parallel_forks_keep_host_and_vm_state_consistent(tmp_path):
    names = ["vm%d" % index for index in range(4)]
    layout, transport, ids = build_host(tmp_path, vms=names)
    jobs = [(_backup_rounds, (str(tmp_path), name, index + 1)) for index, name in enumerate(names)]
    jobs += [(_add_vms, (str(tmp_path), ["new%d" % index for index in range(start, 8, 2)])) for start in (0, 1)]
    # The forks end by sentinel (close + join), and take SIGTERM's default action back: a library imported by an
    # earlier test in the same process (ansible_runner.run) may have installed a SIGTERM handler that only sets a
    # flag, so Pool.terminate() (what leaving a ``with Pool`` does) would leave an idle fork waiting for ever.
    pool = multiprocessing.get_context("fork").Pool(len(jobs), initializer=signal.signal, initargs=(signal.SIGTERM, signal.SIG_DFL))
    try:
        results = pool.map(_run, jobs)
        pool.close()
    finally:
        pool.terminate()
        pool.join()

    host_doc = json.loads((tmp_path / "hv01" / "host.json").read_text())
    listed = transport.run("get_vms", {})
    assert sorted(host_doc["vms"].values()) == sorted(names + ["new%d" % index for index in range(8)])
    assert sorted(vm["name"] for vm in listed) == sorted(host_doc["vms"].values())
    assert host_doc["faults"] == [] and host_doc["services"]["swprv"]["status"] == "Running"
    for name, churns in results:
        if name is None:
            continue
        vm = [item for item in listed if item["name"] == name][0]
        assert vm["checkpoints"] == [] and len(vm["reference_points"]) == ROUNDS // 2
        model = GuestModel(SMALL_DISK)
        for churned in churns:
            model.apply(churned)
        assert read_all(vm["disks"][0]["path"], transport) == bytes(model.data)
    assert ids and layout.exists()
    leftovers = [name for _root, _dirs, files in os.walk(tmp_path) for name in files if name.startswith(".tmp-")]
    assert leftovers == []


def test_lab_files_are_owner_only(tmp_path):
    layout, transport, ids = build_host(tmp_path)
    transport.run("create_recovery_point", {"vm_id": ids["web01"], "method": "rct", "consistency": "application", "tag": TAG})
    for root, dirs, files in os.walk(layout.host_dir):
        for name in dirs + files:
            mode = os.stat(os.path.join(root, name)).st_mode
            assert stat.S_IMODE(mode) & 0o077 == 0, os.path.join(root, name)
