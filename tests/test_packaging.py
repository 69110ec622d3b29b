"""Packaging: pyproject.toml's dependencies (loose ranges) against requirements.txt (the exact pins)
and against what the code imports, and a built maskgate that holds every module and the template."""
import ast
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from email.parser import Parser
from functools import cache
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import ROOT

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
# Where each group's pins are: the CPU lock, and the GPU pod's extras on top of it.
PINS_OF = {"dependencies": "requirements.txt", "gpu": "requirements-gpu.txt", "test": "requirements.txt"}
# Unsloth 2026.10.9's bounds, as requirements.txt's header states them: no declared range may go past them.
UNSLOTH_CAPS = {"transformers": "<=5.17.0", "trl": "<=1.15.0", "datasets": "<5", "torch": "<2.15"}
# Declared although nothing under maskgate/ imports them.
NEEDED_UNIMPORTED = {
    "torchvision": "transformers' Qwen3-VL video processor (Qwen3VLProcessor loads it)",
    "accelerate": "transformers' Trainer, which train runs (trl's SFTTrainer)",
}


def declared(group: str) -> list[Requirement]:
    reqs = PROJECT["dependencies"] if group == "dependencies" else PROJECT["optional-dependencies"][group]
    return [Requirement(r) for r in reqs]


def pins(name: str) -> dict[str, Version]:
    """{canonical distribution name: pinned version} of a requirements file (name==version lines)."""
    out = {}
    for line in (ROOT / name).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"{name}: {line} is not an exact pin"
            assert canonicalize_name(req.name) not in out, f"{name} pins {req.name} twice"
            out[canonicalize_name(req.name)] = Version(spec.version)
    return out


def above(cap: SpecifierSet) -> list[Version]:
    """Versions just past an upper bound (<X or <=X): X itself, and X's next patch, minor and major."""
    (spec,) = cap
    a, b, c = (Version(spec.version).release + (0, 0))[:3]
    probes = [Version(spec.version), Version(f"{a}.{b}.{c + 1}"), Version(f"{a}.{b + 1}"), Version(f"{a + 1}")]
    return [v for v in probes if v not in cap]


def top_level_imports(folder: Path) -> dict[str, set[str]]:
    """{top-level module: files importing it} for every absolute import in `folder`'s Python files,
    the lazy ones inside functions included, less the standard library and the project's own."""
    local = {"maskgate", "tests"} | {f.stem for f in folder.glob("*.py")}
    found: dict[str, set[str]] = {}
    for f in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"), str(f))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for top in (n.split(".")[0] for n in names):
                if top not in sys.stdlib_module_names and top not in local:
                    found.setdefault(top, set()).add(str(f.relative_to(ROOT)))
    return found


def test_every_dependency_is_pinned_inside_its_range_and_inside_unsloths_bounds():
    assert set(PROJECT["optional-dependencies"]) == {"gpu", "test"}
    for group, pin_file in PINS_OF.items():
        pinned = pins(pin_file)
        names = [canonicalize_name(r.name) for r in declared(group)]
        assert len(names) == len(set(names)), f"{group} names a distribution twice"
        for req in declared(group):
            name = canonicalize_name(req.name)
            assert req.marker is None and not req.extras, f"{group}: {req} (no markers or extras expected)"
            assert name in pinned, f"{group}: {req.name} is not pinned in {pin_file}"
            assert req.specifier.contains(pinned[name], prereleases=True), \
                f"{group}: {pin_file} pins {req.name}=={pinned[name]}, outside {req.specifier}"
            # A loose range, not a pin and not open below.
            assert any(s.operator in (">=", ">") for s in req.specifier), f"{group}: {req} has no lower bound"
    header = (ROOT / "requirements.txt").read_text(encoding="utf-8").split("\n\n")[0]
    base = {canonicalize_name(r.name): r.specifier for r in declared("dependencies")}
    for name, cap in UNSLOTH_CAPS.items():
        assert f"{name}{cap}" in header, f"requirements.txt's header no longer says {name}{cap}"
        past = above(SpecifierSet(cap))
        assert past and not [str(v) for v in past if base[name].contains(v, prereleases=True)], \
            f"pyproject's {name}{base[name]} admits versions past Unsloth's {cap}"


@cache
def installed_modules() -> dict[str, list[str]]:
    return packages_distributions()  # scans every installed distribution's files: once


def distributions(module: str) -> set[str]:
    """The distributions that install a top-level module here; a module not installed here (unsloth,
    on the GPU pod only) must be declared under its own name."""
    return {canonicalize_name(d) for d in installed_modules().get(module, [module])}


