"""How `lightning_al.file_oracle.FileOracle` writes suggestions and reads labels, per task.

- multi-class: a class name or a class id (``dog``, ``1``);
- multi-label: the names or ids of every positive label separated by ``;`` (``cat;dog``, ``0;2``), or ``none``
  for a sample with none of them (in JSONL also a JSON list, ``[]`` for none);
- segmentation: the path of a mask file, ``.png`` (single channel: mode ``L``, ``P`` or ``I``) or ``.npy``
  (read without unpickling), relative to the oracle's directory and inside it.

Each form turns the model's predictions into ``suggested_label`` cells and one filled ``label`` into the
task's label or a problem sentence (the oracle adds the row and lists every problem at once).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_al._atomic import atomic_open
from lightning_al.tasks import MultiClass, MultiLabel, Segmentation, Task
from lightning_al.tasks.base import stack_or_list

NONE_TOKEN = "none"  # a multi-label sample with no positive label
SEPARATOR = ";"  # between the labels of a multi-label cell
MASK_SUFFIXES = (".png", ".npy")
_PNG_MODES = ("L", "P", "I", "I;16", "I;16L", "I;16B")
_INTEGER = re.compile(r"[+-]?\d+")
_LISTED_NAMES = 20  # class names spelled out in messages; more are elided

Result = tuple[Any, str | None]  # (label, None) or (None, the problem)


def as_int(value: Any) -> int | None:
    """``value`` as an int when it is one (or a string spelling one), else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        return int(value.strip())
    return None


def is_blank(value: Any) -> bool:
    """Whether a ``label`` cell is empty: None, or a string of whitespace only."""
    return value is None or (isinstance(value, str) and not value.strip())


def _listed(names: Sequence[str]) -> str:
    return ", ".join([*names[:_LISTED_NAMES], *["..."] * (len(names) > _LISTED_NAMES)])


def _shape(value: Any) -> tuple[int, ...] | str:
    return tuple(value.shape) if isinstance(value, Tensor) else f"{type(value).__name__} of {len(value)}"


def _sentence(error: ValueError) -> str:
    """An ``Expected …`` message as the middle of a problem line."""
    text = str(error)
    return text[:1].lower() + text[1:]


class LabelForm:
    """The label cells of one task: suggestions out, answers in.

    Args:
        class_names: the class (multi-label: label) names in id order, or None for ids only.
        num_classes: the number of classes (labels), or None when unknown.
    """

    hint = "`suggested_label` is the model's guess"
    studio_action = "choose a class for every task"
    multiple = False  # Label Studio: several choices per task

    def __init__(self, class_names: list[str] | None, num_classes: int | None) -> None:
        self.class_names, self.num_classes = class_names, num_classes

    def accepted(self, format: str) -> str:
        """The values a label may take, in words."""
        raise NotImplementedError

    def check_predicted(self, predicted: Any, count: int) -> None:
        """Refuse (`ValueError`) predictions that are not ``count`` class ids, a tensor of shape ``(count,)``."""
        if not isinstance(predicted, Tensor) or tuple(predicted.shape) != (count,):
            raise ValueError(f"Expected `query.predicted` to have shape {(count,)}, but got {_shape(predicted)}.")

    def suggestions(self, predicted: Any, ids: list[int], format: str, folder: Path, directory: Path) -> list[Any]:
        """One ``suggested_label`` cell per id from the model's predictions (``folder``: for suggestion files)."""
        raise NotImplementedError

    def choices(self, suggestion: Any) -> list[str] | None:
        """Label Studio's prediction choices for a suggestion cell."""
        return [suggestion] if isinstance(suggestion, str) else None

    def parse(self, value: Any, index: int) -> Result:
        """A filled (non-blank) ``label`` of id ``index`` as the task's label, or the problem with it."""
        raise NotImplementedError

    def collect(self, labels: list[Any]) -> Tensor | list[Tensor]:
        """The labels of the queried ids, in query order, as the oracle returns them."""
        raise NotImplementedError


