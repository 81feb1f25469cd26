"""Imports run one way: app -> main -> streaming / backfill -> transforms -> stores -> core.

Every module under pipelines/, models/ and bench/ is parsed (imports inside functions and under
TYPE_CHECKING count too) and each import of a first-party module is checked against the layer
it belongs to. A failure lists every offending edge.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = ("pipelines", "models", "bench")

# Module (or package) prefix -> layer; the longest prefix wins ("pipelines" itself: exactly).
LAYER_OF = {
    "pipelines": "pipelines",  # the package marker, empty
    "pipelines.core": "core",
    "pipelines.stores": "stores",
    "pipelines.transforms": "transforms",
    "pipelines.local_runner": "local_runner",
    "pipelines.options": "options",
    "pipelines.streaming": "streaming",
    "pipelines.backfill": "backfill",
    "pipelines.main": "main",
    "pipelines.app": "app",
    "models": "models",
    "bench": "bench",
}

# Layer -> the layers it may import (its own is always allowed).
ALLOWED: dict[str, frozenset[str]] = {
    "pipelines": frozenset(),
    "core": frozenset(),
    "options": frozenset({"core"}),
    "stores": frozenset({"core"}),
    "transforms": frozenset({"core", "stores"}),
    "local_runner": frozenset({"core", "stores"}),
    "streaming": frozenset({"core", "stores", "transforms", "options"}),
    "backfill": frozenset({"core", "stores", "options"}),
    "main": frozenset({"core", "options", "streaming", "local_runner"}),
    "app": frozenset(LAYER_OF.values()) - {"pipelines", "bench"},
    "models": frozenset({"core"}),
    "bench": frozenset(LAYER_OF.values()) - {"pipelines"},
}

# Known exceptions, edge by edge (importing layer, imported module). Each one is debt.
# Edges allowed against the rule, each with its reason. None today: the DirectRunner's crash
# recovery listens to the graph through pipelines.core.completion instead of being called by it.
EXCEPTIONS: set[tuple[str, str]] = set()

# Third-party packages a layer must not import (prefixes).
FORBIDDEN_THIRD_PARTY = {
    "core": ("apache_beam", "google", "grpc", "tensorflow"),
}

# The console script is the one importer of pipelines.app outside pipelines.app.
CONSOLE_ENTRY = "pipelines.app.cli:main"


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str | None:
    best = None
    for prefix in LAYER_OF:
        inside = module == prefix or (prefix != "pipelines" and module.startswith(prefix + "."))
        if inside and (best is None or len(prefix) > len(best)):
            best = prefix
    return LAYER_OF[best] if best else None


def imported_modules(
    source: str, module: str, is_package: bool, known: set[str]
) -> Iterator[tuple[int, str]]:
    """(line, module) for every import in ``source``; ``from a import b`` names ``a.b`` when that
    is a module, else ``a``."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield node.lineno, sub if sub in known else target


def violations(sources: Mapping[str, tuple[str, bool]]) -> list[str]:
    """Offending edges in ``sources`` (module -> (source, is_package)), one line each."""
    known = set(sources)
    found = []
    for module, (source, is_package) in sorted(sources.items()):
        layer = layer_of(module)
        if layer is None:
            found.append(f"{module}: in no layer (add its package to LAYER_OF)")
            continue
        for line, target in imported_modules(source, module, is_package, known):
            top = target.split(".")[0]
            for banned in FORBIDDEN_THIRD_PARTY.get(layer, ()):
                if target == banned or target.startswith(banned + "."):
                    found.append(f"{module}:{line} ({layer}) imports {target}: not in {layer}")
            if top not in FIRST_PARTY:
                continue
            target_layer = layer_of(target)
            if target_layer == layer or (layer, target) in EXCEPTIONS:
                continue
            if target_layer not in ALLOWED[layer]:
                allowed = ", ".join(sorted(ALLOWED[layer] | {layer})) or "nothing"
                found.append(
                    f"{module}:{line} ({layer}) imports {target} ({target_layer}); "
                    f"{layer} may import {allowed}"
                )
    return found


def _sources() -> dict[str, tuple[str, bool]]:
    sources = {}
    for top in FIRST_PARTY:
        for path in sorted((ROOT / top).rglob("*.py")):
            sources[module_name(path)] = (path.read_text(), path.name == "__init__.py")
    return sources


def test_imports_run_one_way() -> None:
    found = violations(_sources())
    assert not found, "imports against the layer rule:\n  " + "\n  ".join(found)


def test_every_exception_is_still_needed() -> None:
    """An exception nobody uses any more is deleted, so it cannot hide a new edge."""
    used = set()
    sources = _sources()
    for module, (source, is_package) in sources.items():
        for _, target in imported_modules(source, module, is_package, set(sources)):
            used.add((layer_of(module), target))
    assert EXCEPTIONS <= used, f"unused exceptions: {sorted(EXCEPTIONS - used)}"


def test_the_console_script_is_in_app() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'rillet = "{CONSOLE_ENTRY}"' in pyproject
    module, _, attr = CONSOLE_ENTRY.partition(":")
    path = ROOT / (module.replace(".", "/") + ".py")
    text = path.read_text()
    assert layer_of(module) == "app" and (f"\n{attr} = " in text or f"\ndef {attr}(" in text)


def test_the_check_catches_violations() -> None:
    """The checker itself: upward edges, function-level and relative imports, banned packages."""
    sources = {
        "pipelines.core.bad": (
            "import apache_beam as beam\n"
            "from google.cloud import bigtable\n"
            "def f():\n"
            "    from pipelines.app import demo\n"
            "    from ..stores.bigtable import StoreConfig\n",
            False,
        ),
        "pipelines.app.demo": ("", False),
        "pipelines.stores.bigtable": ("from pipelines.core.bad import f\n", False),
        "pipelines.transforms.sinks": (
            "from pipelines.local_runner import recovery\n"
            "from pipelines.local_runner import tune_direct_runner\n",
            False,
        ),
        "pipelines.local_runner.recovery": ("", False),
        "pipelines.local_runner": ("", True),
        "models.train": ("from pipelines.stores import bigtable\n", False),
        "pipelines.stores": ("", True),
        "pipelines.extra": ("", False),
    }
    found = violations(sources)
    assert found == [
        "models.train:1 (models) imports pipelines.stores.bigtable (stores); "
        "models may import core, models",
        "pipelines.core.bad:1 (core) imports apache_beam: not in core",
        "pipelines.core.bad:2 (core) imports google.cloud: not in core",
        "pipelines.core.bad:4 (core) imports pipelines.app.demo (app); core may import core",
        "pipelines.core.bad:5 (core) imports pipelines.stores.bigtable (stores); "
        "core may import core",
        "pipelines.extra: in no layer (add its package to LAYER_OF)",
        "pipelines.transforms.sinks:1 (transforms) imports pipelines.local_runner.recovery "
        "(local_runner); transforms may import core, stores, transforms",
        "pipelines.transforms.sinks:2 (transforms) imports pipelines.local_runner "
        "(local_runner); transforms may import core, stores, transforms",
    ], found
