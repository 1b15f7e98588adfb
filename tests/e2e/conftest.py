"""pytest fixtures of the end-to-end App test: the plugin tests' helpers (fo_helpers.py)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugin"))

from fo_helpers import *  # noqa: E402,F401,F403
from fo_helpers import data_dir, fo, foo, reexport_top_conftest, work_dir  # noqa: E402,F401


# Several conftest.py files are all imported as the module ``conftest``: re-export the
# top-level one's public names so ``from conftest import NAME`` works whichever pytest loaded last.
reexport_top_conftest(globals())
