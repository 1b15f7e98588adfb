"""pytest fixtures of the plugin tests: see fo_helpers.py (imported first: it sets FIFTYONE_*
before fiftyone is imported)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fo_helpers import *  # noqa: E402,F401,F403
from fo_helpers import (ade_ds, coco_ds, data_dir, fo, foo, reexport_top_conftest,  # noqa: E402,F401
                        voc_ds, work_dir)


# Several conftest.py files are all imported as the module ``conftest``: re-export the
# top-level one's public names so ``from conftest import NAME`` works whichever pytest loaded last.
reexport_top_conftest(globals())
