#!/usr/bin/env bash
# The lab demo: set-up, then build the namespace lab, show flows being tracked, the L2TP toggle
# and kill -9 fail-open, and remove the lab again (pass --keep to leave it up).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/passthrough lab demo "$@"
