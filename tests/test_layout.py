"""The harness/ package layout: commands live in harness/cli/, broker machinery in harness/brokers/, each folder
says what it holds, and no two modules import each other (not even for type checking)."""

from __future__ import annotations

import ast
from pathlib import Path

import harness

ROOT = Path(harness.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Modules of harness this file imports at module level, including under `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    body = list(tree.body)
    while body:
        node = body.pop(0)
        if isinstance(node, ast.If):  # TYPE_CHECKING blocks and version switches still make a cycle
            body.extend(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            body.extend(node.body)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("harness"):
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("harness"))
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    return {name: {m for m in _imports(p) if m in modules and m != name} for name, p in modules.items()}


def test_no_command_or_broker_modules_at_the_top_of_harness():
    flat = sorted(p.name for p in ROOT.glob("*.py"))
    strays = [n for n in flat if n.startswith("cli_") or n == "cli.py" or n in {
        "broker.py", "brokerdefs.py", "images.py", "reaper.py", "probe.py", "discovery.py", "ports.py"}]
    assert not strays, f"belong in harness/cli/ or harness/brokers/: {strays}"
    assert not (ROOT / "backends").exists(), "harness/backends/ belongs in harness/brokers/backends/"
    for room in ("cli", "brokers", "brokers/backends"):
        doc = ast.get_docstring(ast.parse((ROOT / room / "__init__.py").read_text()))
        assert doc, f"harness/{room}/__init__.py should say what the folder holds"


def test_proxy_connection_and_proxy_do_not_import_each_other():
    graph = _graph()
    assert "harness.proxy.proxy" not in graph["harness.proxy.connection"]


def test_no_import_cycle_between_two_modules():
    graph = _graph()
    # a package importing its own submodule (harness.cli -> harness.cli.run) is how packages work, not a cycle
    pairs = sorted({tuple(sorted((a, b))) for a, deps in graph.items() for b in deps
                    if a in graph.get(b, ()) and not (b.startswith(a + ".") or a.startswith(b + "."))})
    assert not pairs, f"modules importing each other: {pairs}"


def test_harness_readme_maps_every_folder():
    text = (ROOT / "README.md").read_text()
    rooms = sorted(p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    missing = [r for r in rooms if f"`{r}/`" not in text]
    assert not missing, f"harness/README.md does not mention {missing}"
