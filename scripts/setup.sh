#!/usr/bin/env bash
# Set up everything hyperv.backup needs on a fresh Debian machine with only Python and apt:
# the Debian packages the tests and benchmarks use, a virtual environment in .venv with the
# Python packages, and the collection linked where Ansible finds it (.build/collections).
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

APT_PACKAGES=(qemu-utils restic borgbackup chromium systemd samba)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  $PY -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing Python packages into .venv"
  .venv/bin/pip install -q -U pip
  .venv/bin/pip install -q -r requirements-dev.txt
  echo "$want" > "$stamp"
fi

# ansible-test downloads a pip bootstrap script from a host we cannot reach; it accepts a cached copy.
pip_for_ansible_test=$(.venv/bin/python - <<'PY'
import re, ansible_test, pathlib
src = (pathlib.Path(ansible_test.__file__).parent / "_internal" / "python_requirements.py").read_text()
print(re.search(r"pip='([0-9.]+)'", src).group(1).replace(".", "_"))
PY
)
mkdir -p "$HOME/.ansible/test/cache"
cp tests/quality/get_pip_offline.py "$HOME/.ansible/test/cache/get_pip_${pip_for_ansible_test}.py"

# Ansible finds collections under <path>/ansible_collections/<namespace>/<name>.
mkdir -p .build/collections/ansible_collections/hyperv
ln -sfn "$ROOT" .build/collections/ansible_collections/hyperv/backup
echo "setup: ready (.venv, .build/collections)"
