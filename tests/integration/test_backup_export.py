"""hyperv_backup_export with a real nbdkit: a backup's disk served over NBD equals its full restore.

Each test backs up a lab VM with real ansible-playbook runs, restores the backups to raw images, starts exports with the
module, and lets qemu-img (an independent NBD client) compare every ``nbd://`` URL with the restored image. Then it stops
the exports and proves nothing is left: no process with our script (by pid and by scanning /proc), no state directory.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

UNIT_HELPERS = Path(__file__).resolve().parent.parent / "unit" / "plugins" / "module_utils"
if str(UNIT_HELPERS) not in sys.path:
    sys.path.insert(0, str(UNIT_HELPERS))

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not shutil.which("nbdkit"), reason="nbdkit is not installed (scripts/setup.sh installs it)")]

MiB = 1024 * 1024


def free_ports(count):
    sockets, ports = [], []
    for _port in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
        ports.append(sock.getsockname()[1])
    for sock in sockets:
        sock.close()
    return ports


def nbdkit_processes(state_dir):
    """Pids of the processes whose command line mentions ``state_dir`` (our nbdkit exports), from /proc."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % name, "rb") as handle:
                cmdline = handle.read().decode("utf-8", "replace")
            with open("/proc/%s/stat" % name, "rb") as handle:
                zombie = handle.read().decode("ascii", "replace").rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            continue
        if "nbdkit" in cmdline and state_dir in cmdline and not zombie:
            found.append(int(name))
    return found


def backup_tasks(repository_options, vm="expvm"):
    """A lab host with a two-disk VM, two backups with guest writes between them, each restored to raw images."""
    repo = dict(repository_options)
    return [
        {"name": "Build a host with a two-disk VM", "hyperv.backup.hyperv_lab": {
            "host": "hx19", "era": "2019",
            "vms": [{"name": vm, "disks": [{"size": 6 * MiB, "fill": {"seed": 5, "percent": 50}},
                                           {"size": 3 * MiB, "fill": {"seed": 6, "percent": 30}}]}]}},
        {"name": "Create the repository", "hyperv.backup.hyperv_backup_repository": dict(repo, chunk_size=65536)},
        {"name": "First backup", "hyperv.backup.hyperv_backup": dict(repo, host="hx19", vm=vm), "register": "first"},
        {"name": "The guest writes", "hyperv.backup.hyperv_lab": {
            "host": "hx19", "churn": [{"vm": vm, "seed": 11, "writes": 8, "write_size": 65536},
                                      {"vm": vm, "disk": 1, "seed": 12, "writes": 4, "write_size": 8192}]}},
        {"name": "Second backup (incremental)", "hyperv.backup.hyperv_backup": dict(repo, host="hx19", vm=vm), "register": "second"},
        {"name": "Restore both backups to raw images", "hyperv.backup.hyperv_restore": dict(
            repo, backup_id="{{ item }}", destination="{{ work_directory }}/restored/{{ item }}", format="raw"),
         "loop": "{{ [first.backup_id, second.backup_id] }}", "register": "restored"},
        {"name": "Remember the restored files", "ansible.builtin.set_fact": {
            "restored_files": "{{ dict(restored.results | map(attribute='backup_id') | zip(restored.results "
                              "| map(attribute='disks'))) }}"}},
    ]


def compare_task(url_expr, file_expr, name):
    return {"name": name, "ansible.builtin.command": {"argv": ["qemu-img", "compare", "-f", "raw", "-F", "raw", url_expr, file_expr]},
            "register": "compared", "changed_when": False,
            "failed_when": "compared.rc != 0 or 'Images are identical' not in compared.stdout"}


