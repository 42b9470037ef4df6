"""House rules, checked on the source: every module of `mrl_text/` is parsed with `ast` and every import in it is
read, lazy imports inside functions included (nothing is imported, so a rule broken on a path no test runs still
fails here).

1. `mrl_text/models/` travels with saved weights: its modules import only torch, transformers, safetensors,
   huggingface_hub, numpy, the standard library and their siblings (`from .x import ...`), and no private name of
   those packages. The one exception: `sentence_transformers_matryoshka.py` also imports `sentence_transformers`
   (only sentence-transformers loads that file).
2. The package has no import cycle, lazy imports included. The rule for packages: the graph has one node per
   module, a package's `__init__.py` being the node of the package's own name, and one edge per import statement
   as written. An import of a package name (`from ..models import truncate_embeddings`, `import mrl_text`) is an
   edge to that `__init__`; `from . import x` / `from pkg import x` where `x` is a submodule is an edge to the
   submodule. The parent packages Python runs implicitly before a submodule are not edges: every submodule would
   otherwise close a loop with its own `__init__`. So an `__init__` re-exporting its submodules is no cycle by
   itself (`pkg -> pkg.sub`), and a cycle through an `__init__` is reported exactly when a module below it
   re-enters it by importing a name from the package rather than from the submodule that defines it: that import
   sees a half-initialized `__init__` whenever the package is imported first.
3. Layers point one way (models <- losses <- training; models <- evaluation <- cards; the DDP gathering in
   `mrl_text.distributed` below both losses and training).
4. No module assigns an attribute on a class it imported from another module (`Imported.attr = ...`,
   `setattr(Imported, ...)`): a method lives on its class, a function in its module.
"""

import ast
import sys
from pathlib import Path

import pytest

# The source tree next to this test (not the installed package: the walk reads files and imports nothing).
PACKAGE_DIR = Path(__file__).resolve().parents[1] / "mrl_text"
MODELS = "mrl_text.models"
TRAVELLING_PACKAGES = {"torch", "transformers", "safetensors", "huggingface_hub", "numpy"}
# Loaded by sentence-transformers only (the module `modules.json` names), so it may import sentence-transformers.
EXTRA_TRAVELLING_PACKAGES = {"mrl_text.models.sentence_transformers_matryoshka": {"sentence_transformers"}}
# Private names of transformers that older or newer releases move or drop; a travelling file must not rely on them.
PRIVATE_TRANSFORMERS_ATTRIBUTES = {"_model_mapping", "_upload_modified_files"}

# module prefix -> mrl_text prefixes it must never import (lazily or not)
LAYERS = {
    "mrl_text.models": ["mrl_text"],  # everything of mrl_text outside models, see forbidden_for
    "mrl_text.distributed": ["mrl_text.losses", "mrl_text.training", "mrl_text.evaluation", "mrl_text.cards",
                             "mrl_text.deploy", "mrl_text.adaptor"],
    "mrl_text.losses": ["mrl_text.training", "mrl_text.evaluation", "mrl_text.cards", "mrl_text.deploy",
                        "mrl_text.adaptor"],
    "mrl_text.evaluation": ["mrl_text.training", "mrl_text.cards"],
}


def _module_name(path):
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _collect_modules():
    modules = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        name = _module_name(path)
        modules[name] = {"path": path, "is_package": path.name == "__init__.py",
                         "tree": ast.parse(path.read_text(encoding="utf-8"), filename=str(path))}
    return modules


MODULES = _collect_modules()


class Import:
    """One imported module as written in `module` at `line`: `target` is the absolute dotted name it resolves to
    (a submodule where `from pkg import sub` names one), `relative` the dots of a relative import, `names` the
    names taken from it."""

    def __init__(self, module, line, target, relative, names, statement):
        self.module, self.line, self.target, self.relative = module, line, target, relative
        self.names, self.statement = names, statement

    def __repr__(self):
        return f"{self.module}:{self.line}: {self.statement}"


def _imports(name):
    """Every import of module `name`, lazy ones included, resolved to absolute dotted names."""
    info = MODULES[name]
    package = name if info["is_package"] else name.rpartition(".")[0]
    found = []
    for node in ast.walk(info["tree"]):
        statement = ast.unparse(node) if isinstance(node, (ast.Import, ast.ImportFrom)) else None
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(name, node.lineno, alias.name, 0, [], statement))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module
            whole = []
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in MODULES:  # `from pkg import sub`: the submodule itself
                    found.append(Import(name, node.lineno, submodule, node.level, [alias.name], statement))
                else:
                    whole.append(alias.name)
            if whole:
                found.append(Import(name, node.lineno, base, node.level, whole, statement))
    return found


IMPORTS = {name: _imports(name) for name in MODULES}


