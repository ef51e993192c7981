"""Human labelling through a file: the query is written out, the run stops, the filled file is read back.

Round ``r``'s query goes to ``<directory>/<queries_dir>/round_<r>.csv`` (or ``.jsonl``) with the fields
``id`` (dataset index), ``reference`` (a file path when the dataset keeps one), ``suggested_label`` (the
model's guess), ``score`` (acquisition score, higher = queried first) and an empty ``label``. The annotator
fills ``label`` with a class name or a class id; resuming the run reads the file back, checks every row
against the query and returns all labels, or refuses the whole file with every problem listed.

With ``format="label_studio"`` the query becomes Label Studio tasks (``round_<r>.tasks.json``, the model's
guess attached as a prediction) and the answers are read from the project's JSON export, which the user
saves as ``round_<r>.export.json``.

Only CSV and JSON are read (nothing is unpickled), and every file stays inside ``directory``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from lightning_al._atomic import atomic_open
from lightning_al._validation import check_int
from lightning_al.data.pool import as_id_tensor
from lightning_al.oracles import LabelsPending, Query

COLUMNS = ("id", "reference", "suggested_label", "score", "label")
FORMATS = ("csv", "jsonl", "label_studio")
_UNIT = {"csv": "row", "jsonl": "line", "label_studio": "task"}
_INTEGER = re.compile(r"[+-]?\d+")
_LISTED_NAMES = 20  # class names spelled out in messages; more are elided


def sample_reference(dataset: Dataset, index: int) -> str:
    """A stable reference (usually a file path) to ``dataset[index]``, or ``""`` when the dataset keeps none.

    Looks through ``Subset`` wrappers, then at ``samples``/``imgs`` (torchvision ``DatasetFolder`` and
    ``ImageFolder``: ``(path, class)`` pairs) and at ``paths``/``files``/``file_paths``/``filenames``.
    """
    while isinstance(dataset, Subset):
        index, dataset = int(dataset.indices[index]), dataset.dataset
    for name in ("samples", "imgs", "paths", "files", "file_paths", "filenames"):
        items = getattr(dataset, name, None)
        if isinstance(items, Sequence) and not isinstance(items, str) and 0 <= index < len(items):
            item = items[index]
            if isinstance(item, tuple | list) and item:
                item = item[0]
            return os.fspath(item) if isinstance(item, str | os.PathLike) else str(item)
    return ""


def _write_text_atomic(path: Path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)


@dataclass(frozen=True)
class _Entry:
    """One answer as read from a file, before validation: where it sits, its raw id and label."""

    where: str
    id: Any = None
    label: Any = None
    malformed: str | None = None


def _as_int(value: Any) -> int | None:
    """``value`` as an int when it is one (or a string spelling one), else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        return int(value.strip())
    return None


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


# ----- formats: rows out, entries in ---------------------------------------------------------
def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"Expected {path} to be UTF-8 text (in a spreadsheet program: save as 'CSV UTF-8'), but {error}."
        ) from None


def _write_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")  # None is written as an empty cell
    writer.writerow(COLUMNS)
    writer.writerows([row[column] for column in COLUMNS] for row in rows)
    return buffer.getvalue()


def _read_csv(path: Path) -> list[_Entry]:
    """Rows numbered as a spreadsheet shows them (header = row 1); cells separated by ``,``, ``;`` or tab."""
    text = _read_text(path)
    delimiter = max(",;\t", key=text.split("\n", 1)[0].count)
    try:
        records = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True))
    except csv.Error as error:
        raise ValueError(f"Expected {path} to be a valid CSV file, but reading it failed: {error}.") from None
    header = [cell.strip().lower() for cell in records[0]] if records else []
    if "id" not in header or "label" not in header:
        raise ValueError(f"Expected the header row of {path} to name the columns `id` and `label`, but got {header}.")
    id_at, label_at = header.index("id"), header.index("label")
    entries = []
    for number, record in enumerate(records[1:], start=2):
        if not any(cell.strip() for cell in record):
            continue  # blank row
        where, raw_id = f"row {number}", record[id_at] if id_at < len(record) else None
        if len(record) < len(header) or any(cell.strip() for cell in record[len(header) :]):
            malformed = f"expected {len(header)} cells as in the header row, but got {len(record)}"
            entries.append(_Entry(where, raw_id, malformed=malformed))
        else:
            entries.append(_Entry(where, raw_id, record[label_at]))
    return entries


