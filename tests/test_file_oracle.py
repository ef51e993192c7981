"""FileOracle: query written to a file, filled by a person (here: the test), read back and checked."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset, Subset

from lightning_al.data.pool import ActivePool
from lightning_al.file_oracle import COLUMNS, FileOracle, sample_reference
from lightning_al.oracles import LabelsPending, Query, QueryOracle

NAMES = ["cat", "dog", "bird"]
# Round 3 asks for dataset ids 7, 2, 40 (in this order); the model guessed dog, cat, bird.
QUERY = Query(
    round=3,
    ids=torch.tensor([7, 2, 40]),
    scores=torch.tensor([0.9, 0.5, 0.125], dtype=torch.float64),
    predicted=torch.tensor([1, 0, 2]),
)
HEADER = ",".join(COLUMNS)


def ask(oracle: FileOracle, query: Query = QUERY) -> str:
    """Ask once, expecting the run to stop for labels; the message it stops with."""
    with pytest.raises(LabelsPending) as stop:
        oracle.answer(query)
    return str(stop.value)


def fill_csv(path: Path, rows: list[str]) -> None:
    """Overwrite the query file with the header and ``rows`` (as a person editing it would)."""
    path.write_text("\n".join([HEADER, *rows]) + "\n", encoding="utf-8")


def read_csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open(newline="", encoding="utf-8")))


def test_query_written_then_filled_labels_come_back_in_query_order(tmp_path: Path) -> None:
    oracle = FileOracle(str(tmp_path), class_names=NAMES)
    assert isinstance(oracle, QueryOracle)
    message = ask(oracle)
    path = tmp_path / "queries" / "round_003.csv"
    assert path.is_file() and oracle.query_path(3) == path.resolve()
    rows = read_csv(path)
    assert [row["id"] for row in rows] == ["7", "2", "40"]
    assert [row["suggested_label"] for row in rows] == ["dog", "cat", "bird"]
    assert [float(row["score"]) for row in rows] == [0.9, 0.5, 0.125]
    assert all(row["label"] == "" and row["reference"] == "" for row in rows)
    assert list(rows[0]) == list(COLUMNS)
    assert str(path.resolve()) in message and "`label` column" in message
    assert "cat, dog, bird" in message and "0..2" in message and "resum" in message
    # Rows in another order, names and ids mixed, spaces around a value: answers follow the query's order.
    fill_csv(path, ["40,,bird,0.125, 0 ", "7,,dog,0.9,bird", "2,,cat,0.5,dog"])
    labels = oracle.answer(QUERY)
    assert labels.dtype == torch.long
    assert labels.tolist() == [2, 1, 0]  # 7 -> bird, 2 -> dog, 40 -> id 0 (cat)


def test_pending_again_while_nothing_is_labelled_and_file_left_untouched(tmp_path: Path) -> None:
    oracle = FileOracle(str(tmp_path), class_names=NAMES, resume_command="python train.py --resume")
    first = ask(oracle)
    path = oracle.query_path(3)
    before = path.read_bytes()
    again = ask(oracle)
    assert path.read_bytes() == before
    assert "no row of" in again and str(path) in again and "`python train.py --resume`" in again
    assert "wrote the 3 queried samples" in first


def test_labels_by_id_without_names_and_empty_query(tmp_path: Path) -> None:
    oracle = FileOracle(str(tmp_path), num_classes=3)
    ask(oracle, Query(round=0, ids=torch.tensor([5, 1])))  # no model yet: no suggestion, no score
    path = oracle.query_path(0)
    assert [(row["suggested_label"], row["score"]) for row in read_csv(path)] == [("", ""), ("", "")]
    fill_csv(path, ["5,,,,2", "1,,,,0"])
    assert oracle.answer(Query(round=0, ids=torch.tensor([5, 1]))).tolist() == [2, 0]
    empty = oracle.answer(Query(round=1, ids=torch.empty(0, dtype=torch.long)))
    assert empty.shape == (0,) and not oracle.query_path(1).exists()


REFERENCES = [f"img_{i}.png" for i in range(50)]  # the dataset has 50 samples


@pytest.mark.parametrize(
    ("rows", "problems"),
    [
        (["7,,,,dog", "2,,,,cat", "40,,,,bird", "99,,,,cat"], ["row 5: id 99 is not a dataset index in [0, 50)."]),
        (["7,,,,dog", "2,,,,cat", "40,,,,bird", "8,,,,cat"], ["row 5: id 8 was not queried in round 3."]),
        (
            ["7,,,,dog", "2,,,,cat", "40,,,,bird", "2,,,,cat"],
            ["row 5: id 2 is listed again (first at row 3)."],
        ),
        (
            ["7,,,,dgo", "2,,,,cat", "40,,,,bird"],
            [
                "row 2: expected the label of id 7 to be a class name (cat, dog, bird) or a class id in 0..2, "
                "but got 'dgo'."
            ],
        ),
        (
            ["7,,,,3", "2,,,,cat", "40,,,,-1"],
            [
                "row 2: expected the label of id 7 to be a class name (cat, dog, bird) or a class id in 0..2, "
                "but got '3'.",
                "row 4: expected the label of id 40 to be a class name (cat, dog, bird) or a class id in 0..2, "
                "but got '-1'.",
            ],
        ),
        (["7,,,,dog", "2,,,,", "40,,,,bird"], ["row 3: id 2 has no label."]),
        (["7,,,,dog", "40,,,,bird"], ["id 2 was queried in round 3 but has no row."]),
        (
            ["7,,,,dog", "2,,,,cat,extra", "40,,,,bird"],
            ["row 3: expected 5 cells as in the header row, but got 6."],
        ),
        (["7,,,,dog", "2,,", "40,,,,bird"], ["row 3: expected 5 cells as in the header row, but got 3."]),
        (
            ["seven,,,,dog", "2,,,,cat", "40,,,,bird"],
            [
                "row 2: expected `id` to be a dataset index, but got 'seven'.",
                "id 7 was queried in round 3 but has no row.",
            ],
        ),
    ],
    ids=[
        "unknown-id",
        "id-not-in-query",
        "duplicate",
        "bad-class-name",
        "class-id-out-of-range",
        "missing-label",
        "missing-row",
        "extra-cell",
        "short-row",
        "non-integer-id",
    ],
)
def test_bad_file_refused_whole_with_every_problem_and_nothing_applied(
    tmp_path: Path, rows: list[str], problems: list[str]
) -> None:
    oracle = FileOracle(str(tmp_path), class_names=NAMES, references=REFERENCES)
    ask(oracle)
    path = oracle.query_path(3)
    fill_csv(path, rows)
    before = path.read_bytes()
    pool = ActivePool(50, num_classes=3)
    labels = None
    with pytest.raises(ValueError) as refusal:
        labels = oracle.answer(QUERY)
        pool.label(QUERY.ids, labels, round=4)
    message = str(refusal.value)
    head, *listed = message.split("\n  ")
    count = len(problems)
    assert head == (
        f"Expected every id queried in round 3 to be labelled exactly once in {path}, but found {count} "
        f"problem{'s' * (count > 1)}; no label was applied:"
    )
    assert [line.split("\nIf ")[0] for line in listed] == problems
    assert labels is None and pool.num_labelled == 0
    assert path.read_bytes() == before  # the person's file is never rewritten


def test_every_problem_listed_at_once_with_stale_file_hint(tmp_path: Path) -> None:
    oracle = FileOracle(str(tmp_path), class_names=NAMES, references=REFERENCES)
    ask(oracle)
    fill_csv(oracle.query_path(3), ["7,,,,dog", "7,,,,cat", "11,,,,cat", "40,,,,"])
    with pytest.raises(ValueError) as refusal:
        oracle.answer(QUERY)
    lines = str(refusal.value).split("\n")
    assert "found 4 problems" in lines[0]
    assert lines[1:] == [
        "  row 3: id 7 is listed again (first at row 2).",
        "  row 4: id 11 was not queried in round 3.",
        "  row 5: id 40 has no label.",
        "  id 2 was queried in round 3 but has no row.",
        "If round_003.csv is left from another run or query, move it away and resume to get a fresh file.",
    ]
    # An unfilled file written for another query is refused too, rather than reported as pending.
    fill_csv(oracle.query_path(3), ["7,,,,", "2,,,,", "40,,,,"])
    with pytest.raises(ValueError) as refusal:
        oracle.answer(Query(round=3, ids=torch.tensor([7, 2, 41])))
    assert str(refusal.value).split("\n")[1:3] == [
        "  row 4: id 40 was not queried in round 3.",
        "  id 41 was queried in round 3 but has no row.",
    ]


def test_unreadable_files_refused(tmp_path: Path) -> None:
    oracle = FileOracle(str(tmp_path), class_names=NAMES)
    ask(oracle)
    path = oracle.query_path(3)
    path.write_text("sample,answer\n7,dog\n", encoding="utf-8")
    with pytest.raises(ValueError) as refusal:
        oracle.answer(QUERY)
    assert str(refusal.value) == (
        f"Expected the header row of {path} to name the columns `id` and `label`, but got ['sample', 'answer']."
    )
    path.write_bytes(HEADER.encode() + b"\n7,,,,\xe9t\xe9\n")  # Latin-1, as some spreadsheet programs save
    with pytest.raises(ValueError, match=r"to be UTF-8 text \(in a spreadsheet program: save as 'CSV UTF-8'\)"):
        oracle.answer(QUERY)
    path.write_text(HEADER + '\n7,"unclosed,,,dog\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"round_003\.csv to be a valid CSV file, but reading it failed: "):
        oracle.answer(QUERY)


def test_semicolon_separated_spreadsheet_export_accepted(tmp_path: Path) -> None:
    oracle = FileOracle(str(tmp_path), class_names=NAMES)
    ask(oracle)
    path = oracle.query_path(3)
    # As some spreadsheet programs save it: byte-order mark, `;` separators, CRLF line ends.
    text = "\ufeffid;reference;suggested_label;score;label\r\n7;;dog;0,9;dog\r\n2;;cat;0,5;bird\r\n40;;bird;0,125;1\r\n"
    path.write_bytes(text.encode("utf-8"))
    assert oracle.answer(QUERY).tolist() == [1, 2, 1]


def test_references_with_commas_quotes_and_newlines_round_trip(tmp_path: Path) -> None:
    tricky = {7: 'a,b/"quoted".png', 2: "line\nbreak, and ; semicolon.png", 40: "plain.png"}
    references = [tricky.get(i, f"{i}.png") for i in range(50)]
    oracle = FileOracle(str(tmp_path), class_names=NAMES, references=references)
    ask(oracle)
    path = oracle.query_path(3)
    rows = read_csv(path)  # an independent CSV reader sees exactly the references
    assert [row["reference"] for row in rows] == [tricky[7], tricky[2], tricky[40]]
    for row, label in zip(rows, ["bird", "dog", "cat"], strict=True):
        row["label"] = label
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS))
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(buffer.getvalue(), encoding="utf-8", newline="")
    assert oracle.answer(QUERY).tolist() == [2, 1, 0]


class FolderLike(Dataset):
    """Keeps ``(path, class)`` pairs in ``samples``, as torchvision's ImageFolder does."""

    def __init__(self, n: int) -> None:
        self.samples = [(f"/data/class_{i % 3}/{i}.jpg", i % 3) for i in range(n)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.zeros(2), self.samples[index][1]


def test_reference_taken_from_the_dataset_through_subsets(tmp_path: Path) -> None:
    folder = FolderLike(60)
    subset = Subset(folder, list(range(10, 60)))  # dataset id i is folder item i + 10
    assert sample_reference(subset, 7) == "/data/class_2/17.jpg"
    assert sample_reference(torch.utils.data.TensorDataset(torch.zeros(3)), 1) == ""
    oracle = FileOracle(str(tmp_path), class_names=NAMES, dataset=subset)
    ask(oracle)
    rows = read_csv(oracle.query_path(3))
    assert [row["reference"] for row in rows] == [
        "/data/class_2/17.jpg",
        "/data/class_0/12.jpg",
        "/data/class_2/50.jpg",
    ]
    fill_csv(oracle.query_path(3), ["7,,,,0", "2,,,,0", "40,,,,0", "50,,,,0"])
    with pytest.raises(ValueError, match=r"row 5: id 50 is not a dataset index in \[0, 50\)\."):
        oracle.answer(QUERY)


def test_jsonl_variant(tmp_path: Path) -> None:
    oracle = FileOracle(str(tmp_path), class_names=NAMES, format="jsonl", references=REFERENCES)
    message = ask(oracle)
    path = tmp_path / "queries" / "round_003.jsonl"
    assert "`label` field of every line" in message and str(path.resolve()) in message
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert records[0] == {"id": 7, "reference": "img_7.png", "suggested_label": "dog", "score": 0.9, "label": None}
    assert [record["id"] for record in records] == [7, 2, 40]
    assert "no line of" in ask(oracle)
    answers = {7: "bird", 2: 1, 40: "0"}  # names, JSON integers and integer strings all accepted
    for record in records:
        record["label"] = answers[record["id"]]
    path.write_text("".join(json.dumps(record) + "\n" for record in reversed(records)), encoding="utf-8")
    assert oracle.answer(QUERY).tolist() == [2, 1, 0]
    lines = [json.dumps(records[0]), '{"id": 2, "label": "cat"', "[2, 0]", json.dumps({**records[2], "label": 2.0})]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError) as refusal:
        oracle.answer(QUERY)
    assert str(refusal.value).split("\n  ")[1:] == [
        "line 2: expected a JSON object, but got invalid JSON (Expecting ',' delimiter).",
        "line 3: expected a JSON object with an `id`, but got [2, 0].",
        "line 4: expected the label of id 40 to be a class name (cat, dog, bird) or a class id in 0..2, but got 2.0.",
        "id 2 was queried in round 3 but has no line.",
    ]


