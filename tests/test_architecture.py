"""The architecture is enforced, not hoped for: the import-linter contracts in pyproject.toml hold,
no import cycle and no private-name import across modules exists (scripts/check_architecture.py),
the light entry points import without torch, and the core never loads FiftyOne. The negative tests
feed the same checkers small fake packages to show that each one reports what it should."""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from support.paths import REPO_ROOT

_spec = importlib.util.spec_from_file_location("check_architecture", REPO_ROOT / "scripts" / "check_architecture.py")
check_architecture = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("check_architecture", check_architecture)  # dataclasses look their module up
_spec.loader.exec_module(check_architecture)

# `lint-imports` through the interpreter running the tests (its console script may not be on PATH).
LINT_IMPORTS = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command as c; "
                "sys.exit(c(['--no-cache', '--no-logo', *sys.argv[1:]]))"]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # PYTHONPATH: the packages under `cwd`, never an installed copy of them from another checkout.
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**_clean_env(), "PYTHONPATH": str(cwd)})


def _clean_env() -> dict:
    import os
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


# ------------------------------------------------------------------------------- the real tree

def test_import_linter_contracts_are_kept():
    declared = len(re.findall(r"^\[\[tool\.importlinter\.contracts\]\]", (REPO_ROOT / "pyproject.toml").read_text(),
                              flags=re.M))
    assert declared >= 5
    result = _run(LINT_IMPORTS, REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {declared} kept, 0 broken." in result.stdout


def test_no_import_cycles():
    assert [str(o) for o in check_architecture.find_cycles(REPO_ROOT, check_architecture.PACKAGES)] == []


def test_no_private_names_across_modules_and_no_relative_imports():
    assert [str(o) for o in check_architecture.find_private_imports(REPO_ROOT, check_architecture.PACKAGES)] == []


def test_light_entry_points_import_without_torch():
    code = textwrap.dedent("""
        import json, sys
        import tfovss_core, tfovss_core.errors
        import tfovss_core.spec.settings, tfovss_core.spec.records, tfovss_core.spec.presets
        presets = tfovss_core.presets
        assert presets is tfovss_core.spec.presets
        voc21 = presets.get_preset("voc21").classes()   # reading a preset: files, no model code (a method's own class list needs its card)
        print(json.dumps({"file": tfovss_core.__file__, "voc21": [len(voc21), voc21[1]],
                          "loaded": sorted(m for m in ("torch", "open_clip", "torchvision", "fiftyone")
                                           if m in sys.modules)}))
    """)
    result = _run([sys.executable, "-c", code], REPO_ROOT)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(report["file"]).resolve() == REPO_ROOT / "tfovss_core" / "__init__.py"
    assert report["voc21"] == [21, ["aeroplane"]]
    assert report["loaded"] == []


def test_importing_every_core_module_never_loads_fiftyone():
    # Static contracts miss importlib / entry-point loading: import each module for real.
    code = textwrap.dedent("""
        import importlib, json, pkgutil, sys
        import tfovss_core
        names = [m.name for m in pkgutil.walk_packages(tfovss_core.__path__, "tfovss_core.")
                 if not m.name.endswith("__main__")]
        for name in names:
            importlib.import_module(name)
        tfovss_core.list_methods(include_composed=True)
        print(json.dumps({"imported": len(names),
                          "loaded": sorted(m for m in sys.modules
                                           if m.split(".")[0] in ("fiftyone", "tfovss_fiftyone", "plugin"))}))
    """)
    result = _run([sys.executable, "-c", code], REPO_ROOT)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["imported"] >= 40
    assert report["loaded"] == []


# ------------------------------------------------------------- the checkers can fail (fake trees)

def test_cycle_is_reported_with_its_path(tmp_path):
    root = _write(tmp_path, {
        "archfake_cycle/__init__.py": "",
        "archfake_cycle/a.py": "from archfake_cycle import b\n",
        "archfake_cycle/b.py": "import json\n\n\ndef f():\n    from archfake_cycle.c import g\n",
        "archfake_cycle/c.py": "import archfake_cycle.a\n",
        "archfake_cycle/d.py": "from archfake_cycle import a\n",  # imports into the cycle: not part of it
    })
    offences = check_architecture.find_cycles(root, ("archfake_cycle",))
    assert [str(o) for o in offences] == [
        "archfake_cycle/a.py:1: import cycle: archfake_cycle.a (l.1) -> archfake_cycle.b (l.5) -> "
        "archfake_cycle.c (l.1) -> archfake_cycle.a"]


def test_private_names_and_relative_imports_are_reported(tmp_path):
    root = _write(tmp_path, {
        "archfake_priv/__init__.py": "from archfake_priv import _internal  # its own private module: allowed\n"
                                     "_SHARED = 1\n__version__ = '1'\n",
        "archfake_priv/_internal.py": "X = 1\n",
        "archfake_priv/low.py": "_helper = 1\nPUBLIC = 2\n",
        "archfake_priv/sub/__init__.py": "",
        "archfake_priv/sub/_impl.py": "Y = 1\n",
        "archfake_priv/sub/user.py": """\
            from archfake_priv.sub import _impl            # own package's private module: allowed
            from archfake_priv import __version__, _SHARED  # package-internal private name: allowed
            """,
        "archfake_priv/high.py": """\
            import archfake_priv.low as low_alias
            from archfake_priv import low
            import archfake_priv.low
            from archfake_priv.low import PUBLIC, _helper
            from archfake_priv.sub import _impl
            from . import low as relative_low


            def use():
                return low._helper + low_alias._helper + archfake_priv.low._helper + PUBLIC + low.PUBLIC
            """,
    })
    offences = check_architecture.find_private_imports(root, ("archfake_priv",))
    assert [str(o) for o in offences] == [
        "archfake_priv/high.py:4: archfake_priv.high imports archfake_priv.low._helper, "
        "a private name of archfake_priv.low",
        "archfake_priv/high.py:5: archfake_priv.high imports archfake_priv.sub._impl, "
        "a private name of archfake_priv.sub",
        "archfake_priv/high.py:6: archfake_priv.high uses a relative import (from .); "
        "write `from archfake_priv import ...`",
        # three attribute routes to low._helper on one line, reported once
        "archfake_priv/high.py:10: archfake_priv.high uses archfake_priv.low._helper, "
        "a private name of archfake_priv.low",
    ]


def test_script_exits_non_zero_and_names_each_offence(tmp_path):
    root = _write(tmp_path, {
        "archfake_cli/__init__.py": "",
        "archfake_cli/a.py": "from archfake_cli.b import _secret\n",
        "archfake_cli/b.py": "import archfake_cli.a\n_secret = 1\n",
    })
    result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "check_architecture.py"),
                             "--root", str(root), "archfake_cli"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "archfake_cli/a.py:1: import cycle: archfake_cli.a (l.1) -> archfake_cli.b (l.1) -> archfake_cli.a",
        "archfake_cli/a.py:1: archfake_cli.a imports archfake_cli.b._secret, a private name of archfake_cli.b",
    ]
    assert "2 offence(s)" in result.stderr


