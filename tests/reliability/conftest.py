"""Shared setup of the reliability suite: helper imports, the fault ledger, the integration harness.

Every test that injects a fault records it in the ledger (``fault_ledger.record(fault, outcome, ...)``).
At the end of the session each pytest process (one per xdist worker) writes its counts to
``tests/output/reliability/<run>--<worker>.json``; ``python tests/reliability/fault_table.py`` merges them
into the table of docs/reliability.md.

The frozen guard (tests/frozen_guard.py) runs after every test as in the integration suite: every backup committed
in the session's temporary directory must equal the disk at its recovery point (HYPERV_LAB_KEEP_FROZEN is set for
each test module). Tests that damage repositories on purpose opt out with ``@pytest.mark.frozen_guard_off(reason)``.
"""
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
OUTPUT_DIR = ROOT / "tests" / "output" / "reliability"
UNIT_HELPERS = ROOT / "tests" / "unit" / "plugins" / "module_utils"

# disk_helpers, s3_server ... live next to the unit tests; reuse them rather than writing them again.
for _path in (str(UNIT_HELPERS), str(HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

# tests/frozen_guard.py (tests/ is on sys.path through tests/conftest.py): its autouse fixtures, shared with the integration suite
from frozen_guard import check_backups_against_frozen_copies, keep_frozen_copies  # noqa: E402,F401 pylint: disable=unused-import


def load_integration_harness():
    """The integration harness (tests/integration/conftest.py) as a module: play_for, run_play."""
    spec = importlib.util.spec_from_file_location("integration_harness", ROOT / "tests" / "integration" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FaultLedger:
    """Counts of injected faults by (fault, outcome), with the bytes of data lost (must stay 0)."""

    def __init__(self):
        self.rows = {}

    def record(self, fault, outcome, injected=1, data_lost=0, note=None):
        row = self.rows.setdefault(fault, {"fault": fault, "injected": 0, "outcomes": {}, "data_lost": 0, "notes": []})
        row["injected"] += injected
        row["outcomes"][outcome] = row["outcomes"].get(outcome, 0) + injected
        row["data_lost"] += data_lost
        if note and note not in row["notes"]:
            row["notes"].append(note)

    def write(self, run_id, worker):
        if not self.rows:
            return
        OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
        path = OUTPUT_DIR / ("%s--%s.json" % (run_id, worker))
        path.write_text(json.dumps({"run": run_id, "worker": worker, "written": time.time(),
                                    "rows": list(self.rows.values())}, indent=1))


_LEDGER = FaultLedger()


@pytest.fixture(scope="session")
def fault_ledger():
    return _LEDGER


_RUN_ID = "%s-%d" % (time.strftime("%Y%m%dT%H%M%S", time.gmtime()), os.getpid())


def pytest_sessionfinish(session):
    # xdist workers of one run share testrunuid, so fault_table.py can merge exactly one run's files
    workerinput = getattr(session.config, "workerinput", {})
    _LEDGER.write(workerinput.get("testrunuid", _RUN_ID), workerinput.get("workerid", "main"))
