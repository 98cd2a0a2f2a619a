"""Issue 16 point 5: ``--diff`` where a module changes state, in check mode and for real, against a lab host.

One playbook runs twice with ``ansible-playbook --diff``, first with ``--check``: hyperv_vss_ensure (the VSS
service and a VM's backup integration service), hyperv_backup_repository (a new repository's settings, a key slot
added) and hyperv_lab (host settings and a VM's state). The registered results carry the diffs the default
callback prints; the test checks them and the printed text, and that check mode changed nothing.
"""
import json
import sys

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_host import LabTransport

from workflow_helpers import run_playbook

pytestmark = pytest.mark.integration

PASSPHRASE = "diff test passphrase"


def _playbook(base):
    lab = {"lab_directory": str(base / "lab"), "host": "hv1"}
    repository = {"repository": str(base / "repository"), "repository_passphrase": PASSPHRASE, "chunk_size": 65536}
    setup = dict(lab, era="2019", services={"vss": "Stopped"},
                 vms=[{"name": "web01", "disks": [{"size": 4 * 1024 * 1024}],
                       "integration_services": [{"name": "VSS", "enabled": False}]}])
    tasks = [
        {"name": "Build the lab host (always for real)", "hyperv.backup.hyperv_lab": setup, "check_mode": False, "diff": False},
        {"name": "Start VSS and enable the backup integration service", "register": "vss",
         "hyperv.backup.hyperv_vss_ensure": {"transport": "lab", "lab_directory": lab["lab_directory"], "host": "hv1",
                                             "enable_backup_integration": True, "fail_on_blocking": False}},
        {"name": "Create the repository", "hyperv.backup.hyperv_backup_repository": repository, "register": "created"},
        {"name": "Add a recovery key slot", "register": "slot", "when": "not ansible_check_mode",
         "hyperv.backup.hyperv_backup_repository": {"repository": repository["repository"], "repository_passphrase": PASSPHRASE,
                                                    "state": "key_slot_added", "new_repository_passphrase": "recovery words"}},
        {"name": "Change the lab host", "register": "lab_change",
         "hyperv.backup.hyperv_lab": dict(lab, quirks=["byte_length_strict"], vms=[{"name": "web01", "state": "Off"}])},
        {"name": "Keep the results", "check_mode": False, "diff": False, "ansible.builtin.copy": {
            "dest": str(base / "results-{{ 'check' if ansible_check_mode else 'real' }}.json"), "mode": "0600",
            "content": "{{ {'vss': vss, 'created': created, 'slot': slot | default(None), 'lab_change': lab_change} | to_nice_json }}"}},
    ]
    path = base / "play.yml"
    path.write_text(json.dumps([{"name": "diff mode", "hosts": "localhost", "gather_facts": False,
                                 "vars": {"ansible_python_interpreter": sys.executable}, "tasks": tasks}]))
    return path


def _vm(base):
    _host, vms = LabTransport(str(base / "lab"), "hv1").facts()
    return vms[0]


def test_diffs_in_check_mode_and_for_real(tmp_path):
    playbook = _playbook(tmp_path)
    checked = run_playbook(playbook, "--check", "--diff", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout[-6000:] + checked.stderr[-3000:]
    result = json.loads((tmp_path / "results-check.json").read_text())

    vss = result["vss"]["diff"]
    assert vss["before"]["services"]["vss"] == {"status": "Stopped"} and vss["after"]["services"]["vss"] == {"status": "Running"}
    assert vss["before"]["vms"]["web01"] == {"integration_services": {"VSS": {"enabled": False}}}
    assert vss["after"]["vms"]["web01"] == {"integration_services": {"VSS": {"enabled": True}}}
    created = result["created"]["diff"]
    assert created["before"] == {} and created["after"]["encrypted"] is True and created["after"]["chunk_size"] == 65536
    assert created["after"]["key_slots"] == {"passphrase": "key slot"} and PASSPHRASE not in json.dumps(created)
    lab = result["lab_change"]["diff"]
    assert lab["before"]["quirks"] == [] and lab["after"]["quirks"] == ["byte_length_strict"]
    assert lab["before"]["vms"]["web01"]["state"] == "Running" and lab["after"]["vms"]["web01"]["state"] == "Off"
    # what the default callback printed
    assert '-            "status": "Stopped"' in checked.stdout and '+            "status": "Running"' in checked.stdout
    assert "+++ after: repository %s" % (tmp_path / "repository") in checked.stdout
    # and check mode changed nothing
    vm = _vm(tmp_path)
    assert vm["state"] == "Running" and [s for s in vm["integration_services"] if s["name"] == "VSS"][0]["enabled"] is False
    assert not (tmp_path / "repository").exists()

    real = run_playbook(playbook, "--diff", cwd=tmp_path)
    assert real.returncode == 0, real.stdout[-6000:] + real.stderr[-3000:]
    result = json.loads((tmp_path / "results-real.json").read_text())
    assert result["vss"]["diff"] == vss                                   # what check mode foresaw
    created = result["created"]["diff"]
    assert created["before"] == {} and created["after"]["key_slots"] == {"passphrase": "key slot"}
    assert created["after"]["location"] == str(tmp_path / "repository") and created["after"]["padding"] == "none"
    slot = result["slot"]["diff"]
    assert slot["before"] == {"key_slots": {"passphrase": "key slot"}}
    assert slot["after"] == {"key_slots": {"passphrase": "key slot", "recovery": "key slot"}}
    lab = result["lab_change"]["diff"]          # before: as vss_ensure left the host this time
    assert lab["before"]["services"]["vss"]["status"] == "Running" and lab["after"]["services"] == lab["before"]["services"]
    assert lab["before"]["quirks"] == [] and lab["after"]["quirks"] == ["byte_length_strict"]
    assert lab["before"]["vms"]["web01"]["state"] == "Running" and lab["after"]["vms"]["web01"]["state"] == "Off"
    vm = _vm(tmp_path)
    assert vm["state"] == "Off" and [s for s in vm["integration_services"] if s["name"] == "VSS"][0]["enabled"] is True
    assert '+        "recovery": "key slot"' in real.stdout, real.stdout[-6000:]
