#!/usr/bin/env bash
# The test command: set-up, then every test (unit, MicroPython, tshark oracle, namespace lab,
# real strongSwan/xl2tpd peers). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
