#!/usr/bin/env bash
# The main job on the bundled sample images: open-vocabulary segmentation with real CLIP weights
# (open_clip downloads and caches OpenAI's ViT-B/16 on first use).
#   bash scripts/demo.sh              real weights (needs network once)
#   bash scripts/demo.sh --synthetic  random weights, runs offline; every output is labelled SYNTHETIC
#   bash scripts/demo.sh --app [--synthetic] [--port N]
#       the bundled photos as a FiftyOne dataset ("tfovss-demo"), pre-labelled with SCLIP and the
#       voc21 preset (field ovss_sclip), then the App on http://127.0.0.1:<port>/ (printed; the
#       "OVSS evaluations" panel is in the grid's "+" menu). Stop it with Ctrl-C.
# Outputs: out/demo/<run>/*_mask.png (class-index PNG), *_overlay.jpg, run.json (all settings).
# TFOVSS_PYTHON=<python> uses that interpreter (with everything installed) and skips the setup.
set -euo pipefail
cd "$(dirname "$0")/.."
PRETRAINED=openai
APP=0
PORT=5151
while [ $# -gt 0 ]; do
  case "$1" in
    --synthetic) PRETRAINED=random:0 ;;
    --app) APP=1 ;;
    --port) PORT="$2"; shift ;;
    *) echo "unknown option $1 (use --synthetic, --app, --port N)" >&2; exit 2 ;;
  esac
  shift
done
if [ -n "${TFOVSS_PYTHON:-}" ]; then
  PY="$TFOVSS_PYTHON"
  TFOVSS="$PY -m tfovss_core.cli"
else
  if [ "$APP" = 1 ]; then bash scripts/setup.sh >/dev/null; else TFOVSS_SKIP_FIFTYONE=1 bash scripts/setup.sh >/dev/null; fi
  PY=.venv/bin/python
  TFOVSS=.venv/bin/tfovss
fi

if [ "$APP" = 1 ]; then
  # the plugin is this checkout (plugin/__init__.py); FiftyOne finds it through the plugins dir
  export FIFTYONE_PLUGINS_DIR="$PWD"
  "$PY" - "$PRETRAINED" <<'PYEOF'
import sys
from pathlib import Path

import fiftyone as fo

from tfovss_fiftyone.prelabel import prelabel

pretrained = sys.argv[1]
name = "tfovss-demo"
if fo.dataset_exists(name):
    fo.delete_dataset(name)
ds = fo.Dataset(name, persistent=True)
ds.add_samples([fo.Sample(filepath=str(p.resolve())) for p in sorted(Path("samples").glob("*.jpg"))])
ds.compute_metadata()
report = prelabel(ds, "ovss_sclip", classes="voc21", method="sclip", arch="ViT-B-16",
                  pretrained=pretrained, output_dir=str(Path("out/demo/app").resolve()),
                  overwrite=True, skip_labelled=False)
flag = " (SYNTHETIC WEIGHTS: the masks mean nothing)" if report.synthetic else ""
print(f"dataset '{name}': {len(ds)} photos, {report.num_labelled} pre-labelled into "
      f"'ovss_sclip'{flag}, {report.num_failed} failed")
PYEOF
  echo "FiftyOne App: http://127.0.0.1:$PORT/datasets/tfovss-demo (open the 'OVSS evaluations' panel from the grid's + menu)"
  exec "$PY" -m fiftyone.server.main --address 127.0.0.1 --port "$PORT"
fi
run() {  # name, extra args...
  local name=$1; shift
  if ! $TFOVSS segment samples/ --arch ViT-B-16 --pretrained "$PRETRAINED" --out "out/demo/$name" --overwrite "$@"; then
    if [ "$PRETRAINED" = "openai" ]; then
      echo
      echo "The real CLIP weights could not be loaded (see the error above: most likely no network access)."
      echo "Run 'bash scripts/demo.sh --synthetic' to run the same pipeline end to end on random weights;"
      echo "its outputs are labelled SYNTHETIC and mean nothing."
    fi
    exit 1
  fi
}
# 1) the papers' protocol: SCLIP with its official PASCAL VOC (21 classes) settings
run voc21-sclip --method sclip --classes voc21
# 2) a free vocabulary with synonyms (';' between classes, ',' between synonyms), ClearCLIP
run custom-clearclip --method clearclip --set prob_thd=0.3 \
    --classes "background, wall, floor, sky, table; cat; coffee cup, mug, cup; saucer, plate; person, astronaut; flag"
echo "Done: open out/demo/*/ (overlays *_overlay.jpg, masks *_mask.png, settings run.json)."
