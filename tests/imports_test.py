"""The house rule: imports run one way. No two of t5scale's packages import each other (a function-level import
counts: the data circle tasks <-> finetune_tasks was one), no module circle, and nothing imports `t5scale.cli`."""

import ast

from tests.testing import REPO


def _is_module(name: str) -> bool:
    path = REPO.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _module_names(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        # `from a.b import c` imports the module a.b.c when there is one, else a name of a.b.
        return [f"{node.module}.{a.name}" if _is_module(f"{node.module}.{a.name}") else node.module
                for a in node.names]
    return []


def _imports() -> dict[str, set[str]]:
    edges = {}
    for path in sorted((REPO / "t5scale").rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        targets = {name for node in ast.walk(ast.parse(path.read_text())) for name in _module_names(node)}
        # A package's __init__ re-exporting its own modules is not an arrow between modules.
        edges[module] = {t for t in targets if t.startswith("t5scale.") and not t.startswith(module + ".")}
    return edges


def _package(module: str) -> str:
    return module.split(".")[1]


def test_no_two_packages_import_each_other():
    arrows = {(_package(a), _package(b)) for a, targets in _imports().items() if "." in a for b in targets
              if _package(a) != _package(b)}
    assert sorted((a, b) for a, b in arrows if (b, a) in arrows) == []


def test_no_module_circle_and_nothing_imports_the_cli():
    edges = _imports()
    circles = sorted((a, b) for a, targets in edges.items() for b in targets if a in edges.get(b, ()) and a < b)
    assert circles == []
    assert sorted(a for a, targets in edges.items() if not a.startswith(("t5scale.cli", "t5scale.__main__"))
                  and any(t.startswith("t5scale.cli") for t in targets)) == []
