"""Issue 14: the hyperv_backup role's plan of waves (roles/hyperv_backup/templates/waves.json.j2), rendered by Ansible.

Four inventory hosts with made-up VM lists (no lab needed): a 2022 host with 7 RCT VMs, a 2008 R2 host whose VMs share a
host queue, and two nodes of one 2008 R2 cluster whose VMs on CSV1 share one key across both nodes. With per_host 3 and
max_per_repository 5 given as strings (as -e key=value gives them), every wave keeps all three rules, every VM is in
exactly one wave, and no wave is wasted: there are as many waves as the busiest rule needs.
"""
import json
import math

import pytest
import yaml

from workflow_helpers import ROOT, load_json, run_playbook

pytestmark = pytest.mark.integration

TEMPLATE = ROOT / "roles" / "hyperv_backup" / "templates" / "waves.json.j2"
CSV_KEY = "OLDCLUSTER:csv:C:\\ClusterStorage\\Volume1"
HOSTS = {
    "hv2022": [None] * 7,
    "hv2008": ["hv2008:host"] * 3,
    "node-a": [CSV_KEY, CSV_KEY, None],
    "node-b": [CSV_KEY, CSV_KEY],
}
PER_HOST, PER_REPOSITORY = 3, 5


def _selected(host, keys):
    return [{"name": "%s-vm%d" % (host, index), "id": "%s-%d" % (host, index), "serialization_key": key}
            for index, key in enumerate(keys)]


def test_the_waves_keep_every_rule(tmp_path):
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"vars": {"ansible_connection": "local"}, "hosts": dict(
        (host, {"hyperv_backup_selected": _selected(host, keys)}) for host, keys in HOSTS.items())}}))
    out = tmp_path / "waves.json"
    play = tmp_path / "plan.yml"
    play.write_text(json.dumps([{"name": "Plan", "hosts": "all", "gather_facts": False, "tasks": [
        {"name": "Plan the waves", "run_once": True, "delegate_to": "localhost",
         "ansible.builtin.copy": {"content": "{{ lookup('ansible.builtin.template', '%s') }}" % TEMPLATE, "dest": str(out),
                                  "mode": "0600"}}]}]))
    proc = run_playbook(play, "-e", "hyperv_backup_per_host=%d" % PER_HOST, "-e", "hyperv_backup_max_per_repository=%d" % PER_REPOSITORY,
                        inventory=inventory)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    waves = load_json(out)

    placed = sorted((host, index) for wave in waves for host, indices in wave.items() for index in indices)
    assert placed == sorted((host, index) for host, keys in HOSTS.items() for index in range(len(keys)))
    for wave in waves:
        assert sum(len(indices) for indices in wave.values()) <= PER_REPOSITORY, wave
        assert all(len(indices) <= PER_HOST for indices in wave.values()), wave
        keys = [HOSTS[host][index] for host, indices in wave.items() for index in indices if HOSTS[host][index]]
        assert len(keys) == len(set(keys)), "two VMs of one queue in a wave: %s" % wave
    vms = sum(len(keys) for keys in HOSTS.values())
    needed = max(math.ceil(vms / PER_REPOSITORY), math.ceil(7 / PER_HOST), 3, 4)    # 4 VMs share the CSV key
    assert len(waves) == needed, waves
