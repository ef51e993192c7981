"""Human labelling through a file: the query is written out, the run stops, the filled file is read back.

Round ``r``'s query goes to ``<directory>/<queries_dir>/round_<r>.csv`` (or ``.jsonl``) with the fields
``id`` (dataset index), ``reference`` (a file path when the dataset keeps one), ``suggested_label`` (the
model's guess), ``score`` (acquisition score, higher = queried first) and an empty ``label``. The annotator
fills ``label``; resuming the run reads the file back, checks every row against the query and returns all
labels, or refuses the whole file with every problem listed. An empty ``label`` means "not labelled yet".

What ``label`` holds depends on the task (`lightning_al.tasks`; the loop hands over the datamodule's):

- multi-class (the default): a class name or a class id, e.g. ``dog`` or ``1``;
- multi-label: every label that applies, by name or id, separated by ``;`` (``cat;dog``, ``0;2``), or
  ``none`` for a sample that has none of them; in JSONL also a JSON list (``["cat", "dog"]``, ``[]``).
  ``suggested_label`` shows the model's labels the same way;
- segmentation: the path of a mask file, relative to ``directory`` and inside it: a ``.png`` of class ids
  (single channel, mode ``L``, ``P`` or ``I``) or a ``.npy`` integer array, of the image's height and width.
  The model's masks are written as indexed PNGs (``.npy`` when the ids exceed 255) to
  ``<queries_dir>/round_<r>_suggested/<id>.png``, whose paths ``suggested_label`` gives: correct one and
  point ``label`` to it. An existing suggestion file is never overwritten.

With ``format="label_studio"`` the query becomes Label Studio tasks (``round_<r>.tasks.json``, the model's
guess attached as a prediction) and the answers are read from the project's JSON export, which the user
saves as ``round_<r>.export.json``. Multi-label tasks get a ``choice="multiple"`` config with a ``none``
choice; segmentation is not supported in this format.

Only CSV, JSON, PNG and ``.npy`` files are read (nothing is unpickled), and every file stays inside
``directory``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from torch import Tensor
from torch.utils.data import Dataset, Subset

from lightning_al._atomic import atomic_open
from lightning_al._validation import check_int
from lightning_al.data.pool import as_id_tensor
from lightning_al.file_labels import NONE_TOKEN, LabelForm, as_int, is_blank, label_form
from lightning_al.oracles import Answer, LabelsPending, Query
from lightning_al.tasks import MultiClass, Segmentation, Task

COLUMNS = ("id", "reference", "suggested_label", "score", "label")
FORMATS = ("csv", "jsonl", "label_studio")
_UNIT = {"csv": "row", "jsonl": "line", "label_studio": "task"}


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


def label_studio_config(
    class_names: Sequence[str],
    multiple: bool = False,
    shown: str = '<Header value="Sample $id"/>\n  <Text name="reference" value="$reference"/>',
    to_name: str = "reference",
) -> str:
    """A Label Studio labelling config: ``shown`` (the tags that show a sample; ``to_name`` is the one labelled),
    then one choice among ``class_names``, or with ``multiple`` (multi-label) any number of them, with a ``none``
    choice for a sample that has none."""
    names = [*class_names, NONE_TOKEN] if multiple else list(class_names)
    choices = "".join(f"    <Choice value={quoteattr(name)}/>\n" for name in names)
    return (
        f"<View>\n  {shown}\n"
        f'  <Choices name="label" toName="{to_name}" choice="{"multiple" if multiple else "single"}" '
        f'showInline="true">\n{choices}  </Choices>\n</View>\n'
    )


def annotation_choices(annotation: Any) -> list[str]:
    """The choices an annotation made (``[]`` for a skipped or empty one)."""
    chosen: list[str] = []
    if isinstance(annotation, dict) and not annotation.get("was_cancelled"):
        for result in annotation.get("result") or []:
            if isinstance(result, dict) and result.get("type") == "choices":
                chosen += map(str, (result.get("value") or {}).get("choices") or [])
    return chosen


def _write_label_studio(rows: list[dict[str, Any]], round: int, form: LabelForm) -> str:
    """Label Studio tasks: the row under ``data`` (plus ``round``), the model's guess as a prediction."""
    tasks = []
    for row in rows:
        task: dict[str, Any] = {"data": {**{k: row[k] for k in COLUMNS if k != "label"}, "round": round}}
        chosen = form.choices(row["suggested_label"])
        if chosen is not None:
            choice = {"choices": chosen}
            result = {"from_name": "label", "to_name": "reference", "type": "choices", "value": choice}
            task["predictions"] = [{"model_version": f"round {round}", "result": [result]}]
        tasks.append(task)
    return json.dumps(tasks, indent=1, ensure_ascii=False) + "\n"


