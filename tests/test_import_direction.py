"""The direction of imports between the project's packages (DESIGN.md "Layout"):
`tui -> bft, transport`, `adversary -> bft, transport`, `bft.node -> transport`; nothing in
bft/ imports adversary, tui or benchmarks (they add to `bft` as plugins: bft/plugins.py),
and nothing imports benchmarks (scripts, not an installed package). Checked statically:
every module of every package is parsed, and every import counts, at the top or inside a
function, absolute or relative, and `importlib.import_module("...")` with a literal name."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: package -> the project packages it may import (itself included)
MAY_IMPORT = {
    "transport": {"transport"},
    "bft": {"bft"},
    "adversary": {"adversary", "bft", "transport"},
    "tui": {"tui", "bft", "transport"},
    "benchmarks": {"benchmarks", "bft", "transport", "adversary"},
}
#: the modules of bft/ that do I/O and may use the transport (the rest is the pure core)
BFT_RUNTIME = {"bft.node", "bft.cli", "bft.bench", "bft.launcher", "bft.lifecycle", "bft.__main__"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file at `path`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                out.append((node.lineno, ".".join(base + ([node.module] if node.module else []))))
            elif node.module:
                out.append((node.lineno, node.module))
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(
                node.func, "id", None)) in ("import_module", "__import__") and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            out.append((node.lineno, node.args[0].value))
    return out


def wrong_way_imports(path: Path) -> list[str]:
    """`file:line: module -> imported` for every import against the direction."""
    me = module_name(path)
    top = me.split(".")[0]
    allowed = set(MAY_IMPORT[top])
    if me in BFT_RUNTIME:
        allowed.add("transport")
    bad = []
    for line, name in imported_names(path):
        target = name.split(".")[0]
        if target in MAY_IMPORT and target not in allowed:
            bad.append(f"{path.relative_to(ROOT)}:{line}: {me} -> {name}")
    return bad


def project_modules() -> list[Path]:
    return sorted(p for pkg in MAY_IMPORT for p in (ROOT / pkg).rglob("*.py"))


def test_imports_go_one_way() -> None:
    modules = project_modules()
    assert len(modules) > 50 and any(p.name == "cli.py" for p in modules)
    assert [b for p in modules for b in wrong_way_imports(p)] == []


def test_the_check_catches_planted_wrong_way_imports(tmp_path: Path, monkeypatch) -> None:
    """A copy of the tree with wrong-way imports planted: at the top, inside a function,
    relative, and through importlib; and a pure bft module reaching for the transport."""
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    for pkg in MAY_IMPORT:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "bft" / "cli.py").write_text(
        "import argparse\nfrom transport.udp import TransportError\n"
        "def build():\n    from tui.commands import add_tui_parsers\n"
        "    importlib.import_module('adversary.simcli')\n")
    (tmp_path / "bft" / "replica.py").write_text(
        "from transport import frame\nfrom . import codec\n")
    (tmp_path / "tui" / "app.py").write_text("from ..adversary import sim\nimport bft.codec\n")
    (tmp_path / "adversary" / "sim.py").write_text("from benchmarks.bench import x\n")
    found = [b for p in project_modules() for b in wrong_way_imports(p)]
    assert found == [
        "adversary/sim.py:1: adversary.sim -> benchmarks.bench",
        "bft/cli.py:4: bft.cli -> tui.commands",
        "bft/cli.py:5: bft.cli -> adversary.simcli",
        "bft/replica.py:1: bft.replica -> transport",
        "tui/app.py:1: tui.app -> adversary",
    ]


def test_benchmarks_is_not_an_installed_package() -> None:
    """`bft bench` lives in bft/bench.py; benchmarks/ is scripts, kept out of site-packages."""
    import tomllib

    found = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]["find"]["include"]
    assert not any(pattern.startswith("benchmarks") for pattern in found)


# Extensions plug into a node through its declared points (bft.node.NodeExtension), never by
# patching it (STYLE.md): outside bft/node.py (and the endpoint's own module) nothing sets a
# node's replica or an endpoint's datagram filters.
PATCHED = {"replica", "send_filter", "recv_filter", "behaviour_hook"}
MAY_SET = {"bft.node", "transport.udp"}


def patching(path: Path) -> list[str]:
    if module_name(path) in MAY_SET:
        return []
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        else:
            continue
        for target in targets:
            if isinstance(target, ast.Attribute) and target.attr in PATCHED and not (
                    isinstance(target.value, ast.Name) and target.value.id == "self"):
                out.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(target)}")
    return out


def test_nothing_patches_a_node() -> None:
    assert [b for p in project_modules() for b in patching(p)] == []


def test_the_patching_check_catches_a_planted_patch(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    (tmp_path / "adversary").mkdir()
    planted = tmp_path / "adversary" / "runtime.py"
    planted.write_text("def install(node, w, f):\n    node.replica = w\n"
                       "    node.endpoint.send_filter = f\n    self.replica = w\n")
    assert patching(planted) == ["adversary/runtime.py:2: node.replica",
                                 "adversary/runtime.py:3: node.endpoint.send_filter"]
