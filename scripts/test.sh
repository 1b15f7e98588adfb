#!/usr/bin/env bash
# Installs everything (scripts/setup.sh), checks the architecture (import cycles, private names and
# the import-linter contracts in pyproject.toml; docs/architecture.md) and runs the whole test suite.
# The tests read the shared material (goldens, sample data) from ../shared beside the checkout
# (override with TFOVSS_SHARED). Extra pytest arguments are passed through.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The architecture first: a broken layer stops the run in seconds, naming each offence.
.venv/bin/python scripts/check_architecture.py
.venv/bin/lint-imports --no-logo
set +e
.venv/bin/python -m pytest -q -ra --durations=25 "$@"
rc=$?
set -e
# pytest exits 5 when no test was collected: that is a failure here, not a pass.
exit $rc
