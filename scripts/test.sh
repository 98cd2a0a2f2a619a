#!/usr/bin/env bash
# The README's test command: set everything up, then run the whole suite with pytest
# (unit, integration playbooks on the lab host, reliability, and in tests/quality: ansible-test sanity, units and
# integration, ansible-lint, molecule, galaxy-importer on the built tarball, the docs site build).
# Extra arguments go to pytest, e.g. `scripts/test.sh tests/unit -k vhdx`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
exec python -m pytest "$@"