def _write_jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def _read_jsonl(path: Path) -> list[_Entry]:
    entries = []
    for number, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        where = f"line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            entries.append(_Entry(where, malformed=f"expected a JSON object, but got invalid JSON ({error.msg})"))
            continue
        if not isinstance(record, dict) or "id" not in record:
            shown = line if len(line) <= 60 else line[:57] + "..."
            entries.append(_Entry(where, malformed=f"expected a JSON object with an `id`, but got {shown}"))
            continue
        entries.append(_Entry(where, record["id"], record.get("label")))
    return entries


def _label_studio_config(class_names: Sequence[str]) -> str:
    """A Label Studio labelling config matching the tasks: one single choice among the class names."""
    choices = "".join(f"    <Choice value={quoteattr(name)}/>\n" for name in class_names)
    return (
        '<View>\n  <Header value="Sample $id"/>\n  <Text name="reference" value="$reference"/>\n'
        '  <Choices name="label" toName="reference" choice="single" showInline="true">\n'
        f"{choices}  </Choices>\n</View>\n"
    )


def _write_label_studio(rows: list[dict[str, Any]], round: int) -> str:
    """Label Studio tasks: the row under ``data`` (plus ``round``), the model's guess as a prediction."""
    tasks = []
    for row in rows:
        task: dict[str, Any] = {"data": {**{k: row[k] for k in COLUMNS if k != "label"}, "round": round}}
        if isinstance(row["suggested_label"], str):
            choice = {"choices": [row["suggested_label"]]}
            result = {"from_name": "label", "to_name": "reference", "type": "choices", "value": choice}
            task["predictions"] = [{"model_version": f"round {round}", "result": [result]}]
        tasks.append(task)
    return json.dumps(tasks, indent=1, ensure_ascii=False) + "\n"


def _read_label_studio(path: Path, round: int) -> list[_Entry]:
    """Entries from Label Studio's JSON export; tasks of other rounds (``data.round``) are skipped."""
    try:
        tasks = json.loads(_read_text(path))
    except json.JSONDecodeError as error:
        raise ValueError(
            f"Expected {path} to be Label Studio's JSON export, but it is not valid JSON: {error}."
        ) from None
    if not isinstance(tasks, list):
        raise ValueError(f"Expected {path} to be Label Studio's JSON export (a list of tasks), but got an object.")
    entries = []
    for number, task in enumerate(tasks, start=1):
        where, data = f"task {number}", task.get("data") if isinstance(task, dict) else None
        if not isinstance(data, dict) or "id" not in data:
            entries.append(_Entry(where, malformed="expected a task with `data.id`, as written by FileOracle"))
            continue
        if "round" in data and _as_int(data["round"]) != round:
            continue
        choices: set[str] = set()
        for annotation in task.get("annotations") or []:
            if isinstance(annotation, dict) and not annotation.get("was_cancelled"):
                for result in annotation.get("result") or []:
                    if isinstance(result, dict) and result.get("type") == "choices":
                        choices.update(map(str, (result.get("value") or {}).get("choices") or []))
        if len(choices) > 1:
            entries.append(_Entry(where, data["id"], malformed=f"expected one choice, but got {sorted(choices)}"))
        else:
            entries.append(_Entry(where, data["id"], next(iter(choices), None)))
    return entries


