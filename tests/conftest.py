"""Shared pytest setup: make the collection importable as ``ansible_collections.hyperv.backup``.

``scripts/setup.sh`` links the checkout into ``.build/collections``; this repeats the link so a plain
``pytest`` from a checkout works too, and exports the paths so that playbooks run by the tests find
the collection and the virtual environment's Python.
"""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COLLECTIONS = ROOT / ".build" / "collections"
_link = COLLECTIONS / "ansible_collections" / "hyperv" / "backup"
if not _link.exists():
    _link.parent.mkdir(parents=True, exist_ok=True)
    try:
        _link.symlink_to(ROOT)
    except FileExistsError:
        pass
if str(COLLECTIONS) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS))
os.environ["ANSIBLE_COLLECTIONS_PATH"] = str(COLLECTIONS)
os.environ["ANSIBLE_COLLECTIONS_SCAN_SYS_PATH"] = "false"
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(COLLECTIONS), os.environ.get("PYTHONPATH")) if p)
_venv_bin = str(Path(sys.executable).parent)
if _venv_bin not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = _venv_bin + os.pathsep + os.environ.get("PATH", "")
