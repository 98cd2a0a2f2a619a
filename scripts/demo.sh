#!/usr/bin/env bash
# The README's demo command: set everything up, then run the demo workflow on a lab fleet.
# The lab hosts and the repository live under ${HYPERV_DEMO_DIR:-.build/demo}.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
export HYPERV_DEMO_DIR=${HYPERV_DEMO_DIR:-$PWD/.build/demo}
exec ansible-playbook -i localhost, -c local playbooks/demo.yml -e "demo_dir=$HYPERV_DEMO_DIR" "$@"
