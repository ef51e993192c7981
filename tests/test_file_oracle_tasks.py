"""FileOracle on the multi-label and segmentation tasks: label sets and mask files written, filled, read back."""

from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

import lightning_al as al
from lightning_al.datasets import Shapes
from lightning_al.file_oracle import COLUMNS, FileOracle
from lightning_al.models import MultiLabelMLP, SmallUNet
from lightning_al.oracles import LabelsPending, Query
from lightning_al.strategies import Entropy
from lightning_al.tasks import MultiLabel, Segmentation

NAMES = ["cat", "dog", "bird"]
TRAINER = dict(max_epochs=1, accelerator="cpu", enable_progress_bar=False)
# Round 2 asks for ids 4, 1, 9; the model saw cat and dog, nothing, and bird.
LABEL_QUERY = Query(
    round=2,
    ids=torch.tensor([4, 1, 9]),
    scores=torch.tensor([0.75, 0.5, 0.25], dtype=torch.float64),
    predicted=torch.tensor([[1, 1, 0], [0, 0, 0], [0, 0, 1]], dtype=torch.uint8),
)


def ask(oracle: FileOracle, query: Query) -> str:
    with pytest.raises(LabelsPending) as stop:
        oracle.answer(query)
    return str(stop.value)


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def fill(path: Path, labels: dict[int, str]) -> None:
    """Write ``labels`` into the `label` column, as a person editing the file would."""
    rows = read_rows(path)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(COLUMNS))
        writer.writeheader()
        writer.writerows({**row, "label": labels.get(int(row["id"]), "")} for row in rows)


def refusal(oracle: FileOracle, query: Query) -> list[str]:
    """The problems listed when ``oracle`` refuses the filled file."""
    with pytest.raises(ValueError) as refused:
        oracle.answer(query)
    head, *listed = str(refused.value).split("\n  ")
    assert head.endswith("no label was applied:")
    return listed


# ----- multi-label ---------------------------------------------------------------------------
def test_multilabel_round_trip_by_names_ids_and_none(tmp_path: Path) -> None:
    oracle = FileOracle(str(tmp_path), class_names=NAMES, task=MultiLabel(3))
    message = ask(oracle, LABEL_QUERY)
    path = oracle.query_path(2)
    rows = read_rows(path)
    assert [row["suggested_label"] for row in rows] == ["cat;dog", "none", "bird"]
    assert "separated by `;` (e.g. `cat;dog`)" in message and "`none` when none applies" in message
    # names and ids mixed, spaces and a trailing separator tolerated; rows in any order
    fill(path, {9: "dog; bird;", 4: "cat;2", 1: "NONE"})
    labels = oracle.answer(LABEL_QUERY)
    assert labels.dtype == torch.uint8
    assert labels.tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 1]]

    by_id = FileOracle(str(tmp_path / "ids"), task=MultiLabel(3))
    ask(by_id, LABEL_QUERY)
    assert [row["suggested_label"] for row in read_rows(by_id.query_path(2))] == ["0;1", "none", "2"]
    fill(by_id.query_path(2), {4: "0;1;2", 1: "1", 9: "none"})
    assert by_id.answer(LABEL_QUERY).tolist() == [[1, 1, 1], [0, 1, 0], [0, 0, 0]]


def test_multilabel_jsonl_takes_lists_and_strings(tmp_path: Path) -> None:
    oracle = FileOracle(str(tmp_path), class_names=NAMES, format="jsonl", task=MultiLabel(3))
    assert "a JSON list also works, `[]` for none" in ask(oracle, LABEL_QUERY)
    path = oracle.query_path(2)
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [record["suggested_label"] for record in records] == [["cat", "dog"], [], ["bird"]]
    answers = {4: ["bird", 0], 1: [], 9: "dog;bird"}
    path.write_text("".join(json.dumps({**r, "label": answers[r["id"]]}) + "\n" for r in records), encoding="utf-8")
    assert oracle.answer(LABEL_QUERY).tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 1]]
    answers = {4: ["cat", True], 1: 2.0, 9: ["none"]}
    path.write_text("".join(json.dumps({**r, "label": answers[r["id"]]}) + "\n" for r in records), encoding="utf-8")
    listed = refusal(oracle, LABEL_QUERY)
    assert [line.split(": expected")[0] for line in listed] == ["line 1", "line 2"]
    assert listed[0].endswith("but got ['cat', True] (not a label: True).")


