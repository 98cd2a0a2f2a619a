"""Run real playbooks against lab hosts for the reliability tests, on top of the integration harness.

``run_tasks(work_dir, tasks, collect=[...])`` runs the tasks in the harness's play (lab transport,
per-test directories) and returns (PlaybookResult, {name: registered result}) -- the registered
variables named in ``collect`` are written to JSON by a last task, so the test judges real module
results, not text. Also the lab and repository helpers the fault tests share.
"""
import json
import os

from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_host import LabTransport
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vdisk import open_disk

from conftest import load_integration_harness

HARNESS = load_integration_harness()
MiB = 1024 * 1024
CHUNK_SIZE = MiB            # tiny disks: 1 MiB chunks keep several chunks per disk


def run_tasks(work_dir, tasks, collect=(), extra_vars=None, timeout=600):
    tasks = list(tasks)
    if collect:
        tasks.append({"name": "collect results", "ansible.builtin.copy": {
            "dest": "{{ work_directory }}/results.json", "mode": "0600",
            "content": "{{ {%s} | to_nice_json }}" % ", ".join("'%s': %s | default(None)" % (n, n) for n in collect)}})
    result = HARNESS.run_play(HARNESS.play_for({"tasks": tasks}, work_dir, extra_vars), work_dir, timeout=timeout)
    registered = {}
    path = os.path.join(str(work_dir), "results.json")
    if collect and os.path.exists(path):
        with open(path) as handle:
            registered = json.load(handle)
    return result, registered


def lab_task(host="hv1", **options):
    return {"name": "lab %s" % host, "hyperv.backup.hyperv_lab": dict({"host": host}, **options)}


def repository_task(passphrase=None, state="present", register=None, **options):
    args = dict({"repository": "{{ repository_path }}", "state": state}, **options)
    if state == "present":
        args.setdefault("chunk_size", CHUNK_SIZE)
    if passphrase:
        args["repository_passphrase"] = passphrase
    task = {"name": "repository %s" % state, "hyperv.backup.hyperv_backup_repository": args}
    if register:
        task.update(register=register, ignore_errors=True)
    return task


def backup_task(register, vm="web01", host="hv1", passphrase=None, ignore_errors=True, **options):
    args = dict({"host": host, "vm": vm, "repository": "{{ repository_path }}"}, **options)
    if passphrase:
        args["repository_passphrase"] = passphrase
    task = {"name": "backup %s (%s)" % (vm, register), "hyperv.backup.hyperv_backup": args, "register": register}
    if ignore_errors:
        task["ignore_errors"] = True
    return task


SNAPSHOT_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "snapshot_disk.py")


def snapshot_task(register_of_backup, dest_name, host="hv1"):
    """Save the guest-visible bytes of the disk of the VM just backed up (a raw image at ``dest_name``) to compare
    restores against. The result names the disk by its Windows path: snapshot_disk.py maps it through the lab."""
    return {"name": "snapshot disk after %s" % register_of_backup, "ansible.builtin.command": {"argv": [
        "{{ ansible_python_interpreter }}", SNAPSHOT_SCRIPT, "{{ lab_directory }}", host,
        "{{ %s.disks[0].path }}" % register_of_backup, "{{ work_directory }}/%s" % dest_name]},
        "environment": {"PYTHONPATH": os.environ.get("PYTHONPATH", "")},
        "when": "%s is succeeded" % register_of_backup}


def local_disk_path(path, work_dir=None, host="hv1"):
    """The local file of a disk path: a Windows path the lab host reported is mapped through the lab of ``work_dir``."""
    if work_dir is not None and not os.path.exists(str(path)):
        mapped = LabTransport(str(work_dir / "lab"), host).local(path)
        assert mapped, "the lab host maps no file to %s" % path
        return mapped
    return path


def disk_bytes(path, work_dir=None, host="hv1"):
    """The guest-visible bytes of a disk (chains read through); Windows paths need ``work_dir`` (its lab maps them)."""
    with open_disk(local_disk_path(path, work_dir, host)) as disk:
        return disk.read(0, disk.virtual_size)


def restored_bytes(repo, backup_id):
    record = repo.get_backup(backup_id)
    out = []
    for disk in record.disks:
        reader = repo.open_disk_reader(backup_id, disk["disk_key"])
        out.append(reader.read(0, reader.virtual_size))
    return out


def wrong_bytes(got, expected):
    return sum(1 for a, b in zip(got, expected) if a != b) + abs(len(got) - len(expected))


def open_repo(work_dir, passphrase=None):
    return Repository.open(str(work_dir / "repo"), passphrase=passphrase)


def our_recovery_points(work_dir, host, vm_id):
    """Recovery checkpoints tagged as ours still on the lab VM (a leftover means a run did not clean up)."""
    points = LabTransport(str(work_dir / "lab"), host).run("get_recovery_points", {"vm_id": vm_id})
    return [p for p in points if p.get("ours")]
