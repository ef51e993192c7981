"""Run directories: the loop saves after every labelling step and resumes where it stopped."""

from __future__ import annotations

import pytest
import torch
from conftest import FAST_TRAINER, TinyClassifier, blobs

import lightning_al as al
from lightning_al.oracles import DatasetOracle, LabelsPending, Query
from lightning_al.strategies import Entropy, Random


def make_dm(n: int = 120) -> al.ActiveDataModule:
    return al.ActiveDataModule(blobs(n, seed=0), test_set=blobs(60, seed=1), initial_labelled=10, batch_size=8, seed=0)


def make_loop(tmp_path, oracle=None, strategy=None, **kwargs) -> al.ActiveLearningLoop:
    return al.ActiveLearningLoop(
        strategy=strategy or Entropy(),
        query_size=5,
        rounds=3,
        oracle=oracle,
        trainer_kwargs=FAST_TRAINER,
        output_dir=str(tmp_path),
        progress=False,
        **kwargs,
    )


def fresh_model() -> TinyClassifier:
    torch.manual_seed(0)
    return TinyClassifier()


class CountingOracle:
    """Ground truth that records every query, and raises ``error`` at the ``fail_at``-th query."""

    def __init__(self, dm: al.ActiveDataModule, fail_at: int | None = None, error: type = LabelsPending) -> None:
        self.truth = DatasetOracle(dm.train_set)
        self.asked: list[list[int]] = []
        self.fail_at, self.error = fail_at, error

    def answer(self, query: Query) -> torch.Tensor:
        self.asked.append(query.ids.tolist())
        if self.fail_at is not None and len(self.asked) == self.fail_at:
            raise self.error("labels are on their way")
        return self.truth.label(query.ids)


def uninterrupted(tmp_path) -> tuple[list[dict], list[list[int]]]:
    dm = make_dm()
    oracle = CountingOracle(dm)
    history = make_loop(tmp_path / "reference", oracle).run(fresh_model(), dm)
    return history, oracle.asked


def test_pending_labels_stop_the_run_and_resume_asks_the_same_query(tmp_path, capsys):
    reference_history, reference_asked = uninterrupted(tmp_path)

    dm = make_dm()
    oracle = CountingOracle(dm, fail_at=2)
    loop = make_loop(tmp_path / "run", oracle)
    history = loop.run(fresh_model(), dm)
    assert "labels are on their way" in capsys.readouterr().out
    assert len(history) == 1 and dm.num_labelled == 15
    assert loop.pending_query is not None and loop.pending_query.ids.tolist() == reference_asked[1]
    assert loop.pending_query.predicted is not None and loop.pending_query.predicted.shape == (5,)

    dm2 = make_dm()  # a new process: fresh datamodule, model and loop
    oracle2 = CountingOracle(dm2)
    loop2 = make_loop(tmp_path / "run", oracle2)
    resumed = loop2.run(fresh_model(), dm2, resume=True)
    assert oracle2.asked == reference_asked[1:]  # the pending query first, nothing asked twice after that
    assert [row["selected_ids"] for row in resumed[:-1]] == [row["selected_ids"] for row in reference_history[:-1]]
    assert [row["num_labelled"] for row in resumed] == [10, 15, 20, 25]
    labelled = set(dm2.labelled_ids.tolist())
    assert len(labelled) == 25 and all(set(ids) <= labelled for ids in reference_asked)


def test_a_crash_mid_round_resumes_with_the_same_selections(tmp_path):
    reference_history, reference_asked = uninterrupted(tmp_path)

    dm = make_dm()
    with pytest.raises(RuntimeError, match="on their way"):
        make_loop(tmp_path / "run", CountingOracle(dm, fail_at=3, error=RuntimeError)).run(fresh_model(), dm)
    assert dm.num_labelled == 20  # two rounds' labels were recorded before the crash

    dm2 = make_dm()
    oracle2 = CountingOracle(dm2)
    resumed = make_loop(tmp_path / "run", oracle2).run(fresh_model(), dm2, resume=True)
    assert oracle2.asked == reference_asked[2:]  # the crashed round is redone; earlier ones are not asked again
    assert [row["selected_ids"] for row in resumed[:-1]] == [row["selected_ids"] for row in reference_history[:-1]]
    assert [row["test_accuracy"] for row in resumed] == pytest.approx([r["test_accuracy"] for r in reference_history])


