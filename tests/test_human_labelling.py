"""The human-labelling workflow end to end: run → query file → labels filled → resume → labels applied."""

from __future__ import annotations

import csv

import pytest
import torch
from conftest import FAST_TRAINER, TinyClassifier, blobs

import lightning_al as al
from lightning_al.file_oracle import FileOracle
from lightning_al.strategies import Margin

NAMES = ["red", "green", "blue"]


def make_dm() -> al.ActiveDataModule:
    return al.ActiveDataModule(blobs(90, seed=0), test_set=blobs(30, seed=1), initial_labelled=9, batch_size=8, seed=0)


def make_loop(tmp_path) -> al.ActiveLearningLoop:
    return al.ActiveLearningLoop(
        strategy=Margin(),
        query_size=4,
        rounds=2,
        oracle=FileOracle(str(tmp_path / "labels"), class_names=NAMES),
        trainer_kwargs=FAST_TRAINER,
        output_dir=str(tmp_path / "run"),
        progress=False,
    )


def run(tmp_path, resume: bool) -> tuple[al.ActiveLearningLoop, al.ActiveDataModule, list[dict]]:
    dm = make_dm()
    loop = make_loop(tmp_path)
    torch.manual_seed(0)
    history = loop.run(TinyClassifier(), dm, resume=resume)
    return loop, dm, history


def read_rows(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def fill(path, labels: dict[int, str]) -> None:
    rows = read_rows(path)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "label": labels[int(row["id"])]})


def truth(ids) -> dict[int, str]:
    targets = blobs(90, seed=0).tensors[1]
    return {i: NAMES[int(targets[i])] for i in ids}


def test_the_file_oracle_workflow_end_to_end(tmp_path, capsys):
    loop, dm, history = run(tmp_path, resume=False)
    query_file = tmp_path / "labels" / "queries" / "round_000.csv"
    assert "Round 0 needs labels" in capsys.readouterr().out and query_file.exists()
    assert history == [] and dm.num_labelled == 9
    rows = read_rows(query_file)
    assert [int(r["id"]) for r in rows] == loop.pending_query.ids.tolist()
    assert {r["suggested_label"] for r in rows} <= set(NAMES) and all(r["label"] == "" for r in rows)

    # Resuming with the file still empty asks again and changes nothing.
    loop, dm, history = run(tmp_path, resume=True)
    assert history == [] and dm.num_labelled == 9 and "no row of" in capsys.readouterr().out

    fill(query_file, truth(int(r["id"]) for r in rows))
    loop, dm, history = run(tmp_path, resume=True)
    queried = [int(r["id"]) for r in rows]
    assert history[0]["selected_ids"] == queried
    assert set(queried) <= set(dm.labelled_ids.tolist())
    assert dm.pool.labels[queried].tolist() == [NAMES.index(truth([i])[i]) for i in queried]
    assert (dm.pool.labelled_round[queried] == 1).all()
    # The run went on to round 1 and stopped at its query.
    second = tmp_path / "labels" / "queries" / "round_001.csv"
    assert second.exists() and len(history) == 1 and dm.num_labelled == 13

    fill(second, truth(int(r["id"]) for r in read_rows(second)))
    loop, dm, history = run(tmp_path, resume=True)
    assert [row["num_labelled"] for row in history] == [9, 13, 17] and loop.finished


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda rows: rows[0].update(label="purple"), "expected the label of id .* to be a class name"),
        (lambda rows: rows[1].update(id=rows[0]["id"]), "is listed again"),
        (lambda rows: rows[2].update(label=""), "has no label"),
        (lambda rows: rows[3].update(id="89"), "id 89 was not queried in round 0"),
    ],
)
def test_a_bad_answer_file_applies_nothing(tmp_path, capsys, edit, message):
    run(tmp_path, resume=False)
    query_file = tmp_path / "labels" / "queries" / "round_000.csv"
    rows = read_rows(query_file)
    answers = truth(int(r["id"]) for r in rows)
    rows = [{**r, "label": answers[int(r["id"])]} for r in rows]
    edit(rows)
    with open(query_file, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    state_before = (tmp_path / "run" / "state.pt").read_bytes()

    dm = make_dm()
    with pytest.raises(ValueError, match=message):
        make_loop(tmp_path).run(TinyClassifier(), dm, resume=True)
    assert dm.num_labelled == 9  # nothing applied
    assert (tmp_path / "run" / "state.pt").read_bytes() == state_before
