"""A built (non-editable) wheel exposes every subpackage and ships the configs as package data."""

from __future__ import annotations

import configparser
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def declared_packages() -> list[str]:
    parser = configparser.ConfigParser()
    parser.read(REPO_ROOT / "setup.cfg")
    return parser["options"]["packages"].split()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(REPO_ROOT),
        ],
        check=True,
    )
    (path,) = out.glob("cnmt-*.whl")
    return path


def test_every_folder_with_python_code_is_a_declared_subpackage():
    declared = set(declared_packages())
    for folder in ("exporters", "runtime", "schedulers", "plugins", "configs"):
        assert f"cnmt.{folder}" in declared
    for init in REPO_ROOT.glob("cnmt/**/__init__.py"):
        dotted = ".".join(init.parent.relative_to(REPO_ROOT).parts)
        assert dotted in declared, f"{dotted} is missing from setup.cfg packages"


def test_wheel_ships_every_subpackage_and_the_yaml_configs(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for package in declared_packages():
        assert "/".join(package.split(".")) + "/__init__.py" in names, package
    shipped = {n for n in names if n.startswith("cnmt/configs/") and n.endswith(".yaml")}
    in_repo = {
        "cnmt/configs/" + str(p.relative_to(REPO_ROOT / "configs"))
        for p in (REPO_ROOT / "configs").rglob("*.yaml")
    }
    assert in_repo and in_repo <= shipped
    assert not any(n.startswith(("runtime/", "exporters/", "tests/")) for n in names)


def test_installed_wheel_imports_every_subpackage_outside_the_source_tree(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    packages = declared_packages()
    script = (
        "import importlib, importlib.resources as r\n"
        f"for name in {packages!r}:\n"
        "    module = importlib.import_module(name)\n"
        "    assert module.__file__.startswith({site!r}), module.__file__\n"
        "from cnmt.config import load_config\n"
        "print(load_config('default').source)\n"
    ).replace("{site!r}", repr(str(site)))
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "CNMT_DISABLE_PLUGIN_AUTOLOAD": "1"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(str(site / "cnmt" / "configs"))