def test_exports_equal_restores_two_at_once_and_stop_cleanly(ansible_playbook, tmp_path):
    state_dir = str(tmp_path / "exports")
    p1, p2, p3, p4 = free_ports(4)
    repo = {"repository": "{{ repository_path }}"}
    export = dict(repo, state_dir=state_dir)
    tasks = backup_tasks(repo) + [
        {"name": "Export disk 0 of the first backup", "hyperv.backup.hyperv_backup_export": dict(
            export, backup_id="{{ first.backup_id }}", disk="scsi0-0", port=p1), "register": "ex1"},
        {"name": "Export disk 1 of the second backup (by VM, latest)", "hyperv.backup.hyperv_backup_export": dict(
            export, vm="expvm", disk="SCSI 0:1", port=p2, export_name="second-disk1"), "register": "ex2"},
        {"name": "Export disk 0 of the second backup", "hyperv.backup.hyperv_backup_export": dict(
            export, backup_id="{{ second.backup_id }}", disk="scsi0-0", port=p3), "register": "ex3"},
        {"name": "The same export again", "hyperv.backup.hyperv_backup_export": dict(
            export, backup_id="{{ first.backup_id }}", disk="scsi0-0", port=p1), "register": "again"},
        {"name": "Another backup on a port in use", "hyperv.backup.hyperv_backup_export": dict(
            export, backup_id="{{ second.backup_id }}", disk="scsi0-0", port=p1), "register": "busy", "ignore_errors": True},
        {"name": "Check mode of a new export", "hyperv.backup.hyperv_backup_export": dict(
            export, backup_id="{{ second.backup_id }}", disk="scsi0-1", port=p4), "check_mode": True, "register": "checked"},
        {"name": "Results say what is served", "ansible.builtin.assert": {"that": [
            "ex1 is changed and ex2 is changed and ex3 is changed",
            "again is not changed and again.pid == ex1.pid",
            "busy is failed and 'already serves backup' in busy.msg",
            "checked is changed and checked.pid is none and checked.url is search(':%d/')" % p4,
            "ex1.url == 'nbd://127.0.0.1:%d/' ~ first.backup_id ~ '-scsi0-0'" % p1,
            "ex2.url == 'nbd://127.0.0.1:%d/second-disk1'" % p2,
            "ex2.backup_id == second.backup_id and ex2.disk_key == 'scsi0-1'",
            "ex1.virtual_size == %d and ex2.virtual_size == %d" % (6 * MiB, 3 * MiB),
        ]}},
        compare_task("{{ ex1.url }}", "{{ restored_files[first.backup_id][0].path }}", "The first backup's disk 0 equals its restore"),
        compare_task("{{ ex2.url }}", "{{ restored_files[second.backup_id][1].path }}", "The second backup's disk 1 equals its restore"),
        compare_task("{{ ex3.url }}", "{{ restored_files[second.backup_id][0].path }}", "The second backup's disk 0 equals its restore"),
        {"name": "Keep the results for the test", "ansible.builtin.copy": {
            "dest": "{{ work_directory }}/exports.json", "mode": "0600",
            "content": "{{ {'ex1': ex1, 'ex2': ex2, 'ex3': ex3, 'restored': restored_files} | to_json }}"}},
    ]
    result = ansible_playbook(tasks)
    assert result.rc == 0, result.output[-20000:]
    started = json.loads((tmp_path / "exports.json").read_text())
    pids = sorted(started[key]["pid"] for key in ("ex1", "ex2", "ex3"))
    assert sorted(nbdkit_processes(state_dir)) == pids
    assert not os.path.exists(os.path.join(state_dir, "127.0.0.1_%d" % p4))      # check mode started nothing
    # a second reader that is not qemu: nbdinfo lists the export by its name
    listing = subprocess.run(["nbdinfo", "--list", "--json", "nbd://127.0.0.1:%d" % p2], capture_output=True, text=True, check=True)
    assert [e["export-name"] for e in json.loads(listing.stdout)["exports"]] == ["second-disk1"]
    wrong = subprocess.run(["qemu-img", "info", "nbd://127.0.0.1:%d/no-such-export" % p2], capture_output=True, text=True, check=False)
    assert wrong.returncode != 0

    # nbdkit of ex3 dies (kill -9): its state is stale; the next run removes it and starts a new one
    os.kill(started["ex3"]["pid"], signal.SIGKILL)
    stop = [
        {"name": "Start the killed export again", "hyperv.backup.hyperv_backup_export": dict(
            export, backup_id=started["ex3"]["backup_id"], disk="scsi0-0", port=p3), "register": "restarted"},
        compare_task("{{ restarted.url }}", started["restored"][started["ex3"]["backup_id"]][0]["path"], "The restarted export reads right"),
        {"name": "Stop every export", "hyperv.backup.hyperv_backup_export": dict(export, port="{{ item }}", state="absent"),
         "loop": [p1, p2, p3], "register": "stopped"},
        {"name": "Stop them again", "hyperv.backup.hyperv_backup_export": dict(export, port="{{ item }}", state="absent"),
         "loop": [p1, p2, p3], "register": "stopped_again"},
        {"name": "Stopping changed once", "ansible.builtin.assert": {"that": [
            "restarted is changed and restarted.stale_removed == ['127.0.0.1_%d']" % p3,
            "restarted.pid != %d" % started["ex3"]["pid"],
            "stopped.results | map(attribute='changed') | unique == [true]",
            "stopped.results | map(attribute='stopped') | unique == [true]",
            "stopped_again.results | map(attribute='changed') | unique == [false]",
        ]}},
    ]
    result = ansible_playbook(stop)
    assert result.rc == 0, result.output[-20000:]
    assert nbdkit_processes(state_dir) == []
    for pid in pids:
        assert not os.path.exists("/proc/%d/cmdline" % pid) or "nbdkit" not in open("/proc/%d/cmdline" % pid).read()
    assert os.listdir(state_dir) == []


# --- module_utils level, still with a real nbdkit: TLS, an encrypted S3 repository, secrets ---------------------------