def _read_label_studio(path: Path, round: int, multiple: bool = False) -> list[_Entry]:
    """Entries from Label Studio's JSON export; tasks of other rounds (``data.round``) are skipped.

    A task's label is its one choice, or with ``multiple`` the list of choices that its annotations agree on.
    """
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
        if "round" in data and as_int(data["round"]) != round:
            continue
        answers: list[list[str]] = []  # the choices of each annotation that made some
        for annotation in task.get("annotations") or []:
            chosen = annotation_choices(annotation)
            answers += [chosen] * bool(chosen)
        choices = {choice for chosen in answers for choice in chosen}
        if multiple:
            distinct = sorted({tuple(sorted(set(chosen))) for chosen in answers})
            if len(distinct) > 1:
                shown = [list(chosen) for chosen in distinct]
                entries.append(
                    _Entry(where, data["id"], malformed=f"expected the annotations to agree, but got {shown}")
                )
            else:
                entries.append(_Entry(where, data["id"], answers[0] if answers else None))
        elif len(choices) > 1:
            entries.append(_Entry(where, data["id"], malformed=f"expected one choice, but got {sorted(choices)}"))
        else:
            entries.append(_Entry(where, data["id"], next(iter(choices), None)))
    return entries


def check_query(query: Query, form: LabelForm) -> list[int]:
    """The query checked against the label form: its ids as a list (distinct), its scores and predictions."""
    if not isinstance(query, Query):
        raise TypeError(f"Expected `query` to be a Query, but got {type(query).__name__}.")
    check_int("query.round", query.round, 0)
    ids = as_id_tensor("query.ids", query.ids)
    if ids.unique().numel() != ids.numel():
        raise ValueError(f"Expected `query.ids` to be distinct, but got {ids.tolist()}.")
    if query.scores is not None and tuple(query.scores.shape) != tuple(ids.shape):
        raise ValueError(
            f"Expected `query.scores` to have shape {tuple(ids.shape)}, but got {tuple(query.scores.shape)}."
        )
    if query.predicted is not None:
        form.check_predicted(query.predicted, ids.numel())
    return ids.tolist()


