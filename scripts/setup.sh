#!/usr/bin/env bash
# Sets up .venv with everything tfovss needs, on a fresh machine. Idempotent.
#   torch: `pip install torch==2.13.0` (pinned: an unpinned torch, or a plain open_clip_torch
#          install, resolves a multi-GB CUDA build through torchvision).
#   open_clip_torch: installed with --no-deps (tfovss never needs torchvision; see
#          tfovss_core/clip/openclip.py). Its one other runtime need, huggingface_hub (the hub-hosted
#          tags: laion2b_*, datacomp_*, dfn*, ... and `openai`), is a dependency in pyproject.toml,
#          installed by the editable install below and checked at the end.
#   the `test` extra: pytest, Playwright and import-linter (scripts/test.sh runs lint-imports).
#   FiftyOne (+ a MongoDB that works offline), Playwright and Chromium: scripts/setup_fiftyone.sh.
# Set TFOVSS_SKIP_FIFTYONE=1 to install the core only.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
$VPY -m pip install -q --upgrade pip
if ! $VPY -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null; then
  $VPY -m pip install -q torch==2.13.0
fi
$VPY -m pip install -q --no-deps open_clip_torch==3.3.0
$VPY -m pip install -q -e ".[test,ray]"   # ray: the Ray executor (--ray), tested in CI
if [ "${TFOVSS_SKIP_FIFTYONE:-0}" != "1" ] && [ -f scripts/setup_fiftyone.sh ]; then
  bash scripts/setup_fiftyone.sh "$VPY"
  bash scripts/setup_labelstudio.sh
fi
$VPY -c "import tfovss_core, torch, huggingface_hub; print('tfovss', tfovss_core.__version__, '| torch', torch.__version__, '| methods:', ', '.join(tfovss_core.list_methods()))"
