#!/usr/bin/env bash
# ansible-test for this project, e.g. `scripts/ansible-test.sh sanity --python 3.11 --requirements` run from a copy of the
# collection under ansible_collections/hyperv/backup (tests/quality/test_sanity.py makes one).
#
# ansible-test keeps its state in ~/.ansible/test: the pip bootstrap script it would download (it cannot be downloaded
# here; scripts/setup.sh puts an offline stand-in in the cache), the sanity tests' virtual environments and SSH keys.
# It has no option or environment variable for that directory and passes only HOME on to its subprocesses, so this
# wrapper points HOME at .build/home, which scripts/setup.sh prepares (pip bootstrap, links to the user's pip
# configuration). Nothing of the project lands in the user's ~/.ansible, and other collections on the machine are
# not affected. Keep the clone's path short: ansible-test's virtual environments live below .build/home and Linux
# limits a script's #! line to 127 characters.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
home="$root/.build/home"
if [ ! -d "$home/.ansible/test/cache" ]; then
  echo "scripts/ansible-test.sh: $home is not prepared; run scripts/setup.sh first" >&2
  exit 2
fi
ansible_test="$root/.venv/bin/ansible-test"
[ -x "$ansible_test" ] || ansible_test=$(command -v ansible-test)
HOME="$home" exec "$ansible_test" "$@"