# ----- the oracle ----------------------------------------------------------------------------
class FileOracle:
    """Asks a human for labels through one file per round; implements `lightning_al.oracles.QueryOracle`.

    The first ``answer(query)`` of a round writes the query file (atomically) and raises
    `lightning_al.oracles.LabelsPending`, whose message says which file to fill and how; the loop
    saves its state and stops. After the annotator has filled every ``label``, resuming calls
    ``answer`` with the same query, which returns the labels in query order. A file with any problem
    (unknown or unqueried id, duplicate, missing label, unknown class, bad mask file, malformed row) is
    refused as a whole with one ``ValueError`` listing every problem; a file with no label filled yet raises
    ``LabelsPending`` again. What a label holds depends on ``task`` (see the module's description).

    Args:
        directory: root of the oracle's files (typically the run directory); nothing is written outside it.
        class_names: names of the classes (multi-label: of the labels) in class-id order; labels may then be
            names or ids, and the model's suggestion is shown by name. Required for ``format="label_studio"``.
        num_classes: number of classes when no names are given (ids must lie in ``[0, num_classes)``).
        format: ``"csv"``, ``"jsonl"`` or ``"label_studio"`` (not for segmentation).
        dataset: the dataset the ids index into; gives each row a ``reference`` (see
            `sample_reference`) and lets unknown ids be told apart from unqueried ones.
        references: one reference per dataset index (e.g. file paths), used instead of the dataset's.
        queries_dir: folder of the query files, relative to ``directory`` and inside it.
        resume_command: the command that resumes the run, quoted in the messages.
        task: what a label is (`lightning_al.tasks.MultiClass`, ``MultiLabel`` or ``Segmentation``);
            None takes the datamodule's when the loop runs, and is multi-class when the oracle is used alone.
            Segmentation masks are checked against the images' size when ``dataset`` is known.
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
        task: Task | None = None,
    ) -> None:
        if not isinstance(directory, str | os.PathLike) or not os.fspath(directory):
            raise ValueError(f"Expected `directory` to be a non-empty path, but got {directory!r}.")
        if format not in FORMATS:
            raise ValueError(f"Expected `format` to be one of {', '.join(FORMATS)}, but got {format!r}.")
        self._check_format(task, format)
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
        self.task = task
        if task is not None:
            self._form()  # refuse a task the class names do not fit now, not at the first query

    @staticmethod
    def _check_format(task: Task | None, format: str) -> None:
        if format == "label_studio" and isinstance(task, Segmentation):
            raise ValueError(
                f"Expected a multi-class or multi-label task for `format`='label_studio' (its brush masks are not "
                f"read), but got the task {task!r}. Use `format`='csv' or 'jsonl', whose `label` is a mask file."
            )

    def _form(self) -> LabelForm:
        """How this oracle's task shows suggestions and reads labels (validated against the class names)."""
        task = self.task if self.task is not None else MultiClass()
        self._check_format(task, self.format)
        item = self.dataset.__getitem__ if self.dataset is not None else None
        return label_form(task, self.class_names, self.num_classes, self.directory, item)

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
            if as_int(name) is not None and as_int(name) != index:
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

    def suggestions_dir(self, round: int) -> Path:
        """The folder of the suggestion files of ``round`` (segmentation: the model's masks)."""
        return self.queries_dir / f"round_{round:03d}_suggested"

    def _rows(self, query: Query, ids: list[int], form: LabelForm) -> list[dict[str, Any]]:
        guesses: list[Any] = [None] * len(ids)
        if query.predicted is not None:
            folder = self._inside(self.suggestions_dir(query.round))
            guesses = form.suggestions(query.predicted, ids, self.format, folder, self.directory)
        # scores are for reading (six significant digits); the run's history keeps them exactly
        scores = [float(f"{s:.6g}") for s in query.scores.tolist()] if query.scores is not None else [None] * len(ids)
        rows = []
        for index, guess, score in zip(ids, guesses, scores, strict=True):
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

    def _write(self, path: Path, query: Query, ids: list[int], form: LabelForm) -> None:
        rows = self._rows(query, ids, form)
        if self.format == "csv":
            _write_text_atomic(path, _write_csv(rows))
        elif self.format == "jsonl":
            _write_text_atomic(path, _write_jsonl(rows))
        else:
            config = self._inside(self.queries_dir / "label_studio_config.xml")
            _write_text_atomic(config, label_studio_config(self.class_names or [], form.multiple))
            _write_text_atomic(path, _write_label_studio(rows, query.round, form))

    def _read(self, path: Path, round: int, form: LabelForm) -> list[_Entry]:
        if self.format == "csv":
            return _read_csv(path)
        if self.format == "jsonl":
            return _read_jsonl(path)
        return _read_label_studio(path, round, form.multiple)

    # ----- messages --------------------------------------------------------------------------
    def _instructions(self, round: int, count: int, fresh: bool, form: LabelForm) -> str:
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
                f"{self.queries_dir / 'label_studio_config.xml'}), {form.studio_action}, export the project "
                f"as JSON to {answers}, {resume}"
            )
        field = "column of every row" if self.format == "csv" else "field of every line"
        done = (
            f"wrote the {count} queried samples to {query}"
            if fresh
            else f"no {_UNIT[self.format]} of {query} has a label yet"
        )
        return (
            f"Round {round} needs labels: {done}. Fill the `label` {field} with {form.accepted(self.format)} "
            f"({form.hint}), save the file in place, {resume}"
        )

    # ----- answering -------------------------------------------------------------------------
    def _labels(
        self, entries: list[_Entry], ids: list[int], round: int, path: Path, form: LabelForm
    ) -> Tensor | list[Tensor]:
        """Every entry checked against the query: labels in query order, or one error listing every problem."""
        position = {index: i for i, index in enumerate(ids)}
        labels: list[Any] = [None] * len(ids)
        first_seen: dict[int, str] = {}
        problems: list[str] = []
        missing: list[str] = []  # rows without a label: an error once labelling has begun, else still pending
        foreign = filled = False  # some entry names an unqueried id; some label is written
        size = self._dataset_size
        for entry in entries:
            index = as_int(entry.id)
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
            if is_blank(entry.label):
                problems.append(f"{entry.where}: id {index} has no label.")
                missing.append(problems[-1])
                continue
            filled = True
            label, problem = form.parse(entry.label, index)
            if problem is not None:
                problems.append(f"{entry.where}: {problem}")
            else:
                labels[position[index]] = label
        unit = _UNIT[self.format]
        problems += [
            f"id {index} was queried in round {round} but has no {unit}." for index in ids if index not in first_seen
        ]
        if not problems:
            return form.collect(labels)
        if not filled:
            if len(problems) == len(missing):
                raise LabelsPending(self._instructions(round, len(ids), fresh=False, form=form))
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

    def answer(self, query: Query) -> Answer:
        """The labels of ``query.ids`` in order, read from the filled file: ``LongTensor[k]`` class ids,
        a ``(k, L)`` uint8 0/1 tensor (multi-label), or ``k`` masks (segmentation: a ``(k, H, W)`` tensor, or
        a list of ``(H, W)`` tensors when the sizes differ).

        Raises:
            LabelsPending: the query file was just written, or nothing is labelled in it yet.
            ValueError: the file has problems (all listed, with row numbers); nothing is returned.
        """
        form = self._form()
        ids = check_query(query, form)
        if not ids:
            return form.collect([])
        answers = self._inside(self.answer_path(query.round))
        if not answers.exists():
            written = self._inside(self.query_path(query.round))
            fresh = not written.exists()
            if fresh:
                self._write(written, query, ids, form)
            raise LabelsPending(self._instructions(query.round, len(ids), fresh=fresh, form=form))
        return self._labels(self._read(answers, query.round, form), ids, query.round, answers, form)
