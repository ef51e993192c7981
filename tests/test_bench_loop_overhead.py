"""The loop-overhead benchmark: round spans cover the run, parts add up to the round, suite rows are consistent."""

from __future__ import annotations

import json

import pytest

from benchmarks import loop_overhead
from benchmarks.loop_overhead import TOTAL, TRAINERS, RoundBreakdown, measure, suite_rows


def test_breakdown_of_a_row_by_hand() -> None:
    row = {"train_seconds": 1.0, "score_seconds": 0.5, "test_seconds": 0.25, "select_seconds": 0.125}
    parts = RoundBreakdown.of(row, span=2.0, fit_epochs=0.75)
    assert parts.bookkeeping == pytest.approx(2.0 - 1.0 - 0.5 - 0.25 - 0.125)
    assert parts.overhead == pytest.approx(0.25 + 0.125 + 0.125)
    last = RoundBreakdown.of({"train_seconds": 1.0, "test_seconds": 0.25}, span=1.5, fit_epochs=0.5)
    assert (last.scoring, last.selection, last.bookkeeping) == (0.0, 0.0, pytest.approx(0.25))
    mean = RoundBreakdown.mean([parts, last])
    assert (mean.total, mean.fit, mean.scoring, mean.fit_epochs) == pytest.approx((1.75, 1.0, 0.25, 0.625))
    with pytest.raises(ValueError, match="at least one round"):
        RoundBreakdown.mean([])


def test_round_spans_cover_the_run_and_nest_the_loop_timings(tmp_path) -> None:
    run = measure(n=500, rounds=2, query_size=50, initial_labelled=50, output_dir=tmp_path)
    assert [row["round"] for row in run.history] == [0, 1, 2]
    assert [row["num_labelled"] for row in run.history] == [50, 100, 150]
    # The run is its rounds end to end: only the return after the last round's hook is left out.
    assert 0 <= run.run_seconds - sum(run.spans) < 0.05
    for row, parts in zip(run.history, run.rounds, strict=True):
        timed = sum(row.get(key, 0.0) for key in ("train_seconds", "score_seconds", "test_seconds", "select_seconds"))
        assert 0 < timed <= parts.total
        assert 0 < parts.fit_epochs <= parts.fit
    assert "score_seconds" not in run.history[-1] and run.final.scoring == 0.0
    assert run.steady == run.rounds[1]
    assert (tmp_path / "state.pt").is_file()
    assert len(json.loads((tmp_path / "history.json").read_text())) == 3


def test_quick_suite_rows_are_consistent() -> None:
    rows = suite_rows(quick=True)
    total, *parts, trainers = rows
    assert trainers.case == TRAINERS and trainers.seconds > 0 and 0 < trainers.ratio < 1
    assert total.case == TOTAL and total.reference == "" and total.seconds > 0
    by_case = {row.case.split(" (")[0]: row for row in parts}
    assert set(by_case) == {"fit", "scoring", "test", "selection", "bookkeeping", "overhead"}
    for row in parts:
        assert row.reference == TOTAL
        assert row.seconds >= 0 and 0 <= row.ratio <= 1
        assert row.ratio == pytest.approx(row.seconds / total.seconds)
    assert min(by_case[name].seconds for name in ("fit", "scoring", "test")) > 0
    summed = sum(by_case[name].seconds for name in ("fit", "scoring", "test", "selection", "bookkeeping"))
    assert summed == pytest.approx(total.seconds, rel=1e-6)
    overhead = by_case["overhead"].seconds
    assert overhead == pytest.approx(sum(by_case[name].seconds for name in ("test", "selection", "bookkeeping")))
    assert by_case["fit"].seconds + by_case["scoring"].seconds + overhead == pytest.approx(total.seconds)


@pytest.mark.parametrize(
    "argv",
    [["--rounds", "1"], ["--n", "0"], ["--epochs", "0"], ["--n", "1000", "--initial", "700"], ["--threads", "0"]],
)
def test_cli_refuses_bad_arguments(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit):
        loop_overhead.main(argv)
    assert "must be" in capsys.readouterr().err


def test_measure_names_the_bad_argument() -> None:
    with pytest.raises(ValueError, match=r"`rounds`.*>= 2.*got 1"):
        measure(rounds=1)
    with pytest.raises(ValueError, match=r"`initial_labelled`.*got 0"):
        measure(n=100, rounds=2, query_size=10, initial_labelled=0)