def test_multilabel_bad_labels_refused_with_every_problem_listed(tmp_path: Path) -> None:
    query = Query(round=0, ids=torch.arange(6))
    oracle = FileOracle(str(tmp_path), class_names=NAMES, task=MultiLabel(3))
    ask(oracle, query)
    path = oracle.query_path(0)
    fill(path, {0: "cat;dgo", 1: "dog;1", 2: "none;bird", 3: "3;-1", 4: " ; ", 5: "cat,dog"})
    before = path.read_bytes()
    accepted = (
        "the names (cat, dog, bird) or ids (0..2) of every label that applies, separated by `;` (e.g. `cat;dog`), "
        "or `none` when none applies"
    )
    assert refusal(oracle, query) == [
        f"row 2: expected the labels of id 0 to be {accepted}, but got 'cat;dgo' (not a label: 'dgo').",
        f"row 3: expected the labels of id 1 to be {accepted}, but got 'dog;1' (given twice: '1').",
        f"row 4: expected the labels of id 2 to be {accepted}, but got 'none;bird' (`none` together with labels).",
        f"row 5: expected the labels of id 3 to be {accepted}, but got '3;-1' (not a label: '3', '-1').",
        f"row 6: expected the labels of id 4 to be {accepted}, but got ' ; ' (no label between the separators).",
        f"row 7: expected the labels of id 5 to be {accepted}, but got 'cat,dog' (not a label: 'cat,dog').",
    ]
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(class_names=["cat", "a;b"]), r"to hold no `;` .* but got 'a;b' at index 1\."),
        (dict(class_names=["cat", "None"]), r"not to hold 'none' .* but got 'None' at index 1\."),
        (dict(class_names=NAMES, task=MultiLabel(4)), r"`class_names` to give the 4 labels of the task MultiLabel"),
        (dict(num_classes=2, task=MultiLabel(3)), r"`num_classes` to give the 3 labels of the task MultiLabel"),
        (dict(task="multilabel"), r"`task` to be a MultiClass, MultiLabel or Segmentation task"),
    ],
)
def test_multilabel_arguments_checked(tmp_path: Path, kwargs: dict, match: str) -> None:
    kwargs.setdefault("task", MultiLabel(2))
    with pytest.raises(ValueError, match=match):
        FileOracle(str(tmp_path), **kwargs)


def test_multilabel_label_studio_multiple_choices(tmp_path: Path) -> None:
    oracle = FileOracle(str(tmp_path), class_names=NAMES, format="label_studio", task=MultiLabel(3))
    assert "tick every label that applies in each task" in ask(oracle, LABEL_QUERY)
    config = (oracle.queries_dir / "label_studio_config.xml").read_text(encoding="utf-8")
    assert 'choice="multiple"' in config and '<Choice value="none"/>' in config
    tasks = json.loads(oracle.query_path(2).read_text(encoding="utf-8"))
    assert [t["predictions"][0]["result"][0]["value"]["choices"] for t in tasks] == [["cat", "dog"], ["none"], ["bird"]]

    def exported(task: dict, *annotations: list[str]) -> dict:
        results = [{"result": [{"type": "choices", "value": {"choices": list(c)}}]} for c in annotations]
        return {"data": task["data"], "annotations": results}

    export = [exported(tasks[0], ["cat", "bird"], ["bird", "cat"]), exported(tasks[1], ["none"])]
    oracle.answer_path(2).write_text(json.dumps([*export, exported(tasks[2], ["dog"])]), encoding="utf-8")
    assert oracle.answer(LABEL_QUERY).tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0]]
    oracle.answer_path(2).write_text(json.dumps([*export, exported(tasks[2], ["dog"], ["cat"])]), encoding="utf-8")
    assert refusal(oracle, LABEL_QUERY) == ["task 3: expected the annotations to agree, but got [['cat'], ['dog']]."]


# ----- segmentation --------------------------------------------------------------------------
SHAPES = Shapes(24, size=8, seed=0)
MASKS = SHAPES.tensors[1]  # (24, 8, 8) long, outlines 255
MASK_QUERY = Query(round=0, ids=torch.tensor([3, 5, 7]), predicted=torch.zeros(3, 8, 8, dtype=torch.uint8))


def save_png(path: Path, mask: torch.Tensor, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.numpy().astype(np.uint8)).convert(mode).save(path)