def _internal(target):
    """The module of the package `target` names, or None where it is outside mrl_text."""
    if target != "mrl_text" and not target.startswith("mrl_text."):
        return None
    while target not in MODULES:  # `from mrl_text.x.y import z` where y is a name, not a module: stops at x
        target = target.rpartition(".")[0]
    return target


def test_the_walk_sees_the_package():
    """The checks below only mean something if the walk finds the modules and their lazy imports."""
    assert {"mrl_text", "mrl_text.models", "mrl_text.models.modeling_matryoshka", "mrl_text.training.trainer",
            "mrl_text.losses", "mrl_text.evaluation.results", "mrl_text.cli"} <= set(MODULES)
    top_level = {node.lineno for node in MODULES["mrl_text.cli"]["tree"].body}
    lazy = [imp for imp in IMPORTS["mrl_text.cli"] if imp.line not in top_level]
    assert lazy, "cli.py imports lazily inside its commands; the walk should see those imports"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n == MODELS or n.startswith(MODELS + ".")))
def test_travelling_folder_imports_only_allowed_packages(name):
    """A model saved with `save_pretrained` carries these files and is loaded with `trust_remote_code=True` on
    machines that never installed mrl-text: they may import only the packages transformers itself needs, numpy,
    the standard library and each other."""
    allowed = TRAVELLING_PACKAGES | set(sys.stdlib_module_names) | EXTRA_TRAVELLING_PACKAGES.get(name, set())
    siblings = {n.rpartition(".")[2] for n in MODULES if n.startswith(MODELS + ".")}
    for imp in IMPORTS[name]:
        if imp.relative:
            sibling = imp.target[len(MODELS) + 1:] if imp.target.startswith(MODELS + ".") else None
            assert imp.relative == 1 and sibling in siblings, (
                f"{name} imports {imp.target} ({imp!r}); a travelling file may import only its siblings in "
                f"{MODELS} relatively (`from .x import ...`).")
        else:
            top = imp.target.split(".")[0]
            known = top in allowed  # (a plain bool: pytest would print the whole standard library otherwise)
            assert known, (
                f"{name} imports {imp.target} ({imp!r}); the travelling folder may import only "
                f"{sorted(TRAVELLING_PACKAGES | EXTRA_TRAVELLING_PACKAGES.get(name, set()))}, the standard library "
                f"and its siblings relatively.")
            private = [part for part in imp.target.split(".") + imp.names if part.startswith("_")]
            assert top == "__future__" or not private, (
                f"{name} imports the private name(s) {private} ({imp!r}); a travelling file must use only public "
                f"names, which survive the releases of transformers it meets.")
    for node in ast.walk(MODULES[name]["tree"]):
        if isinstance(node, ast.Attribute):
            assert node.attr not in PRIVATE_TRANSFORMERS_ATTRIBUTES, (
                f"{name}:{node.lineno} reads transformers' private `{node.attr}`.")


def _graph():
    graph = {name: {} for name in MODULES}
    for name, imports in IMPORTS.items():
        for imp in imports:
            target = _internal(imp.target)
            if target is not None and target != name:
                graph[name].setdefault(target, imp)
            elif target == name:  # a module importing itself is a cycle of one
                graph[name].setdefault(name, imp)
    return graph


def _cycles(graph):
    """One cycle per strongly connected component of more than one module (or a module importing itself), as the
    list of imports that close it (Tarjan's algorithm, then a shortest walk back inside the component)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)

    cycles = []
    for component in components:
        start = min(component)
        # breadth-first from start back to start, staying inside the component
        paths, seen = [[start]], set()
        while paths:
            path = paths.pop(0)
            for nxt in sorted(graph[path[-1]]):
                if nxt == start:
                    cycles.append([graph[a][b] for a, b in zip(path, path[1:] + [start])])
                    paths = []
                    break
                if nxt in component and nxt not in seen:
                    seen.add(nxt)
                    paths.append(path + [nxt])
    return cycles


def test_cycle_finder_finds_a_cycle():
    """The cycle check below passes on a clean graph; this shows it would fail on a circle."""
    graph = {"a": {"b": "a->b"}, "b": {"c": "b->c"}, "c": {"a": "c->a"}, "d": {"a": "d->a"}}
    assert _cycles(graph) == [["a->b", "b->c", "c->a"]]
    assert _cycles({"a": {"b": "a->b"}, "b": {}}) == []


def test_no_import_cycle():
    """No import circle, lazy imports included (see the module docstring for how packages count)."""
    cycles = _cycles(_graph())
    assert not cycles, "import cycles (each line an import that closes the circle):\n" + "\n\n".join(
        "\n".join(repr(imp) for imp in cycle) for cycle in cycles)


def forbidden_for(name):
    for layer, forbidden in LAYERS.items():
        if name == layer or name.startswith(layer + "."):
            if layer == MODELS:
                return lambda target: target != MODELS and not target.startswith(MODELS + ".")
            return lambda target: any(target == f or target.startswith(f + ".") for f in forbidden)
    return None


@pytest.mark.parametrize("name", sorted(n for n in MODULES if forbidden_for(n)))
def test_layers_point_one_way(name):
    """models <- losses <- training, models <- evaluation <- cards; a lower layer never imports a higher one."""
    forbidden = forbidden_for(name)
    for imp in IMPORTS[name]:
        target = _internal(imp.target)
        assert target is None or not forbidden(target), (
            f"{name} imports {target} ({imp!r}), a layer above it; move what both need below both.")


def _imported_names(tree):
    """Names a module binds by importing: `from x import Name` -> {Name: False}; `import x.y` -> {x: True}
    (True: a module)."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = True
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                names[alias.asname or alias.name] = False
    return names


