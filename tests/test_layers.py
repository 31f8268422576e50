"""Each layer imports only the layers below it.

errors < solvers < integrate < gradients < api < nn < models, data < train < plot < cli,
with the package's own ``__init__`` (the public façade) on top. The test reads the
import statements of every module, so a lower layer reaching up fails here before it
turns into an import cycle or a tangle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "neurode"

RANKS = {
    "_version": 0,
    "errors": 0,
    "solvers": 1,
    "integrate": 2,
    "gradients": 3,
    "api": 4,
    "check_gradients": 4,
    "sensitivities": 4,
    "nn": 5,
    "models": 6,
    "data": 6,
    "train": 7,
    "plot": 8,
    "cli": 9,
    "__main__": 10,
    "__init__": 10,
}


def _layer(module: str) -> str:
    """``neurode.integrate.loop`` -> ``integrate``; a name of the package root -> ``__init__``."""
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    top = parts[1]
    if (PACKAGE / f"{top}.py").exists() or (PACKAGE / top).is_dir():
        return top
    return "__init__"


def _module_name(path: Path) -> tuple[str, str]:
    """The dotted name of the module at ``path`` and the package its relative imports start from."""
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    name = ".".join(relative.parts)
    if path.name == "__init__.py":
        name = name[: -len(".__init__")]
        return name, name
    return name, name.rsplit(".", 1)[0]


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every import of a neurode module in the file."""
    name, package = _module_name(path)
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "neurode":
                continue
            if node.module is None or target == "neurode":
                found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, target))
        elif isinstance(node, ast.Import):
            found += [
                (node.lineno, alias.name)
                for alias in node.names
                if alias.name.split(".")[0] == "neurode"
            ]
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_top_level_module_has_a_layer():
    tops = {_layer(_module_name(path)[0]) for path in MODULES}
    assert tops <= set(RANKS), f"give these a layer in RANKS: {sorted(tops - set(RANKS))}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_higher_layer(path):
    name, _ = _module_name(path)
    own = _layer(name)
    upward = [
        f"line {line}: {target} ({_layer(target)})"
        for line, target in _imports(path)
        if RANKS[_layer(target)] > RANKS[own]
    ]
    assert not upward, f"{name} ({own}) imports higher layers: " + "; ".join(upward)


def test_the_check_sees_upward_imports(tmp_path):
    """The parser resolves relative imports: a solvers module importing the api is caught."""
    fake = PACKAGE / "solvers" / "runge_kutta.py"
    name, package = _module_name(fake)
    assert (name, package) == ("neurode.solvers.runge_kutta", "neurode.solvers")
    probe = tmp_path / "probe.py"
    probe.write_text("from ..api import solve\nfrom . import tableau\nfrom .. import errors\n")
    tree = ast.parse(probe.read_text())
    targets = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            targets.append(".".join(base + ([node.module] if node.module else [])))
    assert [_layer(t) for t in targets] == ["api", "solvers", "__init__"]
    assert RANKS["api"] > RANKS["solvers"]
