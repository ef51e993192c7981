"""MkDocs hooks: one API reference page per public module, and a strict check of the public docstrings.

Every module of ``lightning_al`` whose dotted name has no part starting with ``_`` gets a page
``reference/<dotted name>.md`` rendered by mkdocstrings, listed in the navigation under *API reference*.
Every public class, function, method and property of those modules must have a docstring (inherited
ones count) and every parameter of a public callable a type annotation; each gap is logged as a
warning, so ``mkdocs build --strict`` fails on it. ``python docs/hooks/api_reference.py`` prints the gaps.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import pkgutil
import sys
from pathlib import Path

PACKAGE = "lightning_al"
REFERENCE = "reference"
ROOT = Path(__file__).resolve().parents[2]
# Tables and figures the benchmarks write into benchmarks/results/, served under the same path.
RESULTS = "benchmarks/results"

log = logging.getLogger("mkdocs.hooks.api_reference")


def public_modules() -> list[str]:
    """The dotted names of the package's public modules, sorted, the package itself first."""
    package = importlib.import_module(PACKAGE)
    names = [PACKAGE]
    for info in pkgutil.walk_packages(package.__path__, prefix=f"{PACKAGE}."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


def _callable_gaps(qualname: str, function) -> list[str]:
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return []
    missing = [
        name
        for name, parameter in signature.parameters.items()
        if name not in ("self", "cls")
        and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
        and parameter.annotation is inspect.Parameter.empty
    ]
    return [f"{qualname}: parameter `{name}` has no type annotation" for name in missing]


def _member_gaps(module, qualname: str, member) -> list[str]:
    gaps = []
    if not inspect.getdoc(member):
        gaps.append(f"{qualname}: no docstring")
    if inspect.isfunction(member):
        gaps += _callable_gaps(qualname, member)
    return gaps


def docstring_gaps(module_name: str) -> list[str]:
    """What a public module misses: docstrings of public objects, annotations of public parameters."""
    module = importlib.import_module(module_name)
    gaps = [] if inspect.getdoc(module) else [f"{module_name}: no module docstring"]
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != module_name:
            continue
        qualname = f"{module_name}.{name}"
        if inspect.isfunction(obj):
            gaps += _member_gaps(module, qualname, obj)
        elif inspect.isclass(obj):
            gaps += [] if inspect.getdoc(obj) else [f"{qualname}: no docstring"]
            gaps += _callable_gaps(f"{qualname}.__init__", obj.__init__) if "__init__" in vars(obj) else []
            for attr, raw in vars(obj).items():
                if attr.startswith("_"):
                    continue
                member = getattr(obj, attr, raw)
                if isinstance(raw, property) or inspect.isfunction(member) or inspect.ismethod(member):
                    gaps += _member_gaps(module, f"{qualname}.{attr}", member if not isinstance(raw, property) else raw)
    return gaps


def reference_page(module_name: str) -> str:
    """The markdown of one module's reference page."""
    module = importlib.import_module(module_name)
    options = ""
    if hasattr(module, "__path__"):
        # A package re-exports what its modules define; each object is documented on its own module's page.
        options = "\n    options:\n      members: false\n"
        children = [m for m in public_modules() if m.rpartition(".")[0] == module_name]
        listing = "\n".join(f"- [`{child}`]({child}.md)" for child in children)
        return f"# `{module_name}`\n\n::: {module_name}{options}\n\n## Modules\n\n{listing}\n"
    return f"# `{module_name}`\n\n::: {module_name}\n"


def _nav_entries(modules: list[str]) -> list:
    groups: dict[str, list] = {}
    for name in modules:
        parts = name.split(".")
        group = (
            parts[1]
            if len(parts) > 2 or (len(parts) == 2 and hasattr(importlib.import_module(name), "__path__"))
            else ""
        )
        groups.setdefault(group, []).append({f"{name}": f"{REFERENCE}/{name}.md"})
    entries = list(groups.pop(""))
    entries += [{f"{PACKAGE}.{group}": items} for group, items in sorted(groups.items())]
    return entries


def on_config(config):
    """Add the API reference section to the navigation and log every docstring gap."""
    sys.path.insert(0, str(ROOT))
    modules = public_modules()
    config.nav.append({"API reference": _nav_entries(modules)})
    for name in modules:
        for gap in docstring_gaps(name):
            log.warning(gap)
    return config


def on_files(files, config):
    """Generate the reference pages and serve the benchmarks' result tables and figures."""
    from mkdocs.structure.files import File

    for name in public_modules():
        files.append(File.generated(config, f"{REFERENCE}/{name}.md", content=reference_page(name)))
    for result in sorted((ROOT / RESULTS).iterdir()):
        if result.suffix in (".md", ".png"):
            files.append(File.generated(config, f"{RESULTS}/{result.name}", abs_src_path=str(result)))
    return files


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    all_gaps = [gap for name in public_modules() for gap in docstring_gaps(name)]
    print("\n".join(all_gaps))
    print(f"{len(all_gaps)} gaps")
