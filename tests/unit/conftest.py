"""Unit tests import their helpers (disk_helpers, test_repository, fake_host_session, test_module_documentation, ...)
by module name.

pytest's default import mode puts each test file's directory on ``sys.path``; ``ansible-test units`` imports
test files as ``ansible_collections.hyperv.backup.tests.unit...`` packages instead, so the helper directory is
put on the path here, for both runners.
"""
import sys
from pathlib import Path

for _helpers in ("module_utils", "modules"):
    _path = str(Path(__file__).resolve().parent / "plugins" / _helpers)
    if _path not in sys.path:
        sys.path.insert(0, _path)