def test_label_studio_tasks_out_and_export_in(tmp_path: Path) -> None:
    oracle = FileOracle(str(tmp_path), class_names=NAMES, format="label_studio", references=REFERENCES)
    message = ask(oracle)
    tasks_path, export_path = oracle.query_path(3), oracle.answer_path(3)
    assert tasks_path.name == "round_003.tasks.json" and export_path.name == "round_003.export.json"
    assert str(tasks_path) in message and str(export_path) in message
    config = (tasks_path.parent / "label_studio_config.xml").read_text(encoding="utf-8")
    assert '<Choices name="label" toName="reference"' in config and '<Choice value="bird"/>' in config
    tasks = json.loads(tasks_path.read_text(encoding="utf-8"))
    assert tasks[0]["data"] == {"id": 7, "reference": "img_7.png", "suggested_label": "dog", "score": 0.9, "round": 3}
    assert tasks[0]["predictions"][0]["result"][0]["value"] == {"choices": ["dog"]}
    assert "found no export" in ask(oracle)

    def exported(task: dict, *choices: str, cancelled: str | None = None) -> dict:
        """A task as Label Studio exports it, with one annotation per choice."""
        annotations = [
            {"result": [{"type": "choices", "value": {"choices": [c]}}], "was_cancelled": False} for c in choices
        ]
        if cancelled is not None:
            annotations.append(
                {"result": [{"type": "choices", "value": {"choices": [cancelled]}}], "was_cancelled": True}
            )
        return {"id": 100 + task["data"]["id"], "data": task["data"], "annotations": annotations}

    other_round = {"id": 1, "data": {"id": 5, "round": 2}, "annotations": []}
    export = [exported(tasks[0], "bird", cancelled="cat"), exported(tasks[1], "dog"), other_round]
    export_path.write_text(json.dumps([*export, exported(tasks[2], "cat")]), encoding="utf-8")
    assert oracle.answer(QUERY).tolist() == [2, 1, 0]
    export_path.write_text(json.dumps([*export, exported(tasks[2], "cat", "dog")]), encoding="utf-8")
    with pytest.raises(ValueError, match=r"task 4: expected one choice, but got \['cat', 'dog'\]\.") as refusal:
        oracle.answer(QUERY)
    assert "has no task" not in str(refusal.value)
    with pytest.raises(ValueError, match="`class_names` for `format`='label_studio'"):
        FileOracle(str(tmp_path), format="label_studio")


