"""pytest fixtures of the end-to-end App test: the plugin tests' helpers (fo_helpers.py)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugin"))

from fo_helpers import *  # noqa: E402,F401,F403
from fo_helpers import data_dir, fo, foo, work_dir  # noqa: E402,F401


def _reexport_top_conftest(namespace: dict) -> None:
    """Several conftest.py files are all imported as the module ``conftest``; test modules that
    ``from conftest import NAME`` get whichever pytest loaded last. Re-export the top-level
    tests/conftest.py's public names here so such imports work whichever it is."""
    import importlib.util

    top = Path(__file__).resolve().parents[1] / "conftest.py"
    spec = importlib.util.spec_from_file_location("_tfovss_tests_top_conftest", top)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for k, v in vars(mod).items():
        if not k.startswith("_") and k not in namespace:
            namespace[k] = v


_reexport_top_conftest(globals())