def test_every_third_party_import_is_declared():
    base = {canonicalize_name(r.name) for r in declared("dependencies")}
    gpu = {canonicalize_name(r.name) for r in declared("gpu")}
    test = {canonicalize_name(r.name) for r in declared("test")}
    package = top_level_imports(ROOT / "maskgate")
    assert {"torch", "transformers", "dvc", "PIL", "yaml", "unsloth"} <= set(package)  # the scan sees them
    for folder, imports, covering in (("maskgate", package, base | gpu),
                                      ("tests", top_level_imports(ROOT / "tests"), base | test)):
        missing = {m: sorted(files)[0] for m, files in imports.items() if not distributions(m) & covering}
        assert not missing, f"{folder}/ imports undeclared distributions: {missing}"
    # The other way round: a base dependency is imported by the package, or needed all the same.
    imported = set().union(*(distributions(m) for m in package))
    unused = base - imported - set(NEEDED_UNIMPORTED)
    assert not unused, f"declared, never imported under maskgate/ and not in NEEDED_UNIMPORTED: {sorted(unused)}"
    assert set(NEEDED_UNIMPORTED) <= base
    # The GPU extra is for the GPU path only: the package's own import does not need it.
    assert not gpu & base


IMPORT_ALL = """
import importlib, importlib.resources, importlib.util, json, pkgutil, sys
import maskgate
names = [m.name for m in pkgutil.walk_packages(maskgate.__path__, "maskgate.")]
files = {"maskgate": maskgate.__file__}
for name in names:
    if name != "maskgate.__main__":  # runs the CLI; `-m maskgate --help` below
        files[name] = importlib.import_module(name).__file__
files["maskgate.__main__"] = importlib.util.find_spec("maskgate.__main__").origin
templates = {t.name: t.read_text(encoding="utf-8") for t in importlib.resources.files("maskgate.model").iterdir()
             if t.name.endswith(".jinja")}
print(json.dumps({"files": files, "templates": templates, "path": sys.path}))
"""


def test_built_package_has_every_module_and_the_template(tmp_path):
    # Without build isolation (no network): pyproject's build backend must be installed here.
    pytest.importorskip("setuptools", minversion="68", reason="the build backend (build-system.requires)")
    # Build from a copy, so no build/ or *.egg-info lands in the checkout.
    src, site = tmp_path / "src", tmp_path / "site"
    shutil.copytree(ROOT / "maskgate", src / "maskgate", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for f in ("pyproject.toml", "README.md"):
        if (ROOT / f).is_file():
            shutil.copy2(ROOT / f, src / f)
    p = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                        "--no-compile", "--disable-pip-version-check", "--target", str(site), str(src)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr

    # The installed copy alone: -S keeps site-packages' .pth files (the checkout's editable install)
    # out; the venv's site-packages comes after it for the third-party packages.
    third_party = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), *third_party])
    run = lambda *args: subprocess.run([sys.executable, "-S", *args], cwd=tmp_path, env=env,
                                       capture_output=True, text=True, timeout=600)
    p = run("-c", IMPORT_ALL)
    assert p.returncode == 0, p.stderr[-3000:]
    got = json.loads(p.stdout)
    source = {".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
              for f in (ROOT / "maskgate").rglob("*.py")}
    assert set(got["files"]) == source  # every sub-package and module, nothing else
    assert all(Path(f).is_relative_to(site) for f in got["files"].values()), "imported from outside the build"
    # the checkout is not on the path (its .venv may be, for the third-party packages)
    assert not any(str(ROOT) == p or p.startswith(str(ROOT) + os.sep) for p in got["path"] if p not in third_party)
    jinja = {f.name: f.read_text(encoding="utf-8") for f in (ROOT / "maskgate/model").glob("*.jinja")}
    assert jinja and got["templates"] == jinja

    p = run("-m", "maskgate", "report", "--help")
    assert p.returncode == 0 and "--base" in p.stdout, p.stderr[-3000:]

    # The metadata carries the dependencies and the `maskgate` command.
    (dist_info,) = site.glob("maskgate-*.dist-info")
    meta = Parser().parsestr((dist_info / "METADATA").read_text(encoding="utf-8"))
    requires = [Requirement(r) for r in meta.get_all("Requires-Dist")]
    assert {str(r) for r in requires if r.marker is None} == {str(r) for r in declared("dependencies")}
    for extra in ("gpu", "test"):
        assert {r.name for r in requires if r.marker and r.marker.evaluate({"extra": extra})} == \
            {r.name for r in declared(extra)}
    assert PROJECT["scripts"] == {"maskgate": "maskgate.cli:main"}
    assert "maskgate = maskgate.cli:main" in (dist_info / "entry_points.txt").read_text(encoding="utf-8")