def backed_up_lab(tmp_path, repo):
    """One backup of a lab VM (two disks) in ``repo`` and its raw restore: (backup_id, {disk_key: raw path})."""
    from ansible_collections.hyperv.backup.plugins.module_utils.backup.backup_engine import run_backup
    from ansible_collections.hyperv.backup.plugins.module_utils.backup.restore_engine import run_restore
    from ansible_collections.hyperv.backup.plugins.module_utils.host.connection import HostSession
    from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_admin
    from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import LabLayout
    directory = str(tmp_path / "lab")
    layout = LabLayout(directory, "hx19")
    lab_admin.ensure_host(layout, era="2019")
    lab_admin.ensure_vm(layout, {"name": "vm", "disks": [{"size": 4 * MiB, "fill": {"seed": 3, "percent": 60}},
                                                         {"size": 2 * MiB, "fill": {"seed": 4, "percent": 40}}]})
    params = dict(transport="lab", host="hx19", lab_directory=directory, vm="vm")
    with HostSession.from_module_params(params) as session:
        backup_id = run_backup(session, repo, params)["backup_id"]
    restored = run_restore(repo, {"backup_id": backup_id, "destination": str(tmp_path / "restored"), "format": "raw"})
    return backup_id, dict((d["disk_key"], d["path"]) for d in restored["disks"])


def test_tls_required_refuses_plain_clients_and_serves_psk_clients(tmp_path):
    from ansible_collections.hyperv.backup.plugins.module_utils.export import nbd_export
    from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository
    repo = Repository.init(str(tmp_path / "repo"), chunk_size=65536)
    backup_id, files = backed_up_lab(tmp_path, repo)
    psk_dir = tmp_path / "psk"
    psk_dir.mkdir()
    (psk_dir / "keys.psk").write_text("qemu:%s\n" % os.urandom(32).hex())       # psktool's format; qemu's user is qemu
    os.chmod(str(psk_dir / "keys.psk"), 0o600)
    (port,) = free_ports(1)
    params = {"repository": repo.location, "backup_id": backup_id, "disk": "scsi0-1", "port": port,
              "state_dir": str(tmp_path / "exports"), "tls": True, "tls_psk_file": str(psk_dir / "keys.psk")}
    started = nbd_export.present(repo, params, "nbdkit")
    try:
        assert started["url"] == "nbds://127.0.0.1:%d/%s-scsi0-1" % (port, backup_id)
        plain = subprocess.run(["qemu-img", "info", "nbd://127.0.0.1:%d/%s-scsi0-1" % (port, backup_id)],
                               capture_output=True, text=True, check=False)
        assert plain.returncode != 0 and "TLS" in plain.stderr
        secure = subprocess.run(["qemu-img", "compare", "--object", "tls-creds-psk,id=tls0,endpoint=client,dir=%s" % psk_dir,
                                 "--image-opts", "driver=nbd,host=127.0.0.1,port=%d,export=%s-scsi0-1,tls-creds=tls0" % (port, backup_id),
                                 "driver=file,filename=%s" % files["scsi0-1"]], capture_output=True, text=True, check=False)
        assert secure.returncode == 0 and "identical" in secure.stdout, secure.stdout + secure.stderr
    finally:
        nbd_export.absent(params)
    assert nbdkit_processes(params["state_dir"]) == []


def test_encrypted_s3_repository_export_keeps_secrets_off_the_command_line(tmp_path):
    from s3_server import S3Server
    from ansible_collections.hyperv.backup.plugins.module_utils.export import nbd_export
    from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository
    server = S3Server().start()
    try:
        location, s3 = server.new_bucket()
        passphrase = "export-Passphrase-%s" % os.urandom(6).hex()
        repo = Repository.init(location, passphrase=passphrase, chunk_size=65536, s3_options=s3)
        backup_id, files = backed_up_lab(tmp_path, repo)
        (port,) = free_ports(1)
        params = {"repository": location, "repository_passphrase": passphrase, "backup_id": backup_id, "disk": "scsi0-0",
                  "port": port, "state_dir": str(tmp_path / "exports"), "repository_s3_endpoint_url": s3["endpoint_url"],
                  "repository_s3_access_key": s3["access_key"], "repository_s3_secret_key": s3["secret_key"],
                  "repository_s3_region": s3["region"]}
        started = nbd_export.present(repo, params, "nbdkit")
        try:
            compared = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", started["url"], files["scsi0-0"]],
                                      capture_output=True, text=True, check=False)
            assert compared.returncode == 0 and "identical" in compared.stdout, compared.stdout + compared.stderr
            pid = started["pid"]
            with open("/proc/%d/cmdline" % pid, "rb") as handle:
                cmdline = handle.read().decode()
            assert passphrase not in cmdline and "testing" not in cmdline
            # the settings file (the only place the secrets were written) is gone; nothing under the export holds them
            export_dir = os.path.dirname(started["state_file"])
            assert not os.path.exists(os.path.join(export_dir, "settings.json"))
            for root, _dirs, names in os.walk(export_dir):
                for name in names:
                    with open(os.path.join(root, name), "rb") as handle:
                        assert passphrase.encode() not in handle.read(), name
            assert oct(os.stat(started["state_file"]).st_mode & 0o777) == "0o600"
        finally:
            stopped = nbd_export.absent(params)
        assert stopped["stopped"] and nbdkit_processes(params["state_dir"]) == []
        assert not os.path.exists(os.path.dirname(started["state_file"]))
    finally:
        server.stop()
