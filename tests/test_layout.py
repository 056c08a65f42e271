"""The package's shape: imports run downwards only, the package starts light, and the install lists every package."""

from __future__ import annotations

import ast
import configparser
import subprocess
import sys
from pathlib import Path

import pytest

import bt_monai

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bt_monai"
LAYERS = {name: rank for rank, name in enumerate(bt_monai.SUBPACKAGES)} | {"__main__": len(bt_monai.SUBPACKAGES)}


def _layer(module: str) -> str | None:
    """``bt_monai.<layer>...`` -> layer; the package root itself (``__version__``) belongs to no layer."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "bt_monai" else None


def _module_name(path: Path) -> str:
    relative = path.relative_to(ROOT).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every ``bt_monai`` module ``path`` imports, at any depth (inside functions too), with the line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            found += [(node.lineno, n if _layer(n) in LAYERS else node.module) for n in names]
    return [(line, name) for line, name in found if name.split(".")[0] == "bt_monai"]


def test_every_module_imports_only_its_own_layer_or_lower_ones():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        # Command-line entry points (any __main__.py) sit on top; bt_monai/__init__.py imports nothing eagerly.
        importer = "__main__" if path.name == "__main__.py" else _layer(_module_name(path))
        if importer is None:
            continue
        assert importer in LAYERS, f"{path}: {importer!r} is not in bt_monai.SUBPACKAGES (add it to the layers)"
        for line, imported in _imports(path):
            target = _layer(imported)
            if target is not None and LAYERS[target] > LAYERS[importer]:
                violations.append(f"{path.relative_to(ROOT)}:{line} ({importer}) imports {imported} ({target})")
    assert not violations, "imports that run upwards:\n" + "\n".join(violations)


def test_the_layer_test_catches_an_upward_import(tmp_path):
    module = tmp_path / "bt_monai" / "data" / "bad.py"
    module.parent.mkdir(parents=True)
    module.write_text("def f():\n    from bt_monai.apps.infer import infer_folder\n")
    assert _imports(module) == [(2, "bt_monai.apps.infer.infer_folder")]
    assert LAYERS[_layer("bt_monai.apps.infer")] > LAYERS["data"]


@pytest.mark.parametrize("command", ["infer", "federated"])
def test_importing_the_package_or_asking_the_cli_for_help_loads_neither_torch_nor_monai(command):
    code = (
        "import sys, bt_monai, bt_monai.__main__ as cli\n"
        f"try:\n    cli.build_parser().parse_args(['{command}', '--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = ('torch', 'monai', 'pydicom', 'matplotlib', 'scipy', 'itk', 'nvflare')\n"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_setup_cfg_lists_every_package_folder():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    folders = {_module_name(p) for p in PACKAGE.rglob("__init__.py")} | {"bt_monai.shipped_bundles"}
    assert listed == folders
    assert config["options"]["package_dir"].split() == ["bt_monai.shipped_bundles", "=", "bundle"]