def test_paths_cannot_escape_the_directory(tmp_path: Path) -> None:
    run = tmp_path / "run"
    for escape in ("../elsewhere", str(tmp_path / "elsewhere"), "queries/../../elsewhere"):
        with pytest.raises(ValueError, match=r"Expected `queries_dir` to stay inside `directory`"):
            FileOracle(str(run), queries_dir=escape)
    FileOracle(str(run), queries_dir="labels/../queries")  # normalised, still inside
    oracle = FileOracle(str(run))
    outside = tmp_path / "outside"
    outside.mkdir()
    run.mkdir()
    os.symlink(outside, run / "queries")  # a link planted after the oracle was built is caught at query time
    with pytest.raises(ValueError) as refusal:
        oracle.answer(QUERY)
    assert str(refusal.value) == (
        f"Expected `queries_dir` to stay inside `directory` {run.resolve()}, but "
        f"'{run.resolve() / 'queries' / 'round_003.csv'}' resolves to {outside.resolve() / 'round_003.csv'}."
    )
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(format="xlsx"), r"Expected `format` to be one of csv, jsonl, label_studio, but got 'xlsx'\."),
        (
            dict(class_names=["cat", "cat"]),
            r"Expected `class_names` to be distinct, but got repeated names \['cat'\]\.",
        ),
        (dict(class_names=["1", "0"]), r"integer-like entry of `class_names` to equal its own index"),
        (dict(class_names=[" cat"]), r"without surrounding spaces, but got ' cat' at index 0\."),
        (dict(class_names=NAMES, num_classes=4), r"Expected `num_classes` to equal the 3 `class_names`, but got 4\."),
        (dict(num_classes=0), r"Expected `num_classes` to be an int >= 1 or None, but got 0\."),
        (dict(references=["a"], dataset=FolderLike(3)), r"one entry per dataset index \(3\), but got 1\."),
    ],
)
def test_bad_arguments_refused(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FileOracle(str(tmp_path), **kwargs)


def test_malformed_query_refused(tmp_path: Path) -> None:
    oracle = FileOracle(str(tmp_path))
    with pytest.raises(ValueError, match=r"Expected `query.ids` to be distinct, but got \[3, 3\]\."):
        oracle.answer(Query(round=0, ids=torch.tensor([3, 3])))
    with pytest.raises(ValueError, match=r"Expected `query.scores` to have shape \(2,\), but got \(3,\)\."):
        oracle.answer(Query(round=0, ids=torch.tensor([3, 4]), scores=torch.zeros(3)))
    assert not (tmp_path / "queries").exists()