# ----- the oracle ----------------------------------------------------------------------------
class FileOracle:
    """Asks a human for labels through one file per round; implements :class:`~lightning_al.oracles.QueryOracle`.

    The first ``answer(query)`` of a round writes the query file (atomically) and raises
    :class:`~lightning_al.oracles.LabelsPending`, whose message says which file to fill and how; the loop
    saves its state and stops. After the annotator has filled every ``label``, resuming calls
    ``answer`` with the same query, which returns the labels in query order. A file with any problem
    (unknown or unqueried id, duplicate, missing label, unknown class, malformed row) is refused as a
    whole with one ``ValueError`` listing every problem; a file with no label filled yet raises
    ``LabelsPending`` again.

    Args:
        directory: root of the oracle's files (typically the run directory); nothing is written outside it.
        class_names: names of the classes in class-id order; labels may then be names or ids, and the
            model's suggestion is shown by name. Required for ``format="label_studio"``.
        num_classes: number of classes when no names are given (ids must lie in ``[0, num_classes)``).
        format: ``"csv"``, ``"jsonl"`` or ``"label_studio"``.
        dataset: the dataset the ids index into; gives each row a ``reference`` (see
            :func:`sample_reference`) and lets unknown ids be told apart from unqueried ones.
        references: one reference per dataset index (e.g. file paths), used instead of the dataset's.
        queries_dir: folder of the query files, relative to ``directory`` and inside it.
        resume_command: the command that resumes the run, quoted in the messages.
    """

    def __init__(
        self,
        directory: str,
        class_names: list[str] | None = None,
        num_classes: int | None = None,
        format: str = "csv",
        dataset: Dataset | None = None,
        references: list[str] | None = None,
        queries_dir: str = "queries",
        resume_command: str | None = None,
    ) -> None:
        if not isinstance(directory, str | os.PathLike) or not os.fspath(directory):
            raise ValueError(f"Expected `directory` to be a non-empty path, but got {directory!r}.")
        if format not in FORMATS:
            raise ValueError(f"Expected `format` to be one of {', '.join(FORMATS)}, but got {format!r}.")
        check_int("num_classes", num_classes, 1, optional=True)
        if class_names is not None:
            class_names = self._check_class_names(class_names)
            if num_classes is not None and num_classes != len(class_names):
                raise ValueError(
                    f"Expected `num_classes` to equal the {len(class_names)} `class_names`, but got {num_classes}."
                )
            num_classes = len(class_names)
        elif format == "label_studio":
            raise ValueError(
                "Expected `class_names` for `format`='label_studio' (its choices are names), but got None."
            )
        if references is not None:
            if isinstance(references, str) or not all(isinstance(r, str) for r in references):
                raise ValueError(f"Expected `references` to be a list of strings, but got {type(references).__name__}.")
            if dataset is not None and hasattr(dataset, "__len__") and len(dataset) != len(references):
                raise ValueError(
                    f"Expected `references` to hold one entry per dataset index ({len(dataset)}), "
                    f"but got {len(references)}."
                )
        if resume_command is not None and not isinstance(resume_command, str):
            raise ValueError(f"Expected `resume_command` to be a string or None, but got {resume_command!r}.")
        self.directory = Path(directory).expanduser().resolve()
        self.queries_dir = self._inside(self.directory / queries_dir, queries_dir)
        self.class_names = class_names
        self.num_classes = num_classes
        self.format = format
        self.dataset = dataset
        self.references = references
        self.resume_command = resume_command

    @staticmethod
    def _check_class_names(class_names: Any) -> list[str]:
        if isinstance(class_names, str) or not isinstance(class_names, Sequence) or not class_names:
            raise ValueError(f"Expected `class_names` to be a non-empty list of strings, but got {class_names!r}.")
        names = list(class_names)
        for index, name in enumerate(names):
            if not isinstance(name, str) or not name.strip() or name != name.strip():
                raise ValueError(
                    f"Expected `class_names` to hold non-empty names without surrounding spaces, "
                    f"but got {name!r} at index {index}."
                )
            if _as_int(name) is not None and _as_int(name) != index:
                raise ValueError(
                    f"Expected an integer-like entry of `class_names` to equal its own index (else a label "
                    f"{name!r} is ambiguous), but got {name!r} at index {index}."
                )
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"Expected `class_names` to be distinct, but got repeated names {repeated}.")
        return names

    def _inside(self, path: Path, value: Any = None) -> Path:
        """``path`` resolved (symlinks followed), refused unless it stays inside ``directory``."""
        resolved = path.resolve()
        if not resolved.is_relative_to(self.directory):
            shown = str(path) if value is None else value
            raise ValueError(
                f"Expected `queries_dir` to stay inside `directory` {self.directory}, "
                f"but {shown!r} resolves to {resolved}."
            )
        return resolved

    # ----- files -----------------------------------------------------------------------------
    def query_path(self, round: int) -> Path:
        """The file this oracle writes for ``round``'s query."""
        suffix = {"csv": ".csv", "jsonl": ".jsonl", "label_studio": ".tasks.json"}[self.format]
        return self.queries_dir / f"round_{round:03d}{suffix}"

    def answer_path(self, round: int) -> Path:
        """The file this oracle reads ``round``'s labels from (the query file itself, or Label Studio's export)."""
        if self.format == "label_studio":
            return self.queries_dir / f"round_{round:03d}.export.json"
        return self.query_path(round)

    def _reference(self, index: int) -> str:
        if self.references is not None:
            return self.references[index] if 0 <= index < len(self.references) else ""
        return sample_reference(self.dataset, index) if self.dataset is not None else ""

    @property
    def _dataset_size(self) -> int | None:
        if self.references is not None:
            return len(self.references)
        return len(self.dataset) if self.dataset is not None and hasattr(self.dataset, "__len__") else None

    def _rows(self, query: Query, ids: list[int]) -> list[dict[str, Any]]:
        predicted = query.predicted.tolist() if query.predicted is not None else [None] * len(ids)
        # scores are for reading (six significant digits); the run's history keeps them exactly
        scores = [float(f"{s:.6g}") for s in query.scores.tolist()] if query.scores is not None else [None] * len(ids)
        rows = []
        for index, guess, score in zip(ids, predicted, scores, strict=True):
            if guess is not None and self.class_names is not None and 0 <= guess < len(self.class_names):
                guess = self.class_names[guess]
            rows.append(
                {
                    "id": index,
                    "reference": self._reference(index),
                    "suggested_label": guess,
                    "score": score,
                    "label": None,
                }
            )
        return rows

    def _write(self, path: Path, query: Query, ids: list[int]) -> None:
        rows = self._rows(query, ids)
        if self.format == "csv":
            _write_text_atomic(path, _write_csv(rows))
        elif self.format == "jsonl":
            _write_text_atomic(path, _write_jsonl(rows))
        else:
            config = self._inside(self.queries_dir / "label_studio_config.xml")
            _write_text_atomic(config, _label_studio_config(self.class_names or []))
            _write_text_atomic(path, _write_label_studio(rows, query.round))

    def _read(self, path: Path, round: int) -> list[_Entry]:
        if self.format == "csv":
            return _read_csv(path)
        if self.format == "jsonl":
            return _read_jsonl(path)
        return _read_label_studio(path, round)

    # ----- messages --------------------------------------------------------------------------
    def _accepted(self) -> str:
        """The values a label may take, in words."""
        if self.class_names is not None:
            names = self.class_names[:_LISTED_NAMES] + ["..."] * (len(self.class_names) > _LISTED_NAMES)
            return f"a class name ({', '.join(names)}) or a class id in 0..{len(self.class_names) - 1}"
        if self.num_classes is not None:
            return f"a class id in 0..{self.num_classes - 1}"
        return "a class id (an integer >= 0)"

    def _instructions(self, round: int, count: int, fresh: bool) -> str:
        resume = (
            f"then resume with `{self.resume_command}`."
            if self.resume_command
            else "then run the same command again with resuming enabled."
        )
        query, answers = self.query_path(round), self.answer_path(round)
        if self.format == "label_studio":
            done = f"wrote {count} Label Studio tasks to {query}" if fresh else f"found no export at {answers} yet"
            return (
                f"Round {round} needs labels: {done}. Import {query} into a Label Studio project (labelling config: "
                f"{self.queries_dir / 'label_studio_config.xml'}), choose a class for every task, export the project "
                f"as JSON to {answers}, {resume}"
            )
        field = "column of every row" if self.format == "csv" else "field of every line"
        done = (
            f"wrote the {count} queried samples to {query}"
            if fresh
            else f"no {_UNIT[self.format]} of {query} has a label yet"
        )
        return (
            f"Round {round} needs labels: {done}. Fill the `label` {field} with {self._accepted()} "
            f"(`suggested_label` is the model's guess), save the file in place, {resume}"
        )

    # ----- answering -------------------------------------------------------------------------
    def _parse_label(self, value: Any) -> int | None:
        """The class id a filled ``label`` names, or None when it names none."""
        if self.class_names is not None and isinstance(value, str) and value.strip() in self.class_names:
            return self.class_names.index(value.strip())
        label = _as_int(value)
        if label is None or label < 0 or (self.num_classes is not None and label >= self.num_classes):
            return None
        return label

    def _check_query(self, query: Query) -> list[int]:
        if not isinstance(query, Query):
            raise TypeError(f"Expected `query` to be a Query, but got {type(query).__name__}.")
        check_int("query.round", query.round, 0)
        ids = as_id_tensor("query.ids", query.ids)
        if ids.unique().numel() != ids.numel():
            raise ValueError(f"Expected `query.ids` to be distinct, but got {ids.tolist()}.")
        for name, values in (("query.scores", query.scores), ("query.predicted", query.predicted)):
            if values is not None and tuple(values.shape) != tuple(ids.shape):
                raise ValueError(f"Expected `{name}` to have shape {tuple(ids.shape)}, but got {tuple(values.shape)}.")
        return ids.tolist()

    def _labels(self, entries: list[_Entry], ids: list[int], round: int, path: Path) -> Tensor:
        """Every entry checked against the query: labels in query order, or one error listing every problem."""
        position = {index: i for i, index in enumerate(ids)}
        labels: list[int] = [0] * len(ids)
        first_seen: dict[int, str] = {}
        problems: list[str] = []
        missing: list[str] = []  # rows without a label: an error once labelling has begun, else still pending
        foreign = filled = False  # some entry names an unqueried id; some label is written
        size = self._dataset_size
        for entry in entries:
            index = _as_int(entry.id)
            if entry.malformed is not None:
                problems.append(f"{entry.where}: {entry.malformed}.")
            elif index is None:
                problems.append(f"{entry.where}: expected `id` to be a dataset index, but got {entry.id!r}.")
            if index is None:
                continue
            if index not in position:
                if entry.malformed is None:
                    outside = size is not None and not 0 <= index < size
                    problems.append(
                        f"{entry.where}: id {index} is not a dataset index in [0, {size})."
                        if outside
                        else f"{entry.where}: id {index} was not queried in round {round}."
                    )
                    foreign = True
                continue
            if index in first_seen:
                problems.append(f"{entry.where}: id {index} is listed again (first at {first_seen[index]}).")
                continue
            first_seen[index] = entry.where
            if entry.malformed is not None:
                continue
            if _is_blank(entry.label):
                problems.append(f"{entry.where}: id {index} has no label.")
                missing.append(problems[-1])
                continue
            filled = True
            label = self._parse_label(entry.label)
            if label is None:
                accepted = self._accepted()
                problems.append(
                    f"{entry.where}: expected the label of id {index} to be {accepted}, but got {entry.label!r}."
                )
            else:
                labels[position[index]] = label
        unit = _UNIT[self.format]
        problems += [
            f"id {index} was queried in round {round} but has no {unit}." for index in ids if index not in first_seen
        ]
        if not problems:
            return torch.tensor(labels, dtype=torch.long)
        if not filled:
            if len(problems) == len(missing):
                raise LabelsPending(self._instructions(round, len(ids), fresh=False))
            problems = [problem for problem in problems if problem not in missing]  # labelling has not begun
        hint = ""
        if foreign:
            hint = f"\nIf {path.name} is left from another run or query, move it away and resume to get a fresh file."
        raise ValueError(
            f"Expected every id queried in round {round} to be labelled exactly once in {path}, but found "
            f"{len(problems)} problem{'s' * (len(problems) > 1)}; no label was applied:\n  "
            + "\n  ".join(problems)
            + hint
        )

    def answer(self, query: Query) -> Tensor:
        """``LongTensor[k]`` class ids for ``query.ids`` in order, read from the filled file.

        Raises:
            LabelsPending: the query file was just written, or nothing is labelled in it yet.
            ValueError: the file has problems (all listed, with row numbers); nothing is returned.
        """
        ids = self._check_query(query)
        if not ids:
            return torch.empty(0, dtype=torch.long)
        answers = self._inside(self.answer_path(query.round))
        if not answers.exists():
            written = self._inside(self.query_path(query.round))
            fresh = not written.exists()
            if fresh:
                self._write(written, query, ids)
            raise LabelsPending(self._instructions(query.round, len(ids), fresh=fresh))
        return self._labels(self._read(answers, query.round), ids, query.round, answers)
