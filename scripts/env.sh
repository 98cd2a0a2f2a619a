# Source this to use the project's virtual environment and collection path in a shell.
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$_root/.venv/bin:$PATH"
export ANSIBLE_COLLECTIONS_PATH="$_root/.build/collections"
export ANSIBLE_COLLECTIONS_SCAN_SYS_PATH=false
export PYTHONPATH="$_root/.build/collections${PYTHONPATH:+:$PYTHONPATH}"
unset _root
