"""The whole-experiment benchmark (lightning_al, plain loop, Lightning alone, baal) on a tiny protocol."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks import experiment as ex
from lightning_al import namespace

TINY = ex.Protocol(rounds=2, steps=5)


@pytest.fixture(scope="module")
def results() -> ex.Results:
    return ex.experiment(TINY, seeds=(0,))


def test_every_implementation_runs_the_same_rounds(results: ex.Results) -> None:
    impls = ["lightning_al", "lightning", "plain"] + ([] if "baal" in results.skipped else ["baal"])
    for arm in ex.ARMS:
        for impl in impls:
            (run,) = results.of(impl, arm)
            assert [r.num_labelled for r in run.rounds] == [20, 30, 40]
            assert all(0.0 <= accuracy <= 1.0 for accuracy in run.accuracies)
            picked = [i for r in run.rounds for i in r.selected]
            assert len(picked) == len(set(picked)) == 2 * TINY.query_size
            assert run.rounds[-1].selected == ()
            assert run.seconds >= sum(r.total for r in run.rounds) * 0.99
            assert 0.0 < run.aulc() <= 1.0
    assert results.deterministic() == dict.fromkeys(ex.ARMS, True)
    # Random draws from a generator seeded alike in both: the same picks whatever the fits.
    assert results.of("lightning_al", "Random")[0].selection_hash() == results.of("plain", "Random")[0].selection_hash()


def test_report_and_suite_rows(results: ex.Results) -> None:
    text = ex.report(results)
    for heading in ("## Whole experiment", "## Mean seconds per round", "## Selected ids", "determinism"):
        assert heading in text
    rows = ex.suite_rows_of(results)
    assert len(rows) == len(ex.ARMS) * (len(ex.IMPLS) - len(results.skipped))
    for row in rows:
        assert (row.ratio is None) == row.case.startswith("plain ")
        assert row.seconds > 0


def test_plain_entropy_picks_are_the_top_k_of_an_independent_entropy() -> None:
    seen = []

    def check(net: torch.nn.Module, unlabelled: torch.Tensor, picked: torch.Tensor) -> None:
        x = ex.digits()[0].tensors[0][unlabelled]
        with torch.no_grad():
            logits = net.eval()(x).double().numpy()
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        entropy = -(p * np.log(p)).sum(1)
        top = unlabelled.numpy()[np.argsort(-entropy)[: picked.numel()]]
        assert set(top.tolist()) == set(picked.tolist())
        seen.append(picked)

    torch.set_num_threads(1)
    ex.run_plain("Entropy", 1, TINY, ex.digits(), on_select=check)
    assert len(seen) == TINY.rounds


def test_lightning_al_fits_run_exactly_the_protocol_steps() -> None:
    class Steps(namespace.default().Callback):
        def __init__(self) -> None:
            self.per_fit: list[int] = []

        def on_fit_start(self, trainer, pl_module) -> None:
            self.per_fit.append(0)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.per_fit[-1] += 1

    counter = Steps()
    run = ex.run_lightning_al("Random", 0, TINY, ex.digits(), callbacks=[counter])
    assert counter.per_fit == [TINY.steps] * (TINY.rounds + 1) == [r.steps for r in run.rounds]


def test_missing_baal_is_skipped_and_said(monkeypatch) -> None:
    monkeypatch.setattr(ex, "baal_missing", lambda: "ModuleNotFoundError: No module named 'baal'")
    results = ex.experiment(ex.Protocol(rounds=1, steps=3), seeds=(0,), arms=("Random",), determinism=False)
    assert {run.impl for run in results.runs} == {"lightning_al", "lightning", "plain"}
    assert "skipped baal: ModuleNotFoundError" in ex.report(results)


def test_protocol_and_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="`steps` to be an integer >= 1"):
        ex.Protocol(steps=0)
    with pytest.raises(ValueError, match="cover the final"):
        ex.Protocol(rounds=25, steps=2)
    with pytest.raises(ValueError, match="`arms` to be a non-empty subset"):
        ex.experiment(TINY, arms=("Margin",))
