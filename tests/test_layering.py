"""The import graph of src/optscale against the layer table of docs/DESIGN.md.

The table is read from the document itself (the first fenced block after "Layers,"), so the code and the
documented design cannot drift apart silently: every module must belong to a listed layer, import only its
own layer and those below (lazy imports inside functions count too; engines may import the listed edge
interfaces), and use no private name of another module (``from m import _x``, ``obj._x`` where ``_x`` is
defined in another module of the package) and no private module ``a/_m.py`` from outside package ``a/``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
DESIGN = REPO / "docs" / "DESIGN.md"

#: Violations that exist on purpose for now, each with who removes it. The test fails when one of them
#: disappears (so the entry is deleted with the fix) as well as for any violation not listed here.
KNOWN: dict[tuple[str, str], str] = {}


def _module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def design_layers(text: str | None = None) -> tuple[list[str], dict[str, str], dict[str, set[str]]]:
    """(layer names lowest first, {path or directory/: layer}, {interface module: names}) from DESIGN.md."""
    text = DESIGN.read_text() if text is None else text
    block = re.search(r"^Layers,.*?^```\n(.*?)^```", text, re.S | re.M)
    assert block, "docs/DESIGN.md has no layer table (a fenced block after 'Layers,')"
    order: list[str] = []
    where: dict[str, str] = {}
    layer = None
    for line in block.group(1).splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            layer = line.split()[0]
            order.append(layer)
        assert layer is not None, f"layer table line without a layer: {line!r}"
        for path in re.findall(r"optscale/[\w/]*(?:\.py|/)", line):
            assert path not in where, f"{path} listed twice in docs/DESIGN.md"
            where[path] = layer
    interfaces: dict[str, set[str]] = {}
    sect = re.search(r"^Interfaces the engines drive.*?:\n(.*?)\n\n", text, re.S | re.M)
    assert sect, "docs/DESIGN.md names no engine-facing interfaces"
    for mod, names in re.findall(r"`(optscale[\w.]+)`: ([\w, ]+)", sect.group(1)):
        interfaces[mod] = {n.strip() for n in names.split(",")}
    return order, where, interfaces


def layer_of(module: str, where: dict[str, str]) -> str | None:
    """The layer of a module: its file listed, else the longest listed directory containing it."""
    rel = module.replace(".", "/")
    for cand in (rel + ".py", rel + "/__init__.py"):
        if cand in where:
            return where[cand]
    best = None
    for path, layer in where.items():
        if path.endswith("/") and (rel + "/").startswith(path) and (best is None or len(path) > len(best[0])):
            best = (path, layer)
    return best[1] if best else None


def _resolve(module: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(path: Path, module: str) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every optscale import in the file."""
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names if a.name.split(".")[0] == "optscale"]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, is_pkg, node)
            if target.split(".")[0] == "optscale":
                out += [(target, a.name, node.lineno) for a in node.names]
    return out


def _modules(src: Path = SRC) -> dict[str, Path]:
    return {_module_name(p, src): p for p in sorted((src / "optscale").rglob("*.py"))}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _target_module(target: str, name: str | None, modules: dict[str, Path]) -> str:
    """``from pkg import mod`` imports the module pkg.mod; otherwise the name lives in ``target``."""
    return f"{target}.{name}" if name and f"{target}.{name}" in modules else target


def layer_violations(modules: dict[str, Path] | None = None, design: str | None = None) -> set[tuple]:
    modules = _modules() if modules is None else modules
    order, where, interfaces = design_layers(design)
    rank = {name: i for i, name in enumerate(order)}
    found = set()
    for mod, path in modules.items():
        if mod == "optscale":   # the lazy facade
            continue
        mine = layer_of(mod, where)
        if mine is None:
            if mod.count(".") >= 1 and path.name == "__init__.py" and not imports_of(path, mod):
                continue   # an empty package marker (optscale.online)
            found.add((mod, None, "not in the layer table of docs/DESIGN.md"))
            continue
        for target, name, line in imports_of(path, mod):
            dep = _target_module(target, name, modules)
            theirs = layer_of(dep, where)
            if theirs is None:
                if dep == "optscale":
                    continue   # `from optscale import theory` resolves above; the facade itself is not used
                found.add((mod, dep, f"line {line}: imports a module missing from the layer table"))
            elif rank[theirs] > rank[mine]:
                if mine == "engines" and theirs == "edges" and name in interfaces.get(dep, ()):
                    continue
                found.add((mod, dep, f"line {line}: {mine} imports {theirs}"))
    return found