def test_segmentation_masks_from_npy_and_png_files(tmp_path: Path) -> None:
    oracle = FileOracle(str(tmp_path), class_names=["background", "rectangle", "disc"], dataset=SHAPES)
    oracle.task = Segmentation(3)  # as the loop sets it
    predicted = MASKS[[3, 5, 7]].clamp(max=2).to(torch.uint8)
    query = Query(round=0, ids=torch.tensor([3, 5, 7]), predicted=predicted)
    message = ask(oracle, query)
    assert "the path of its mask file (.png or .npy, relative to" in message and "0 background" in message
    rows = read_rows(oracle.query_path(0))
    assert [row["suggested_label"] for row in rows] == [f"queries/round_000_suggested/{i}.png" for i in (3, 5, 7)]
    with Image.open(tmp_path / rows[0]["suggested_label"]) as suggestion:  # indexed colour: ids = palette indices
        assert suggestion.mode == "P" and np.array_equal(np.asarray(suggestion), predicted[0].numpy())
    # id 3: the suggestion corrected in place; 5: an .npy array; 7: a greyscale PNG named by its absolute path
    save_png(tmp_path / rows[0]["suggested_label"], MASKS[3], mode="P")
    (tmp_path / "masks").mkdir()
    np.save(tmp_path / "masks" / "5.npy", MASKS[5].numpy().astype(np.int16))
    save_png(tmp_path / "masks" / "7.png", MASKS[7])
    labels = {3: rows[0]["suggested_label"], 5: "masks/5.npy", 7: str(tmp_path / "masks" / "7.png")}
    fill(oracle.query_path(0), labels)
    masks = oracle.answer(query)
    assert isinstance(masks, torch.Tensor) and masks.shape == (3, 8, 8) and masks.dtype == torch.uint8
    assert torch.equal(masks.long(), MASKS[[3, 5, 7]])
    # A fresh query file (the old one moved away) keeps the corrected suggestion rather than overwriting it.
    oracle.query_path(0).unlink()
    ask(oracle, query)
    with Image.open(tmp_path / rows[0]["suggested_label"]) as kept:
        assert np.array_equal(np.asarray(kept), MASKS[3].numpy())


def test_bad_masks_refused_with_every_problem_and_nothing_applied(tmp_path: Path) -> None:
    dm = al.ActiveDataModule(SHAPES, task=Segmentation(3), initial_labelled=4, batch_size=4)
    ids = dm.unlabelled_ids[:8].tolist()
    query = Query(round=0, ids=torch.tensor(ids))
    oracle = FileOracle(str(tmp_path / "labels"), dataset=dm.train_set, task=dm.task)
    ask(oracle, query)
    masks = tmp_path / "labels" / "masks"
    masks.mkdir()
    np.save(masks / "small.npy", np.zeros((4, 4), dtype=np.int64))
    np.save(masks / "seven.npy", np.full((8, 8), 7, dtype=np.uint8))
    np.save(masks / "float.npy", np.zeros((8, 8), dtype=np.float32))
    with (masks / "pickled.npy").open("wb") as handle:
        np.lib.format.write_array(handle, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (masks / "payload.npy").write_bytes(pickle.dumps({"x": 1}))
    Image.new("RGB", (8, 8)).save(masks / "rgb.png")
    (tmp_path / "outside.npy").write_bytes((masks / "small.npy").read_bytes())
    answers = [
        "masks/small.npy",
        "masks/seven.npy",
        "masks/float.npy",
        "masks/pickled.npy",
        "masks/payload.npy",
        "masks/rgb.png",
        "masks/missing.png",
        "../outside.npy",
    ]
    fill(oracle.query_path(0), dict(zip(ids, answers, strict=True)))
    state_before = dm.state_dict()
    listed = refusal(oracle, query)
    i = ids
    outside = (tmp_path / "outside.npy").resolve()
    expected = [
        f"row 2: masks/small.npy: expected the mask of id {i[0]} to have its image's size (8, 8), but got (4, 4).",
        f"row 3: masks/seven.npy: expected the mask of id {i[1]} to hold class ids in [0, 3) or the ignore_index "
        "255, but got values [7].",
        f"row 4: masks/float.npy: expected the mask of id {i[2]} to be an (H, W) mask of integer class ids, but got "
        "shape (8, 8) and dtype torch.float32.",
        "row 5: masks/pickled.npy: expected a .npy array (no pickled objects), but loading it failed: ",
        "row 6: masks/payload.npy: expected a .npy array (no pickled objects), but loading it failed: ",
        "row 7: masks/rgb.png: expected a single-channel PNG of class ids (mode L, P or I), but got mode RGB; ",
        f"row 8: expected the mask file of id {i[6]} to exist, but 'masks/missing.png' is not a file (",
        f"row 9: expected the mask file of id {i[7]} to stay inside `directory` {(tmp_path / 'labels').resolve()}, "
        f"but '../outside.npy' resolves to {outside}.",
    ]
    assert len(listed) == len(expected)
    for line, start in zip(listed, expected, strict=True):
        assert line.startswith(start), (line, start)
    with pytest.raises(ValueError, match="no label was applied"):
        dm.label(query.ids, oracle.answer(query))
    assert dm.num_labelled == 4
    assert torch.equal(dm.state_dict()["pool"]["labelled_round"], state_before["pool"]["labelled_round"])


def test_segmentation_suggestions_and_formats_checked(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"task for `format`='label_studio' .* got the task Segmentation\(num_classes=3"
    ):
        FileOracle(str(tmp_path), class_names=["a", "b", "c"], format="label_studio", task=Segmentation(3))
    oracle = FileOracle(str(tmp_path), class_names=["a", "b", "c"], format="label_studio")
    oracle.task = Segmentation(3)  # as the loop sets it: refused at first use, before anything is written
    with pytest.raises(ValueError, match="format`='label_studio'"):
        oracle.answer(MASK_QUERY)
    with pytest.raises(ValueError, match=r"`class_names` to give the 3 classes of the task Segmentation"):
        FileOracle(str(tmp_path), class_names=["a", "b"], task=Segmentation(3))
    jsonl = FileOracle(str(tmp_path), format="jsonl", task=Segmentation(3, ignore_index=None))
    with pytest.raises(ValueError, match=r"`query.predicted` to hold 3 \(H, W\) masks, but got \(3, 8\)\."):
        jsonl.answer(Query(round=0, ids=torch.tensor([3, 5, 7]), predicted=torch.zeros(3, 8)))
    wide = Query(round=1, ids=torch.tensor([3]), predicted=torch.full((1, 2, 2), 300, dtype=torch.int32))
    wide_oracle = FileOracle(str(tmp_path), format="jsonl", task=Segmentation(301, ignore_index=None))
    ask(wide_oracle, wide)
    (record,) = [json.loads(line) for line in wide_oracle.query_path(1).read_text(encoding="utf-8").splitlines()]
    assert record["suggested_label"] == "queries/round_001_suggested/3.npy"  # ids above 255: an .npy suggestion
    assert np.load(tmp_path / record["suggested_label"]).tolist() == [[300, 300], [300, 300]]
    assert not list(tmp_path.glob("queries/round_000*"))
    with pytest.raises(ValueError, match=r"`query.predicted` to have shape \(3, 3\), but got \(3,\)\."):
        FileOracle(str(tmp_path), task=MultiLabel(3)).answer(
            Query(round=0, ids=torch.arange(3), predicted=torch.zeros(3))
        )


# ----- the loop, end to end -------------------------------------------------------------------
def _loop(tmp_path: Path) -> al.ActiveLearningLoop:
    return al.ActiveLearningLoop(
        Entropy(),
        query_size=3,
        rounds=1,
        oracle=FileOracle(str(tmp_path / "labels")),
        trainer_kwargs=TRAINER,
        output_dir=str(tmp_path / "run"),
        progress=False,
    )


def _multilabel_dm() -> al.ActiveDataModule:
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 6, generator=generator), (torch.rand(40, 3, generator=generator) > 0.5).float()
    return al.ActiveDataModule(TensorDataset(x, y), task=MultiLabel(3), initial_labelled=6, batch_size=8, seed=0)


