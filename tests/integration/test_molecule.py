"""`molecule test` of the collection's scenario (extensions/molecule/default): the roles against lab hosts.

The scenario uses molecule's ansible-native configuration (no driver, no containers): create.yml builds three
lab Hyper-V hosts on localhost, converge.yml applies hyperv_backup (with retention) to them and
hyperv_backup_schedule into a scratch root, verify.yml checks the catalogue, the report and the timer, and
destroy.yml removes it all.
"""
import re
import subprocess

import pytest

from workflow_helpers import ROOT, ansible_env, tool

pytestmark = [pytest.mark.integration, pytest.mark.quality, pytest.mark.slow]


def test_molecule_default_scenario():
    proc = subprocess.run([tool("molecule"), "test", "-s", "default"], cwd=str(ROOT / "extensions"),
                          capture_output=True, text=True, timeout=1200, env=ansible_env({"NO_COLOR": "1"}))
    out = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr)
    assert proc.returncode == 0, out[-15000:]
    for action in ("create", "converge", "verify", "destroy"):
        assert re.search(r"default ➜ %s: Executed: Successful" % action, out), (action, out[-5000:])
