#!/usr/bin/env bash
# Set up everything hyperv.backup needs on a fresh Debian machine with only Python and apt:
# the Debian packages the tests and benchmarks use, a virtual environment in .venv with the
# Python packages, and the collection linked where Ansible finds it (.build/collections).
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

APT_PACKAGES=(qemu-utils restic borgbackup chromium systemd samba nbdkit nbdkit-plugin-python libnbd-bin ntfs-3g e2fsprogs xfsprogs mtools dosfstools)
# Kerberos: gssapi, krb5 and pykerberos (the kerberos extras of pypsrp and pywinrm) build from source on Linux with
# krb5-config (libkrb5-dev), a compiler and the Python headers; krb5-user (kinit, klist) is what `auth: kerberos`
# users run; krb5-kdc and krb5-admin-server are the local KDC of tests/integration/test_kerberos_auth.py.
APT_PACKAGES+=(krb5-user libkrb5-dev gcc libc6-dev python3-dev krb5-kdc krb5-admin-server)
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

# ansible-test keeps its state under ~/.ansible/test (the pip bootstrap cache, the sanity virtual environments, SSH
# keys) with no option or variable to move it, and passes only HOME to its subprocesses. So scripts/ansible-test.sh runs
# it with HOME=.build/home: the project's ansible-test state stays in the project and ~/.ansible is never written.
# ansible-test downloads a pip bootstrap script from a host we cannot reach; it accepts a cached copy.
pip_for_ansible_test=$(.venv/bin/python - <<'PY'
import re, ansible_test, pathlib
src = (pathlib.Path(ansible_test.__file__).parent / "_internal" / "python_requirements.py").read_text()
print(re.search(r"pip='([0-9.]+)'", src).group(1).replace(".", "_"))
PY
)
ANSIBLE_TEST_HOME=.build/home
mkdir -p "$ANSIBLE_TEST_HOME/.ansible/test/cache"
cp tests/quality/get_pip_offline.py "$ANSIBLE_TEST_HOME/.ansible/test/cache/get_pip_${pip_for_ansible_test}.py"
# pip in ansible-test's virtual environments reads only HOME-relative configuration: link the user's (index, certificates).
for conf in "${XDG_CONFIG_HOME:-$HOME/.config}/pip/pip.conf:.config/pip/pip.conf" "$HOME/.pip/pip.conf:.pip/pip.conf"; do
  if [ -f "${conf%%:*}" ]; then
    mkdir -p "$(dirname "$ANSIBLE_TEST_HOME/${conf#*:}")"
    ln -sfn "${conf%%:*}" "$ANSIBLE_TEST_HOME/${conf#*:}"
  fi
done

# Ansible finds collections under <path>/ansible_collections/<namespace>/<name>.
mkdir -p .build/collections/ansible_collections/hyperv
ln -sfn "$ROOT" .build/collections/ansible_collections/hyperv/backup
echo "setup: ready (.venv, .build/collections)"
