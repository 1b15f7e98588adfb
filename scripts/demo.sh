#!/usr/bin/env bash
# The main job on the bundled sample images: open-vocabulary segmentation with real CLIP weights
# (open_clip downloads and caches OpenAI's ViT-B/16 on first use).
#   bash scripts/demo.sh              real weights (needs network once)
#   bash scripts/demo.sh --synthetic  random weights, runs offline; every output is labelled SYNTHETIC
# Outputs: out/demo/<run>/*_mask.png (class-index PNG), *_overlay.jpg, run.json (all settings).
set -euo pipefail
cd "$(dirname "$0")/.."
TFOVSS_SKIP_FIFTYONE=1 bash scripts/setup.sh >/dev/null
PRETRAINED=openai
if [ "${1:-}" = "--synthetic" ]; then PRETRAINED=random:0; fi
TFOVSS=.venv/bin/tfovss
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