def _segmentation_dm() -> al.ActiveDataModule:
    return al.ActiveDataModule(Shapes(24, size=8, seed=0), task=Segmentation(3), initial_labelled=4, batch_size=4)


@pytest.mark.parametrize("task_name", ["multilabel", "segmentation"])
def test_the_loop_stops_for_labels_and_applies_the_filled_file(tmp_path: Path, task_name: str) -> None:
    def run(resume: bool) -> tuple[al.ActiveLearningLoop, al.ActiveDataModule, list[dict]]:
        torch.manual_seed(0)
        if task_name == "multilabel":
            dm, model = _multilabel_dm(), MultiLabelMLP(in_features=6, num_labels=3, hidden=8)
        else:
            dm, model = _segmentation_dm(), SmallUNet(num_classes=3, width=4)
        loop = _loop(tmp_path)
        return loop, dm, loop.run(model, dm, resume=resume)

    loop, dm, history = run(resume=False)
    start = dm.num_labelled
    assert history == [] and loop.oracle.task == dm.task and loop.oracle.dataset is dm.train_set
    path = loop.oracle.query_path(0)
    rows = read_rows(path)
    queried = [int(row["id"]) for row in rows]
    assert queried == loop.pending_query.ids.tolist()
    truth = dm.train_set.tensors[1]
    if task_name == "multilabel":
        assert all(row["suggested_label"] for row in rows)
        answers = {i: ";".join(map(str, truth[i].nonzero().flatten().tolist())) or "none" for i in queried}
    else:  # the annotator corrects the suggested masks in place
        for row in rows:
            suggestion = tmp_path / "labels" / row["suggested_label"]
            assert suggestion.is_file() and suggestion.parent.name == "round_000_suggested"
            save_png(suggestion, truth[int(row["id"])])
        answers = {int(row["id"]): row["suggested_label"] for row in rows}
    fill(path, answers)

    loop, dm, history = run(resume=True)
    assert loop.finished and [row["num_labelled"] for row in history] == [start, start + 3]
    assert history[0]["selected_ids"] == queried
    assert dm.num_labelled == start + 3 and set(queried) <= set(dm.labelled_ids.tolist())
    assert (dm.pool.labelled_round[queried] == 1).all()
    for i in queried:
        assert torch.equal(dm.pool.label_of(i).to(truth.dtype), truth[i])