def test_resuming_a_finished_run_returns_its_history_without_work(tmp_path):
    dm = make_dm()
    loop = make_loop(tmp_path, CountingOracle(dm))
    history = loop.run(fresh_model(), dm)
    assert loop.run(fresh_model(), dm) == history  # a second call does not append a row

    dm2 = make_dm()
    oracle2 = CountingOracle(dm2)
    assert make_loop(tmp_path, oracle2).run(fresh_model(), dm2, resume=True) == history
    assert oracle2.asked == [] and dm2.num_labelled == 25


def test_an_existing_run_directory_is_not_overwritten(tmp_path):
    dm = make_dm()
    make_loop(tmp_path, strategy=Random()).run(fresh_model(), dm)
    before = (tmp_path / "state.pt").read_bytes()
    with pytest.raises(ValueError, match=r"`output_dir` to hold no earlier run, but .*state.pt` exists"):
        make_loop(tmp_path, strategy=Random()).run(fresh_model(), make_dm())
    assert (tmp_path / "state.pt").read_bytes() == before


def test_resume_needs_an_output_dir():
    loop = al.ActiveLearningLoop(strategy=Random(), query_size=5, rounds=1, progress=False)
    with pytest.raises(ValueError, match="`output_dir` to be set with `resume=True`, but got None"):
        loop.run(fresh_model(), make_dm(), resume=True)


def test_a_mismatched_run_is_refused_with_every_difference(tmp_path):
    make_loop(tmp_path, strategy=Random()).run(fresh_model(), make_dm())
    dm = make_dm(n=90)
    with pytest.raises(ValueError, match=r"pool_size: saved 120, now 90; strategy: saved 'Random', now 'Entropy'"):
        make_loop(tmp_path).run(fresh_model(), dm, resume=True)
    assert dm.num_labelled == 10  # nothing was loaded


@pytest.mark.parametrize("content", [b"not a checkpoint", b""])
def test_a_corrupt_state_file_is_refused(tmp_path, content):
    (tmp_path / "state.pt").write_bytes(content)
    with pytest.raises(ValueError, match=r"state.pt` to be a lightning_al run state, but it could not be read"):
        make_loop(tmp_path).run(fresh_model(), make_dm(), resume=True)


def test_a_foreign_pickle_is_not_unpickled(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"format": 1, "x": Payload()}, tmp_path / "state.pt")
    with pytest.raises(ValueError, match="could not be read"):
        make_loop(tmp_path).run(fresh_model(), make_dm(), resume=True)


def test_the_progress_line_reports_each_round(tiny_data, capsys):
    dm = make_dm()
    al.ActiveLearningLoop(strategy=Random(), query_size=5, rounds=1, trainer_kwargs=FAST_TRAINER).run(fresh_model(), dm)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[lightning_al]")]
    assert len(lines) == 2
    assert lines[0].startswith("[lightning_al] round 1/2 · 10 labelled · test_accuracy 0.")
    assert lines[1].startswith("[lightning_al] round 2/2 · 15 labelled")


def test_a_model_of_another_architecture_is_refused_before_anything_is_restored(tmp_path):
    make_loop(tmp_path, strategy=Random()).run(fresh_model(), make_dm())
    dm = make_dm()
    with pytest.raises(ValueError, match=r"the model to match the one saved in `.*state.pt`, but its weights do not"):
        make_loop(tmp_path, strategy=Random()).run(TinyClassifier(hidden=8), dm, resume=True)
    assert dm.num_labelled == 10