class ClassLabels(LabelForm):
    """Multi-class: a class name or a class id."""

    def accepted(self, format: str) -> str:
        if self.class_names is not None:
            return f"a class name ({_listed(self.class_names)}) or a class id in 0..{len(self.class_names) - 1}"
        if self.num_classes is not None:
            return f"a class id in 0..{self.num_classes - 1}"
        return "a class id (an integer >= 0)"

    def suggestions(self, predicted: Any, ids: list[int], format: str, folder: Path, directory: Path) -> list[Any]:
        names = self.class_names
        return [names[g] if names is not None and 0 <= g < len(names) else g for g in predicted.tolist()]

    def parse(self, value: Any, index: int) -> Result:
        if self.class_names is not None and isinstance(value, str) and value.strip() in self.class_names:
            return self.class_names.index(value.strip()), None
        label = as_int(value)
        if label is None or label < 0 or (self.num_classes is not None and label >= self.num_classes):
            return None, f"expected the label of id {index} to be {self.accepted('')}, but got {value!r}."
        return label, None

    def collect(self, labels: list[Any]) -> Tensor:
        return torch.tensor(labels, dtype=torch.long)


class LabelSets(LabelForm):
    """Multi-label: the positive labels by name or id, ``;``-separated (or a JSON list), ``none`` for none."""

    studio_action = f"tick every label that applies in each task (`{NONE_TOKEN}` when none does)"
    multiple = True

    def __init__(self, class_names: list[str] | None, num_classes: int) -> None:
        super().__init__(class_names, num_classes)
        for position, name in enumerate(class_names or []):
            if SEPARATOR in name:
                raise ValueError(
                    f"Expected the names in `class_names` to hold no `{SEPARATOR}` (it separates the labels of a "
                    f"multi-label cell), but got {name!r} at index {position}."
                )
            if name.lower() == NONE_TOKEN:
                raise ValueError(
                    f"Expected `class_names` not to hold {NONE_TOKEN!r} (it marks a multi-label sample with no "
                    f"label), but got {name!r} at index {position}."
                )

    def accepted(self, format: str) -> str:
        count = int(self.num_classes or 0)
        what = f"ids (0..{count - 1})"
        if self.class_names is not None:
            what = f"names ({_listed(self.class_names)}) or {what}"
        example = SEPARATOR.join((self.class_names or [str(i) for i in range(count)])[:2])
        json_list = "; a JSON list also works, `[]` for none" if format == "jsonl" else ""
        return (
            f"the {what} of every label that applies, separated by `{SEPARATOR}` (e.g. `{example}`), "
            f"or `{NONE_TOKEN}` when none applies{json_list}"
        )

    def check_predicted(self, predicted: Any, count: int) -> None:
        """Refuse (`ValueError`) predictions that are not a ``(count, L)`` tensor of 0/1 labels."""
        expected = (count, self.num_classes)
        if not isinstance(predicted, Tensor) or tuple(predicted.shape) != expected:
            raise ValueError(f"Expected `query.predicted` to have shape {expected}, but got {_shape(predicted)}.")

    def _names(self, row: list[int]) -> list[Any]:
        positive = [i for i, bit in enumerate(row) if bit]
        return [self.class_names[i] for i in positive] if self.class_names is not None else positive

    def suggestions(self, predicted: Any, ids: list[int], format: str, folder: Path, directory: Path) -> list[Any]:
        rows = [self._names(row) for row in predicted.tolist()]
        if format == "jsonl":
            return rows
        return [SEPARATOR.join(map(str, row)) if row else NONE_TOKEN for row in rows]

    def choices(self, suggestion: Any) -> list[str] | None:
        return suggestion.split(SEPARATOR) if isinstance(suggestion, str) else None

    def _position(self, item: Any) -> int | None:
        if isinstance(item, str) and self.class_names is not None and item.strip() in self.class_names:
            return self.class_names.index(item.strip())
        position = as_int(item)
        return position if position is not None and 0 <= position < int(self.num_classes or 0) else None

    def parse(self, value: Any, index: int) -> Result:
        if isinstance(value, str):
            items: list[Any] = [item.strip() for item in value.split(SEPARATOR) if item.strip()]
        elif isinstance(value, list):
            items = [item.strip() if isinstance(item, str) else item for item in value]
        else:
            items = [value]
        label = torch.zeros(int(self.num_classes or 0), dtype=torch.uint8)
        unknown, repeated, seen = [], [], set()
        marked_none = any(isinstance(item, str) and item.lower() == NONE_TOKEN for item in items)
        for item in items:
            if isinstance(item, str) and item.lower() == NONE_TOKEN:
                continue
            position = self._position(item)
            if position is None:
                unknown.append(item)
            elif position in seen:
                repeated.append(item)
            else:
                seen.add(position)
                label[position] = 1
        details = []
        if unknown:
            details.append(f"not a label: {', '.join(map(repr, unknown))}")
        if repeated:
            details.append(f"given twice: {', '.join(map(repr, repeated))}")
        if marked_none and (seen or unknown or repeated):
            details.append(f"`{NONE_TOKEN}` together with labels")
        if not items and isinstance(value, str):
            details.append("no label between the separators")
        if details:
            accepted, reasons = self.accepted(""), "; ".join(details)
            return None, f"expected the labels of id {index} to be {accepted}, but got {value!r} ({reasons})."
        return label, None

    def collect(self, labels: list[Any]) -> Tensor:
        if not labels:
            return torch.zeros(0, int(self.num_classes or 0), dtype=torch.uint8)
        return torch.stack(labels)