def test_import_linter_reports_upward_and_forbidden_imports(tmp_path):
    root = _write(tmp_path, {
        "archfake_layers/__init__.py": "",
        "archfake_layers/low.py": "import csv\n\n\ndef f():\n    from archfake_layers import high\n",
        "archfake_layers/high.py": "from archfake_layers import low\n",
        "pyproject.toml": """\
            [tool.importlinter]
            root_packages = ["archfake_layers"]
            include_external_packages = true

            [[tool.importlinter.contracts]]
            name = "fake layers"
            type = "layers"
            containers = ["archfake_layers"]
            layers = ["high", "low"]

            [[tool.importlinter.contracts]]
            name = "fake low without csv"
            type = "forbidden"
            source_modules = ["archfake_layers.low"]
            forbidden_modules = ["csv"]
            """,
    })
    result = _run(LINT_IMPORTS, root)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Contracts: 0 kept, 2 broken." in result.stdout
    assert "archfake_layers.low is not allowed to import archfake_layers.high" in result.stdout
    assert "archfake_layers.low is not allowed to import csv" in result.stdout


@pytest.mark.parametrize("dotted, owner", [
    ("a.b.c", None), ("a.b._c", "a.b"), ("a._b.c", "a"), ("a.__version__", None), ("_a.b", ""),
])
def test_private_owner(dotted, owner):
    assert check_architecture.private_owner(dotted) == owner
