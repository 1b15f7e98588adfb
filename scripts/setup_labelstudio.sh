#!/usr/bin/env bash
# Sets up .venv-labelstudio/ with the Label Studio server, for the Label Studio round trip
# (tfovss_fiftyone/labelstudio.py) and its tests. Idempotent.
#
# Why a separate environment: installing `label-studio` (or even `label-studio-sdk`) into .venv
# downgrades numpy and opencv under FiftyOne and torch. tfovss talks to the server through its
# REST API with `requests` only, so the server can live in its own environment.
# Set TFOVSS_SKIP_LABELSTUDIO=1 to skip it (the Label Studio tests then skip, saying why).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${TFOVSS_SKIP_LABELSTUDIO:-0}" = "1" ]; then
  echo "Label Studio: skipped (TFOVSS_SKIP_LABELSTUDIO=1)"
  exit 0
fi
LS_VERSION="${LABEL_STUDIO_VERSION:-1.23.2}"
PY="${PYTHON:-python3}"
if [ ! -x .venv-labelstudio/bin/python ]; then
  "$PY" -m venv .venv-labelstudio
fi
LPY=.venv-labelstudio/bin/python
if ! $LPY -c "import importlib.metadata as m, sys; sys.exit(0 if m.version('label-studio') == '$LS_VERSION' else 1)" 2>/dev/null; then
  $LPY -m pip install -q --upgrade pip
  $LPY -m pip install -q "label-studio==$LS_VERSION"
fi
echo "Label Studio $($LPY -c "import importlib.metadata as m; print(m.version('label-studio'))") in .venv-labelstudio"
