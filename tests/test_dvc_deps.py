"""dvc.yaml tells the truth: each stage depends on exactly the project code it runs.

The code a stage runs is the import closure of its script inside the package, read from the source
(every `import`, also those inside functions), plus the package data those modules read. A module
the closure reaches and `deps` does not list is a change `dvc status` would miss; a listed module
it does not reach is a rerun for nothing. Either fails here, naming the stage and the file.
"""
import ast
import shlex
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

# files a module reads at run time besides its imports
PACKAGE_DATA = {"maskgate/model/qwen.py": ["maskgate/model/qwen3_vl.jinja"]}


def module_file(name: str) -> Path | None:
    """maskgate.a.b -> maskgate/a/b.py (or the package's __init__.py); None outside the package."""
    if name != "maskgate" and not name.startswith("maskgate."):
        return None
    path = ROOT.joinpath(*name.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    raise AssertionError(f"{name} is imported but is no module of the package")


def imported(path: Path) -> set[str]:
    """Every maskgate module `path` imports, anywhere in the file; `from pkg import mod` counts mod."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return {n for n in out if n.startswith("maskgate") and _is_module(n)}


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def closure(script: Path) -> set[str]:
    """Repository-relative paths of the package files `script` runs, with their package data."""
    seen, todo = set(), [script]
    while todo:
        path = todo.pop()
        for name in imported(path):
            f = module_file(name)
            rel = f.relative_to(ROOT).as_posix()
            if rel not in seen:
                seen.add(rel)
                todo.append(f)
    code = {p for p in seen if not (p.endswith("__init__.py") and _only_docstring(ROOT / p))}
    return code | {d for p in code for d in PACKAGE_DATA.get(p, [])}


def _only_docstring(path: Path) -> bool:
    body = ast.parse(path.read_text()).body
    return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def script_of(stage: dict) -> str:
    argv = shlex.split(stage["cmd"])
    assert argv[0] == "python" and argv[1].startswith("stages/"), f"cmd should run a stage script: {stage['cmd']}"
    return argv[1]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_are_the_code_it_runs(name):
    stage = STAGES[name]
    script = script_of(stage)
    declared = {d for d in stage["deps"] if d.startswith(("maskgate/", "stages/"))}
    runs = closure(ROOT / script) | {script}
    assert not runs - declared, f"stage {name} runs {sorted(runs - declared)} but dvc.yaml does not list them in deps"
    assert not declared - runs, f"stage {name} lists {sorted(declared - runs)} in deps but never imports them"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_paths_are_written_once_in_cmd(name):
    """Every data dependency and output of a stage appears in its cmd (the script has no default paths)."""
    stage = STAGES[name]
    argv = shlex.split(stage["cmd"])
    paths = [d for d in stage["deps"] if not d.startswith(("maskgate/", "stages/", "${"))]
    paths += [next(iter(o)) if isinstance(o, dict) else o for key in ("outs", "metrics") for o in stage.get(key, [])]
    for path in paths:
        assert any(a == path or a.startswith(path.rstrip("/") + "/") or path.startswith(a.rstrip("/") + "/")
                   for a in argv), f"stage {name}: {path} is in dvc.yaml but not in its cmd {stage['cmd']!r}"


def test_the_closure_follows_function_level_imports(tmp_path):
    """The check itself: an import inside a function is followed (the stage scripts import there)."""
    script = tmp_path / "s.py"
    script.write_text("def main():\n    from maskgate.evaluation import evaluate\n")
    got = closure(script)
    assert "maskgate/evaluation/evaluate.py" in got and "maskgate/model/scoring.py" in got
