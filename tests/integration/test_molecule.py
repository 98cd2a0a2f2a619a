"""`molecule test` of the collection's scenario (extensions/molecule/default): the roles against lab hosts.

The scenario uses molecule's ansible-native configuration (no driver, no containers): create.yml builds three
lab Hyper-V hosts on localhost, converge.yml applies hyperv_backup (with retention) and hyperv_restore (restore test) to them and
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
                          check=False, capture_output=True, text=True, timeout=1200, env=ansible_env({"NO_COLOR": "1"}))
    out = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr)
    assert proc.returncode == 0, out[-15000:]
    recap = re.search(r"default\s*:\s*actions=(\d+)\s+successful=(\d+).*failed=(\d+)", out)
    assert recap, out[-5000:]
    actions, successful, failed = (int(n) for n in recap.groups())
    assert actions == successful == 6 and failed == 0, recap.group(0)
    # The verify playbook really ran its checks (catalogue, report, timer).
    for task in ("Every VM of every lab host has a backup", "The report says every VM succeeded", "Check the timer link"):
        assert re.search(r"TASK \[%s\][^\n]*\n+ok: \[localhost\]" % re.escape(task), out), (task, out[-5000:])