def private_violations(modules: dict[str, Path] | None = None) -> set[tuple]:
    modules = _modules() if modules is None else modules
    defined: dict[str, set[str]] = {}
    trees = {}
    for mod, path in modules.items():
        trees[mod] = tree = ast.parse(path.read_text(), str(path))
        names = defined.setdefault(mod, set())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    found = set()
    for mod, path in modules.items():
        pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for target, name, line in imports_of(path, mod):
            dep = _target_module(target, name, modules)
            if dep == mod:
                continue
            for i, part in enumerate(dep.split(".")):
                owner = ".".join(dep.split(".")[:i])
                if _is_private(part) and not (pkg == owner or pkg.startswith(owner + ".")):
                    found.add((mod, dep, f"line {line}: private module of package {owner}"))
            if name and dep == target and _is_private(name):
                found.add((mod, f"{dep}.{name}", f"line {line}: imports a private name"))
        mine = defined[mod]
        for node in ast.walk(trees[mod]):
            if isinstance(node, ast.Attribute) and _is_private(node.attr) and node.attr not in mine:
                if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                    continue
                owners = sorted(m for m, names in defined.items() if node.attr in names and m != mod)
                if owners:
                    found.add((mod, f"{owners[0]}.{node.attr}", f"line {node.lineno}: uses a private name"))
    return found


# --------------------------------------------------------------------------------------------------------------
def test_design_table_parses_and_lists_every_layer():
    order, where, interfaces = design_layers()
    assert order == ["base", "theory", "answers", "policies", "pools", "engines", "edges"]
    assert where["optscale/theory.py"] == "theory" and where["optscale/policies/"] == "policies"
    # modules other helpers are adding have their place already
    for path, layer in (("optscale/online/loop.py", "engines"), ("optscale/server/", "edges"),
                        ("optscale/problems.py", "pools"), ("optscale/jsonio.py", "base")):
        assert where[path] == layer, path
    assert interfaces["optscale.online.scorers"] == {"Scorer", "ScoringError"}


def test_imports_follow_the_layers_of_design_md():
    found = layer_violations()
    unexpected = sorted(v for v in found if (v[0], v[1]) not in KNOWN)
    assert not unexpected, "\n".join(f"{m} -> {d}: {why}" for m, d, why in unexpected)
    stale = sorted(k for k in KNOWN if not any((v[0], v[1]) == k for v in found))
    assert not stale, f"fixed, remove from KNOWN: {stale}"


def test_no_private_names_across_modules():
    found = sorted(private_violations())
    assert not found, "\n".join(f"{m} -> {d}: {why}" for m, d, why in found)


# ------------------------------------------------------------------- the checker itself catches what it should
@pytest.fixture
def fake_src(tmp_path):
    def make(files: dict[str, str]) -> dict[str, Path]:
        for rel, text in files.items():
            p = tmp_path / "src" / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
        return _modules(tmp_path / "src")

    return make


def test_checker_flags_an_upward_import_and_a_private_name(fake_src):
    mods = fake_src({
        "optscale/__init__.py": "",
        "optscale/errors.py": "",
        "optscale/theory.py": "from optscale.errors import X\n",
        "optscale/policies/__init__.py": "",
        "optscale/policies/_vec.py": "def _helper():\n    pass\ndef best():\n    pass\n",
        "optscale/policies/bon.py": "from optscale.policies._vec import best\n",
        "optscale/evaluate.py": ("def f():\n    from optscale.cli import main\n"
                                 "    from optscale.policies._vec import best\n"
                                 "    from optscale.policies._vec import _helper\n"
                                 "    from optscale.online.scorers import Scorer\n"),
        "optscale/online/__init__.py": "",
        "optscale/online/scorers.py": "class Scorer:\n    def _check(self):\n        pass\n",
        "optscale/online/prm.py": "def g(s):\n    return s._check()\n",
        "optscale/cli/__init__.py": "from optscale.evaluate import f\n",
        "optscale/stray.py": "",
    })
    lay = {(m, d) for m, d, _ in layer_violations(mods)}
    assert lay == {("optscale.evaluate", "optscale.cli"), ("optscale.stray", None)}
    priv = {(m, d) for m, d, _ in private_violations(mods)}
    assert priv == {("optscale.evaluate", "optscale.policies._vec"),
                    ("optscale.evaluate", "optscale.policies._vec._helper"),
                    ("optscale.online.prm", "optscale.online.scorers._check")}


#: library modules that still print; each to be turned into warnings/logging by its owner (then removed here)
KNOWN_PRINTS: dict[str, str] = {}


def test_library_code_warns_instead_of_printing():
    """Library code reports through `warnings` / `logging` (or a tqdm bar); only the CLI prints."""
    printing = set()
    for mod, path in _modules().items():
        if mod == "optscale.cli" or mod.startswith("optscale.cli."):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                printing.add(mod)
    assert not printing - set(KNOWN_PRINTS), f"library modules that print: {sorted(printing - set(KNOWN_PRINTS))}"
    assert not set(KNOWN_PRINTS) - printing, f"no longer print, remove from KNOWN_PRINTS: {set(KNOWN_PRINTS) - printing}"
