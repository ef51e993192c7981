"""The Lightning namespace of a run: ``lightning.pytorch`` (the unified ``lightning`` package) or ``pytorch_lightning``.

Both packages ship the same classes under two names, and a Trainer of one accepts only modules of
its own. This module is the only place that imports Lightning by package name:

- `namespace_of` reads the namespace from the user's model (the class it derives from);
  the loop then builds every Trainer and wrapper module from that `Namespace`.
- `Callback` and `LightningDataModule` are the bases of the library's own callbacks and
  datamodule: they derive from the class of every installed namespace, so one instance works in a
  Trainer of either.
- `check_same_namespace` refuses the user's callbacks and loggers of the other namespace.

Packages are detected with ``lightning_utilities.core.imports.module_available``, as Lightning's own
ecosystem packages do.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from lightning_utilities.core.imports import module_available

UNIFIED, STANDALONE = "lightning.pytorch", "pytorch_lightning"


@dataclass(frozen=True)
class Namespace:
    """One installed Lightning package, ``name`` (e.g. ``"pytorch_lightning"``); its classes as attributes
    (``Trainer``, ``LightningModule``, ...)."""

    name: str

    @functools.cached_property
    def package(self) -> ModuleType:
        """The imported package."""
        return importlib.import_module(self.name)

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("_"):
            raise AttributeError(attribute)
        return getattr(self.package, attribute)

    def get_class(self, path: str) -> type:
        """A class by its path in the package, e.g. ``"Trainer"``, ``"loggers.WandbLogger"``."""
        module, _, name = path.rpartition(".")
        return getattr(importlib.import_module(f"{self.name}.{module}" if module else self.name), name)

    def __repr__(self) -> str:
        return self.name


@functools.cache
def installed() -> tuple[Namespace, ...]:
    """The installed namespaces, ``pytorch_lightning`` first (the library's own dependency)."""
    found = tuple(Namespace(name) for name in (STANDALONE, UNIFIED) if module_available(name))
    if not found:
        raise ModuleNotFoundError("Expected `pytorch_lightning` or `lightning` to be installed, but found neither.")
    return found


def get(name: str) -> Namespace:
    """The installed namespace called ``name`` (``"lightning.pytorch"``, ``"lightning"`` or ``"pytorch_lightning"``)."""
    name = UNIFIED if name == "lightning" else name
    for namespace in installed():
        if namespace.name == name:
            return namespace
    names = [namespace.name for namespace in installed()]
    raise ValueError(f"Expected a Lightning namespace among the installed {names}, but got {name!r}.")


def default() -> Namespace:
    """The first installed namespace (``pytorch_lightning`` when both are)."""
    return installed()[0]


def classes(path: str) -> tuple[type, ...]:
    """The class at ``path`` (see `Namespace.get_class`) of every installed namespace, for ``isinstance``."""
    return tuple(ns.get_class(path) for ns in installed())


def _owners(obj: Any, class_name: str) -> list[Namespace]:
    """The namespaces whose ``class_name`` (e.g. ``"Callback"``) ``obj`` is an instance (or subclass) of."""
    cls = obj if isinstance(obj, type) else type(obj)
    return [ns for ns in installed() if issubclass(cls, ns.get_class(class_name))]


def namespace_of(obj: Any, argument: str = "model", class_name: str = "LightningModule") -> Namespace:
    """The namespace of ``obj`` (an instance or a class): the package whose ``class_name`` it derives from.

    Raises:
        TypeError: ``obj`` is no ``class_name`` of any installed namespace.
    """
    owners = _owners(obj, class_name)
    if not owners:
        names = " or ".join(f"`{ns.name}.{class_name}`" for ns in installed())
        kind = obj.__name__ if isinstance(obj, type) else type(obj).__name__
        raise TypeError(f"Expected `{argument}` to be a {names}, but got {kind}.")
    return owners[0]


def check_same_namespace(namespace: Namespace, objects: Any, argument: str, class_name: str) -> None:
    """Refuse objects in ``objects`` (one or a list) that are a ``class_name`` of another namespace only.

    Example: a ``pytorch_lightning`` ``ModelCheckpoint`` among the callbacks of a ``lightning.pytorch``
    model; Lightning would silently ignore it as a checkpoint callback and add its own.
    """
    items = objects if isinstance(objects, list | tuple) else [objects]
    for item in items:
        if item is None or isinstance(item, bool):
            continue
        owners = _owners(item, class_name)
        if owners and namespace not in owners:
            raise TypeError(
                f"Expected every entry of `{argument}` to be a `{namespace.name}` {class_name} like the model, "
                f"but got {type(item).__name__} from `{owners[0].name}`. Import both from one package: "
                f"`{namespace.name}` (the model's) or `{owners[0].name}`, not both."
            )


def _union(class_name: str, name: str, doc: str, namespace: dict[str, Any] | None = None) -> type:
    bases = classes(class_name)
    return type(name, bases, {"__doc__": doc, "__module__": __name__, **(namespace or {})})


# The library's own callbacks derive from this: a Callback of every installed namespace.
Callback = _union("Callback", "Callback", "A Lightning ``Callback`` of every installed namespace.")

# The library's datamodule derives from this. The dataloader hooks that only some datamodules define are
# None here, so that neither namespace's Trainer takes the other's base implementation for an override.
LightningDataModule = _union(
    "LightningDataModule",
    "LightningDataModule",
    "A ``LightningDataModule`` of every installed namespace.",
    {"val_dataloader": None, "test_dataloader": None, "predict_dataloader": None},
)


@functools.cache
def subclass(mixin: type, namespace: Namespace, class_name: str = "LightningModule") -> type:
    """``mixin`` on top of ``namespace``'s ``class_name``: the library's wrapper modules and loggers, per namespace."""
    return type(mixin.__name__, (mixin, namespace.get_class(class_name)), {"__module__": mixin.__module__})