def _palette() -> list[int]:
    """Pascal VOC's colour map: class ``c`` gets a distinct colour (0 black), so masks are visible when edited."""
    colours = []
    for index in range(256):
        rgb, value = [0, 0, 0], index
        for bit in range(8):
            for channel in range(3):
                rgb[channel] |= ((value >> channel) & 1) << (7 - bit)
            value >>= 3
        colours += rgb
    return colours


def write_mask(path: Path, mask: Tensor) -> None:
    """``mask`` as an indexed PNG (values 0..255, class id = palette index) or else an ``.npy`` file; atomic."""
    array = mask.detach().cpu().numpy()
    if path.suffix == ".png":
        from PIL import Image

        image = Image.frombytes("P", (array.shape[1], array.shape[0]), array.astype(np.uint8).tobytes())
        image.putpalette(_palette())
        with atomic_open(path, "wb") as handle:
            image.save(handle, format="PNG")
    else:
        with atomic_open(path, "wb") as handle:
            np.save(handle, array, allow_pickle=False)


def read_mask(path: Path) -> np.ndarray:
    """The array in a ``.npy`` file (never unpickled) or a single-channel PNG; ValueError saying why not."""
    if path.suffix.lower() == ".npy":
        try:
            with path.open("rb") as handle:
                array = np.load(handle, allow_pickle=False)
        except (OSError, ValueError, EOFError) as error:
            raise ValueError(f"expected a .npy array (no pickled objects), but loading it failed: {error}") from None
        if not isinstance(array, np.ndarray):
            raise ValueError("expected a .npy array, but got an .npz archive")
    else:
        from PIL import Image

        try:
            with Image.open(path) as image:
                if image.format != "PNG":
                    raise ValueError(f"expected a PNG image, but got a {image.format} image")
                if image.mode not in _PNG_MODES:
                    raise ValueError(
                        f"expected a single-channel PNG of class ids (mode L, P or I), but got mode {image.mode}; "
                        "save it as greyscale or indexed colour"
                    )
                array = np.array(image)
        except (OSError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
            raise ValueError(f"expected a PNG image, but opening it failed: {error}") from None
    if array.dtype.kind in "iu":
        return array.astype(np.int64)
    if array.dtype.kind not in "fb":
        raise ValueError(f"expected an array of integer class ids, but got dtype {array.dtype}")
    return array


class MaskFiles(LabelForm):
    """Segmentation: the path of a mask file, checked against the task and the image's size.

    Args:
        task: the segmentation task (classes, ``ignore_index``).
        class_names: the class names in id order, or None.
        directory: the oracle's directory; mask paths are relative to it and must stay inside it.
        item: the dataset item of an id, to check a mask's size against its image; None skips the check.
    """

    hint = "`suggested_label` is a file with the model's mask: correct it and point `label` to it, or use your own"

    def __init__(
        self,
        task: Segmentation,
        class_names: list[str] | None,
        directory: Path,
        item: Callable[[int], Any] | None,
    ) -> None:
        super().__init__(class_names, task.num_classes)
        self.task, self.directory, self.item = task, directory, item

    def accepted(self, format: str) -> str:
        count = int(self.num_classes or 0)
        names = ""
        if self.class_names is not None:
            named = [f"{i} {name}" for i, name in enumerate(self.class_names)]
            names = f" ({_listed(named)})"
        ignore = self.task.ignore_index
        unlabelled = f", or {ignore} for pixels left unlabelled" if ignore is not None else ""
        return (
            f"the path of its mask file ({' or '.join(MASK_SUFFIXES)}, relative to {self.directory}): an array of "
            f"the image's height and width holding class ids in 0..{count - 1}{names}{unlabelled}"
        )

    def check_predicted(self, predicted: Any, count: int) -> None:
        """Refuse (`ValueError`) predictions that are not ``count`` ``(H, W)`` masks (a tensor or a list)."""
        if isinstance(predicted, Tensor):
            masks_ok = predicted.ndim == 3 and predicted.shape[0] == count
        else:
            masks_ok = isinstance(predicted, list | tuple) and len(predicted) == count
            masks_ok = masks_ok and all(isinstance(mask, Tensor) and mask.ndim == 2 for mask in predicted)
        if not masks_ok:
            shown = _shape(predicted) if isinstance(predicted, Tensor | list | tuple) else type(predicted).__name__
            raise ValueError(f"Expected `query.predicted` to hold {count} (H, W) masks, but got {shown}.")

    def suggestions(self, predicted: Any, ids: list[int], format: str, folder: Path, directory: Path) -> list[Any]:
        cells = []
        for index, mask in zip(ids, predicted, strict=True):
            fits_png = not mask.is_floating_point() and (
                mask.numel() == 0 or 0 <= int(mask.min()) <= int(mask.max()) <= 255
            )
            path = folder / f"{index}{'.png' if fits_png else '.npy'}"
            if not (path.exists() or path.is_symlink()):  # an annotator may already be editing it
                write_mask(path, mask)
            cells.append(path.relative_to(directory).as_posix())
        return cells

    def choices(self, suggestion: Any) -> list[str] | None:
        return None

    def parse(self, value: Any, index: int) -> Result:
        if not isinstance(value, str):
            return None, f"expected the label of id {index} to be the path of a mask file, but got {value!r}."
        text = value.strip()
        given = Path(text)
        try:
            resolved = (given if given.is_absolute() else self.directory / given).resolve()
        except (OSError, ValueError) as error:  # e.g. a NUL character, a link loop
            return None, f"expected the label of id {index} to be the path of a mask file, but got {text!r} ({error})."
        if not resolved.is_relative_to(self.directory):
            return None, (
                f"expected the mask file of id {index} to stay inside `directory` {self.directory}, "
                f"but {text!r} resolves to {resolved}."
            )
        if given.suffix.lower() not in MASK_SUFFIXES:
            return None, (
                f"expected the mask file of id {index} to be a {' or '.join(MASK_SUFFIXES)} file, but got {text!r}."
            )
        if not resolved.is_file():
            return None, f"expected the mask file of id {index} to exist, but {text!r} is not a file ({resolved})."
        try:
            mask = self.task.read_label(read_mask(resolved), f"the mask of id {index}")
            if self.item is not None:
                self.task.check_fits([mask], torch.tensor([index]), self.item)
        except ValueError as error:
            return None, f"{text}: {_sentence(error)}"
        return mask, None

    def collect(self, labels: list[Any]) -> Tensor | list[Tensor]:
        return stack_or_list(labels)


def label_form(
    task: Task,
    class_names: list[str] | None,
    num_classes: int | None,
    directory: Path,
    item: Callable[[int], Any] | None,
) -> LabelForm:
    """The form of ``task``'s labels; ``class_names``/``num_classes`` (the oracle's) must agree with the task."""
    if not isinstance(task, MultiClass | MultiLabel | Segmentation):
        raise ValueError(
            "Expected `task` to be a MultiClass, MultiLabel or Segmentation task (or None for multi-class), "
            f"but got {task!r}."
        )
    if task.num_classes is not None and num_classes is not None and num_classes != task.num_classes:
        given = "`class_names`" if class_names is not None else "`num_classes`"
        noun = "labels" if isinstance(task, MultiLabel) else "classes"
        raise ValueError(
            f"Expected {given} to give the {task.num_classes} {noun} of the task {task!r}, but got {num_classes}."
        )
    if isinstance(task, MultiClass):
        return ClassLabels(class_names, num_classes if task.num_classes is None else task.num_classes)
    if isinstance(task, MultiLabel):
        return LabelSets(class_names, task.num_labels)
    return MaskFiles(task, class_names, directory, item)
