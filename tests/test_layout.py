"""The package's parts import downstream only: data <- render <- model <- evaluation, with utils, config and
prompt under all of them and the gate, the command line and the report on top. A part that reaches sideways
(evaluate taking a helper out of the trainer, say) fails here with the module and the import."""
import pytest

from tests.conftest import ROOT
from tests.test_dvc_deps import imported

BASE = {"maskgate.utils", "maskgate.config", "maskgate.prompt"}
ALLOWED = {
    "utils": set(),
    "data": BASE,
    "render": BASE | {"maskgate.data"},
    "model": BASE,
    "evaluation": BASE | {"maskgate.model"},
}


def part(module: str) -> str:
    """maskgate.data.masks -> maskgate.data; maskgate.config -> maskgate.config."""
    return ".".join(module.split(".")[:2])


@pytest.mark.parametrize("name", sorted(ALLOWED))
def test_a_part_imports_only_what_lies_under_it(name):
    own = f"maskgate.{name}"
    for path in sorted((ROOT / "maskgate" / name).glob("*.py")):
        for module in imported(path):
            target = part(module)
            assert target in ALLOWED[name] | {own} or module == "maskgate", \
                f"{path.relative_to(ROOT)} imports {module}: {own} may import only {sorted(ALLOWED[name])}"
