"""Label Studio as a live oracle: each query becomes tasks in a project, the annotations come back as labels.

Round ``r``'s query is pushed as one task per dataset id, whose ``data`` holds ``dataset_id``, ``round``,
``score`` (the acquisition score, higher = queried first) and the sample: an image inlined as a PNG data
URL (it shows with no file serving configured) or a text. The model's guess is attached as a prediction
whose ``score`` is the acquisition score, so annotators sort the Data Manager by prediction score (a view
"By acquisition score" is created with the project) and accept a suggestion in one click.

Pushing is idempotent: a task is keyed by ``(dataset_id, round)``; before pushing, the project's tasks are
looked up and only missing ones are created, and a marker ``<directory>/label_studio/round_<r>.json`` is
written once the whole query is in the project. A run killed between pushing and saving its state therefore
never creates duplicates on resume. Once the marker exists, a task missing from the project was deleted by
a user: its sample returns to the unlabelled pool.

Pulling reads the project's export, maps tasks back by ``dataset_id`` and checks every annotation before
returning anything (unknown choices, disagreeing annotations, malformed results are listed together in one
``ValueError``; nothing is applied). Policies:

- ``on_disagreement``: several annotations of one task that differ. ``"majority"`` takes the most common
  answer (a tie is a problem to resolve in Label Studio), ``"latest"`` the most recently updated one,
  ``"error"`` refuses any disagreement.
- ``on_skipped``: a task whose annotations are all skipped (cancelled). ``"drop"`` returns the sample to the
  unlabelled pool unlabelled (a later round may query it again, as a new task); ``"requeue"`` keeps the task
  waiting for an annotator who labels it.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_al._atomic import atomic_open
from lightning_al.file_labels import LabelForm, is_blank, label_form
from lightning_al.file_oracle import annotation_choices, check_query, label_studio_config
from lightning_al.label_studio.client import LabelStudioClient, LabelStudioError
from lightning_al.oracles import Answer, LabelsPending, PartialLabels, Query
from lightning_al.tasks import MultiClass, Segmentation, Task

INPUTS = ("image", "text")
DISAGREEMENT = ("majority", "latest", "error")
SKIPPED = ("drop", "requeue")
TOKEN_ENV = "LABEL_STUDIO_API_KEY"
IMPORT_CHUNK = 1000  # tasks per import request
SCORE_VIEW = "By acquisition score"  # the Data Manager view created with a project


def _choose(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"Expected `{name}` to be one of {', '.join(allowed)}, but got {value!r}.")
    return value


def image_data_url(image: Any, shape: list[int] | None = None) -> str:
    """An image as a PNG data URL: a PIL image, or an array/tensor ``(H, W)``, ``(1|3, H, W)`` or ``(H, W, 3)``
    (``shape`` first reshapes a flat one); values are scaled to 0..255 by the image's own range."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        array = image.detach().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image)
        if shape is not None:
            array = array.reshape(shape)
        if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
            array = np.moveaxis(array, 0, -1)
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim not in (2, 3):
            raise ValueError(
                f"Expected an image of shape (H, W), (C, H, W) or (H, W, C), but got shape {tuple(array.shape)}; "
                "pass `image_shape` to reshape a flat input."
            )
        array = array.astype(np.float64)
        low, high = float(array.min()), float(array.max())
        array = (array - low) / (high - low) * 255 if high > low else np.zeros_like(array)
        image = Image.fromarray(array.round().astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


class LabelStudioOracle:
    """Labels queries through a live Label Studio project; implements `lightning_al.oracles.QueryOracle`.

    With ``wait=False`` (the default) the first ``answer`` of a round pushes the tasks and raises
    `lightning_al.oracles.LabelsPending`; the loop saves and stops, and resuming pulls the annotations.
    With ``wait=True`` it polls the project every ``poll_interval`` seconds, printing progress, until every task
    is annotated (then returns the labels) or ``timeout`` seconds pass (then it stops like ``wait=False``).
    See the module's description for idempotency and the policies.

    Args:
        url: the Label Studio server, e.g. ``http://localhost:8080``.
        class_names: the classes (multi-label: the labels) in class-id order; the choices of the config.
        project: an existing project's id, or a title: the project of that title, created on first use with a
            labelling config built from ``class_names`` and ``input``.
        token: a personal access token or legacy API token; None reads the environment variable
            ``LABEL_STUDIO_API_KEY`` (keeps it out of configs). Never logged or saved.
        input: ``"image"`` or ``"text"``: how a sample is shown.
        input_key: where the input sits in a dataset item (tuple index or dict key).
        image_shape: reshape a flat input to this shape before drawing it (e.g. ``[8, 8]``).
        references: one value per dataset index shown instead of the item's input: the texts, or image URLs.
        wait: poll until the round is annotated instead of stopping the run.
        poll_interval: seconds between polls with ``wait``.
        timeout: with ``wait``, seconds after which the run stops with the labels pending; None waits forever.
        on_disagreement: ``"majority"``, ``"latest"`` or ``"error"``.
        on_skipped: ``"drop"`` or ``"requeue"``.
        directory: where the push markers go (``<directory>/label_studio/``); the loop sets its
            ``output_dir`` when None.
        request_timeout: seconds per HTTP request.
        retries: retries of transient failures (unreachable, timeout, 429/5xx), with exponential backoff.
        backoff: the first retry's wait in seconds.
        resume_command: the command that resumes the run, quoted in messages.
        dataset: the dataset the ids index into; the loop sets its training set when None.
        task: the task of the labels (multi-class or multi-label); the loop sets the datamodule's when None.
    """

    def __init__(
        self,
        url: str,
        class_names: list[str],
        project: int | str = "lightning_al",
        token: str | None = None,
        input: str = "image",
        input_key: int | str = 0,
        image_shape: list[int] | None = None,
        references: list[str] | None = None,
        wait: bool = False,
        poll_interval: float = 10.0,
        timeout: float | None = None,
        on_disagreement: str = "majority",
        on_skipped: str = "drop",
        directory: str | None = None,
        request_timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        resume_command: str | None = None,
        dataset: Dataset | None = None,
        task: Task | None = None,
    ) -> None:
        self.input = _choose("input", input, INPUTS)
        self.on_disagreement = _choose("on_disagreement", on_disagreement, DISAGREEMENT)
        self.on_skipped = _choose("on_skipped", on_skipped, SKIPPED)
        if isinstance(class_names, str) or not class_names or not all(isinstance(n, str) for n in class_names):
            raise ValueError(f"Expected `class_names` to be a non-empty list of strings, but got {class_names!r}.")
        if (
            isinstance(project, bool)
            or not isinstance(project, int | str)
            or (isinstance(project, str) and len(project.strip()) < 3)
        ):
            raise ValueError(f"Expected `project` to be a project id or a title of 3+ characters, but got {project!r}.")
        if poll_interval <= 0 or (timeout is not None and timeout < 0):
            raise ValueError(
                f"Expected `poll_interval` > 0 and `timeout` >= 0 or None, but got {poll_interval!r} and {timeout!r}."
            )
        self.client = LabelStudioClient(url, token or os.environ.get(TOKEN_ENV, ""), request_timeout, retries, backoff)
        self.retries, self.backoff = retries, backoff
        self.url = self.client.url
        self.class_names = list(class_names)
        self.project = project
        self.input_key = input_key
        self.image_shape = image_shape
        self.references = references
        self.wait, self.poll_interval, self.timeout = wait, poll_interval, timeout
        self.directory = directory
        self.resume_command = resume_command
        self.dataset = dataset
        self.task = task
        self._project_id: int | None = None
        self._pushed_rounds: set[int] = set()  # rounds pushed, when no `directory` keeps the markers
        self._check_task()

    def __repr__(self) -> str:
        return f"LabelStudioOracle(url={self.url!r}, project={self.project!r}, token=<hidden>)"

    def _check_task(self) -> None:
        if isinstance(self.task, Segmentation):
            raise ValueError(
                f"Expected a multi-class or multi-label task for LabelStudioOracle, but got {self.task!r}; "
                "label masks with FileOracle (a mask file per sample)."
            )

    def _form(self) -> LabelForm:
        self._check_task()
        task = self.task if self.task is not None else MultiClass()
        return label_form(task, self.class_names, len(self.class_names), Path("."), None)

    # ----- the project ---------------------------------------------------------------------
    def labelling_config(self, multiple: bool) -> str:
        """The project's labelling config: the sample, its id, and the class choices (several with ``multiple``)."""
        tag = "Image" if self.input == "image" else "Text"
        shown = f'<Header value="Sample $dataset_id (score $score)"/>\n  <{tag} name="sample" value="${self.input}"/>'
        return label_studio_config(self.class_names, multiple, shown=shown, to_name="sample")

    def project_id(self, multiple: bool = False) -> int:
        """The project's id: the given one, or the project titled ``project``.

        A missing project is created with the config of `labelling_config` (several choices with ``multiple``).
        """
        if self._project_id is not None:
            return self._project_id
        if isinstance(self.project, int):
            self.client.request("GET", f"/api/projects/{self.project}/")
            self._project_id = self.project
            return self._project_id
        page = 1
        while True:
            answer = self.client.request("GET", "/api/projects/", params={"page": page, "page_size": 100})
            for item in answer.get("results", []):
                if item.get("title") == self.project:
                    self._project_id = int(item["id"])
                    return self._project_id
            if not answer.get("next"):
                break
            page += 1
        created = self.client.request(
            "POST", "/api/projects/", json={"title": self.project, "label_config": self.labelling_config(multiple)}
        )
        self._project_id = int(created["id"])
        view = {"title": SCORE_VIEW, "ordering": ["-tasks:predictions_score"], "type": "list"}
        with contextlib.suppress(LabelStudioError):  # a convenience: sorting by prediction score works without it
            self.client.request("POST", "/api/dm/views/", json={"project": self._project_id, "data": view})
        return self._project_id

    def project_url(self) -> str:
        """The project's page in Label Studio (its "By acquisition score" view when it has one)."""
        project = self.project_id()
        with contextlib.suppress(LabelStudioError, TypeError, KeyError):
            for view in self.client.request("GET", "/api/dm/views/", params={"project": project}) or []:
                if (view.get("data") or {}).get("title") == SCORE_VIEW:
                    return f"{self.url}/projects/{project}/data?tab={view['id']}"
        return f"{self.url}/projects/{project}/data"

    def round_tasks(self, round: int) -> dict[int, list[dict[str, Any]]]:
        """The project's tasks of ``round`` by dataset id, with their annotations (from the JSON export)."""
        tasks = self.client.request(
            "GET",
            f"/api/projects/{self.project_id()}/export",
            params={"exportType": "JSON", "download_all_tasks": "true"},
        )
        found: dict[int, list[dict[str, Any]]] = {}
        for task in tasks or []:
            data = task.get("data") or {}
            if data.get("round") == round and isinstance(data.get("dataset_id"), int):
                found.setdefault(data["dataset_id"], []).append(task)
        return found

    # ----- pushing -------------------------------------------------------------------------
    def _marker(self, round: int) -> Path | None:
        if self.directory is None:
            return None
        return Path(self.directory) / "label_studio" / f"round_{round:03d}.json"

    def _pushed(self, round: int) -> bool:
        marker = self._marker(round)
        if marker is None:
            return round in self._pushed_rounds
        if not marker.exists():
            return False
        record = json.loads(marker.read_text())
        if record.get("url") != self.url:
            return False
        self._project_id = self._project_id or int(record["project"])
        return True

    def _mark_pushed(self, round: int, count: int) -> None:
        marker = self._marker(round)
        if marker is None:
            self._pushed_rounds.add(round)
            return
        with atomic_open(marker, "w") as handle:
            json.dump({"url": self.url, "project": self.project_id(), "round": round, "tasks": count}, handle)

    def _sample(self, index: int) -> str:
        if self.references is not None:
            return self.references[index]
        if self.dataset is None:
            raise ValueError("Expected the oracle to know the dataset (or `references`) to show samples, but got None.")
        value = self.dataset[index][self.input_key]
        if self.input == "text":
            return value if isinstance(value, str) else str(value)
        return value if isinstance(value, str) else image_data_url(value, self.image_shape)

    def _task(self, query: Query, position: int, index: int, suggestion: Any, form: LabelForm) -> dict[str, Any]:
        score = float(query.scores[position]) if query.scores is not None else None
        data = {"dataset_id": index, "round": query.round, "score": score, self.input: self._sample(index)}
        task: dict[str, Any] = {"data": data}
        chosen = form.choices(suggestion) if suggestion is not None else None
        if chosen:
            result = {"from_name": "label", "to_name": "sample", "type": "choices", "value": {"choices": chosen}}
            prediction = {"model_version": f"lightning_al round {query.round}", "result": [result]}
            if score is not None:
                prediction["score"] = score
            task["predictions"] = [prediction]
        return task

    def push(self, query: Query, ids: list[int], form: LabelForm) -> int:
        """Create the tasks of ``query`` the project lacks; returns how many were created.

        ``ids`` are the queried dataset ids (``query.ids`` as a list) and ``form`` the task's `LabelForm`, which
        turns the model's predictions into the tasks' suggestions.
        """
        project = self.project_id(form.multiple)
        suggestions: list[Any] = [None] * len(ids)
        if query.predicted is not None:
            suggestions = form.suggestions(query.predicted, ids, "label_studio", Path("."), Path("."))
        created, present = 0, self.round_tasks(query.round)
        for start in range(0, len(ids), IMPORT_CHUNK):
            chunk = range(start, min(start + IMPORT_CHUNK, len(ids)))
            for attempt in range(self.retries + 1):
                tasks = [self._task(query, i, ids[i], suggestions[i], form) for i in chunk if ids[i] not in present]
                if not tasks:
                    break
                try:
                    self.client.request("POST", f"/api/projects/{project}/import", json=tasks)
                    created += len(tasks)
                    break
                except LabelStudioError:
                    if attempt == self.retries:
                        raise
                    time.sleep(self.backoff * 2**attempt)
                    present = self.round_tasks(query.round)  # the failed import may have landed: look again
        self._mark_pushed(query.round, len(ids))
        return created

    # ----- pulling -------------------------------------------------------------------------
    def _answer_of(self, task: dict[str, Any]) -> tuple[str, Any]:
        """``("skipped", None)``, ``("pending", None)``, ``("answer", choices)`` or ``("problem", text)``."""
        annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict)]
        made = [a for a in annotations if not a.get("was_cancelled")]
        if not annotations:
            return "pending", None
        if not made:
            return ("skipped", None) if self.on_skipped == "drop" else ("pending", None)
        answers = [tuple(sorted(set(annotation_choices(a)))) for a in made]
        distinct = Counter(answers)
        if len(distinct) == 1:
            return "answer", list(answers[0])
        shown = sorted(list(answer) for answer in distinct)
        if self.on_disagreement == "latest":
            latest = max(made, key=lambda a: str(a.get("updated_at") or a.get("created_at") or ""))
            return "answer", sorted(set(annotation_choices(latest)))
        (top, count), *rest = distinct.most_common()
        if self.on_disagreement == "majority" and rest[0][1] < count:
            return "answer", list(top)
        rule = "a majority" if self.on_disagreement == "majority" else "agreement (on_disagreement='error')"
        return "problem", f"its annotations disagree ({shown}) with no {rule}"

    def _collect(
        self, found: dict[int, list[dict[str, Any]]], ids: list[int], round: int, form: LabelForm
    ) -> tuple[list[int], list[Any], list[int], list[int]]:
        """Answered ids and labels, pending ids, returned ids (skipped or deleted); raises listing every problem."""
        answered, labels, pending, returned, problems = [], [], [], [], []
        for index in ids:
            tasks = found.get(index)
            if not tasks:
                returned.append(index)  # deleted after the push
                continue
            task = max(tasks, key=lambda t: len(t.get("annotations") or []))
            kind, value = self._answer_of(task)
            where = f"task {task.get('id')} (dataset id {index})"
            if kind == "pending":
                pending.append(index)
            elif kind == "skipped":
                returned.append(index)
            elif kind == "problem":
                problems.append(f"{where}: {value}.")
            else:
                cell = value if form.multiple else (value[0] if len(value) == 1 else value)
                if is_blank(cell) or (not form.multiple and len(value) != 1):
                    problems.append(f"{where}: expected one choice, but got {value}.")
                    continue
                label, problem = form.parse(cell, index)
                if problem is not None:
                    problems.append(f"{where}: {problem}")
                else:
                    answered.append(index)
                    labels.append(label)
        if problems:
            raise ValueError(
                f"Expected every annotated task of round {round} in {self.project_url()} to give a label, but found "
                f"{len(problems)} problem{'s' * (len(problems) > 1)}; no label was applied:\n  " + "\n  ".join(problems)
            )
        return answered, labels, pending, returned

    def _pending_message(self, round: int, total: int, pending: int, pushed: int | None) -> str:
        resume = f"`{self.resume_command}`" if self.resume_command else "the same command with resuming enabled"
        done = f"pushed {pushed} tasks to" if pushed is not None else f"{total - pending} of {total} tasks answered in"
        return (
            f"Round {round} needs labels: {done} {self.project_url()} (sort by prediction score: the acquisition "
            f"score). Annotate them in Label Studio, then run {resume}."
        )

    def answer(self, query: Query) -> Answer:
        """The labels of ``query.ids``; `lightning_al.oracles.PartialLabels` when some were skipped or
        deleted (those return to the pool).

        Raises:
            LabelsPending: the tasks were just pushed, or some are not annotated yet (after ``timeout`` with ``wait``).
            ValueError: some annotations have problems (all listed); nothing is returned.
            LabelStudioError: the server is unreachable, refused the token, or failed (after retries).
        """
        form = self._form()
        ids = check_query(query, form)
        if not ids:
            return form.collect([])
        pushed = None
        if not self._pushed(query.round):
            pushed = self.push(query, ids, form)
            if pushed and not self.wait:  # nothing new (pushed before a crash): what is annotated counts now
                raise LabelsPending(self._pending_message(query.round, len(ids), len(ids), pushed))
        started = time.monotonic()
        while True:
            answered, labels, pending, returned = self._collect(self.round_tasks(query.round), ids, query.round, form)
            if not pending:
                break
            waited = time.monotonic() - started
            if not self.wait or (self.timeout is not None and waited >= self.timeout):
                raise LabelsPending(self._pending_message(query.round, len(ids), len(pending), None))
            print(
                f"[lightning_al] Label Studio round {query.round}: {len(ids) - len(pending)}/{len(ids)} annotated "
                f"({waited:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
            time.sleep(self.poll_interval if self.timeout is None else min(self.poll_interval, self.timeout - waited))
        if not returned:
            return form.collect(labels)
        return PartialLabels(torch.tensor(answered, dtype=torch.long), form.collect(labels))