def _patched_class(target, imported):
    """The dotted name of an imported class whose attribute `target` sets, or None. `Name.attr` where `Name` was
    imported by `from x import Name`; `module.Class.attr` where `module` was imported (a capitalized class name)."""
    chain = []
    while isinstance(target, ast.Attribute):
        chain.append(target.attr)
        target = target.value
    if not isinstance(target, ast.Name) or target.id not in imported:
        return None
    chain = [target.id] + chain[::-1]
    if not imported[target.id]:
        return ".".join(chain[:-1]) if len(chain) >= 2 else None
    owner = chain[:-1]
    return ".".join(owner) if len(owner) >= 2 and owner[-1][:1].isupper() else None


def _patches(name):
    tree = MODULES[name]["tree"]
    imported = _imported_names(tree)
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, ast.Delete):
            targets = node.targets
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in {"setattr", "delattr"} and node.args):
            owner = node.args[0]
            patched = (owner.id if isinstance(owner, ast.Name) and imported.get(owner.id) is False
                       else _patched_class(ast.Attribute(value=owner, attr="?"), imported))
            if patched:
                found.append(f"{name}:{node.lineno}: {ast.unparse(node)} (patches {patched})")
            continue
        for target in targets:
            patched = isinstance(target, ast.Attribute) and _patched_class(target, imported)
            if patched:
                found.append(f"{name}:{node.lineno}: {ast.unparse(target)} = ... (patches {patched})")
    return found


def test_patch_finder_finds_a_patch():
    """The patch check below passes on clean code; this shows it would fail on each form of patching."""
    source = ("from transformers import Trainer\nimport transformers\n"
              "Trainer.export = lambda self: None\nsetattr(Trainer, 'x', 1)\ntransformers.Trainer.y = 2\n"
              "def f(self):\n    self.x = 1\n    transformers.logging.x = 1\n")
    MODULES["<example>"] = {"tree": ast.parse(source), "is_package": False, "path": None}
    try:
        found = _patches("<example>")
    finally:
        del MODULES["<example>"]
    assert sorted(line.split(":")[1] for line in found) == ["3", "4", "5"], found


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_class_is_patched_from_outside(name):
    """A method lives on its class and a function in its module: a class patched by another module has fewer
    methods wherever that module was not imported (e.g. loaded with trust_remote_code)."""
    patches = _patches(name)
    assert not patches, f"{name} assigns attributes on a class it imported:\n" + "\n".join(patches)


def test_readme_test_command_is_what_ci_runs():
    """A developer who runs README's test command runs what CI runs (the lint included)."""
    root = PACKAGE_DIR.parent
    ci = (root / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    command = next(line for line in ci if line.startswith("pip install") and "[cpu,demo,test]" in line)
    assert "ruff check ." in command and "python -m pytest" in command, command
    assert command in (root / "README.md").read_text(encoding="utf-8"), (
        f"README.md does not show CI's test command {command!r}; keep the two the same.")


def test_every_accelerate_command_names_its_config():
    """`accelerate launch` without `--config_file` (and no saved default config) prints a warning listing the
    defaults it guessed: every command README and the recipes show names one of recipes/configs/accelerate."""
    root = PACKAGE_DIR.parent
    files = [root / "README.md", *sorted((root / "recipes").glob("*.py"))]
    bare = [
        f"{path.name}: {line.strip()}"
        for path in files
        for line in path.read_text(encoding="utf-8").splitlines()
        if (line.strip().startswith("accelerate launch") or "&& accelerate launch" in line)
        and "accelerate launch --config_file recipes/configs/accelerate/" not in line
    ]
    assert not bare, "commands without --config_file:\n" + "\n".join(bare)
