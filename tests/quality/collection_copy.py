"""Copy the collection's files into ``<dest>/ansible_collections/hyperv/backup``.

``ansible-test`` must run from inside that path layout and refuses symlinks that leave the tree,
so the quality tests work on a copy of the files git tracks or would track (untracked, not ignored).
"""
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def collection_files():
    """Files git tracks plus untracked ones it does not ignore, relative to the repository root."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout.decode()
    return sorted(p for p in out.split("\0") if p and (ROOT / p).is_file())


def copy_collection(dest):
    """Copy the collection under ``dest`` and return the path of the copied collection root."""
    target = Path(dest) / "ansible_collections" / "hyperv" / "backup"
    for rel in collection_files():
        src = ROOT / rel
        out = target / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, out)
    return target
