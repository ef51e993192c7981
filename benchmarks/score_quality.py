"""Do a strategy's scores point at the samples the current model gets wrong? Round by round, on the whole pool.

Runs a setting's protocol (default ``digits``: same data, initial labels, query size, epochs, steps, model
and callbacks as :func:`benchmarks.learning_curves.run_arm`) for ``--rounds`` queries. In every round,
after the fit and right after the strategy has chosen its query, it measures on the unlabelled pool, with
the pool's true labels:

- the fitted model's cross-entropy ``-log p(y | x)`` of each sample and whether its argmax is wrong;
- for a :class:`~lightning_al.strategies.base.ScoreStrategy`: its scores of the whole pool, their Spearman
  rank correlation with that loss and their AUROC for "misclassified" (Mann-Whitney);
- for every strategy: the share of its ``k`` picks that the model misclassifies (*hit rate*), beside the
  pool's error rate (Random's hit rate in expectation), and the number of true classes among the picks,
  beside the number Random is expected to cover.

Writes a markdown table (mean ± sample std over rounds and seeds) and the hit rate round by round to
``--output``, and prints them.

    python -m benchmarks.score_quality
    python -m benchmarks.score_quality --arms Entropy VAAL --seeds 1 --rounds 4 --workers 1
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

import lightning_al as al
from benchmarks.arms import ARMS
from benchmarks.learning_curves import prepare_run
from benchmarks.settings import SETTINGS, Setting
from lightning_al.data.datamodule import ActiveDataModule
from lightning_al.estimators import Softmax
from lightning_al.functional import topk_select
from lightning_al.outputs import PROBS
from lightning_al.scoring import TARGETS, predict_outputs
from lightning_al.strategies.base import ScoreStrategy, Selection

DEFAULT_ARMS = ("Random", "Entropy", "LossPrediction", "VAAL", "SuggestiveAnnotation")
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "score_quality.md"
# (key of a diagnostic row, column header), in table order.
COLUMNS = (
    ("spearman", "Spearman(score, loss)"),
    ("auroc", "AUROC(score, error)"),
    ("hit_rate", "hit rate of picks"),
    ("pool_error_rate", "pool error rate"),
    ("pick_classes", "classes among picks"),
    ("random_classes", "classes, random picks (expected)"),
)


# ----- rank statistics ---------------------------------------------------------------------------------------
def _finite_vector(name: str, values: Tensor) -> Tensor:
    if not isinstance(values, Tensor) or values.ndim != 1:
        raise ValueError(f"Expected `{name}` to be a 1-d tensor, but got {getattr(values, 'shape', type(values))}.")
    values = values.detach().double().cpu()
    if not torch.isfinite(values).all():
        raise ValueError(f"Expected `{name}` to be finite, but it holds NaN or inf.")
    return values


def average_ranks(values_N: Tensor) -> Tensor:
    """1-based ranks ``(N,)`` in float64, ascending; tied values share the mean of the ranks they span."""
    values_N = _finite_vector("values_N", values_N)
    sorted_N, order_N = torch.sort(values_N, stable=True)
    _, counts_G = torch.unique_consecutive(sorted_N, return_counts=True)
    last_rank_G = counts_G.cumsum(0).double()
    mean_rank_G = last_rank_G - (counts_G.double() - 1) / 2  # mean of last - count + 1 .. last
    ranks_N = torch.empty_like(values_N)
    ranks_N[order_N] = mean_rank_G.repeat_interleave(counts_G)
    return ranks_N


def spearman(x_N: Tensor, y_N: Tensor) -> float:
    """Spearman's rank correlation: the Pearson correlation of the average ranks of ``x_N`` and ``y_N``.

    In ``[-1, 1]``; NaN when either is constant (its ranks have no variance). Ties get average ranks.
    """
    if x_N.shape != y_N.shape or x_N.ndim != 1 or x_N.numel() < 2:
        raise ValueError(
            f"Expected `x_N` and `y_N` to be 1-d of one shape with at least 2 values, "
            f"but got {tuple(x_N.shape)} and {tuple(y_N.shape)}."
        )
    rx_N, ry_N = average_ranks(x_N), average_ranks(y_N)
    rx_N, ry_N = rx_N - rx_N.mean(), ry_N - ry_N.mean()
    norm = float((rx_N.square().sum() * ry_N.square().sum()).sqrt())
    return float((rx_N * ry_N).sum()) / norm if norm > 0 else math.nan


def auroc(scores_N: Tensor, positive_N: Tensor) -> float:
    """``P(score of a random positive > score of a random negative)``, ties counting 1/2 (Mann-Whitney U).

    ``U = sum of the positives' average ranks - n_pos (n_pos + 1) / 2``, AUROC ``= U / (n_pos n_neg)``.
    1 = every positive scores above every negative, 0 = below, 0.5 = chance; NaN without both classes.
    """
    if positive_N.dtype != torch.bool or positive_N.shape != scores_N.shape:
        raise ValueError(
            f"Expected `positive_N` to be a bool tensor of the shape of `scores_N` {tuple(scores_N.shape)}, "
            f"but got {positive_N.dtype} of shape {tuple(positive_N.shape)}."
        )
    ranks_N = average_ranks(scores_N)
    n_pos = int(positive_N.sum())
    n_neg = positive_N.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    u = float(ranks_N[positive_N.cpu()].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def expected_classes(labels_N: Tensor, k: int) -> float:
    """Expected number of distinct classes among ``k`` of ``labels_N`` drawn without replacement.

    ``sum_c 1 - C(N - n_c, k) / C(N, k)`` (class ``c`` is missed only if all ``k`` come from the rest).
    """
    n = labels_N.numel()
    total = math.comb(n, k)
    return sum(1 - math.comb(n - int(count), k) / total for count in labels_N.unique(return_counts=True)[1])


# ----- the measuring loop ------------------------------------------------------------------------------------
class ScoreQualityLoop(al.ActiveLearningLoop):
    """An :class:`~lightning_al.ActiveLearningLoop` that measures each query against the pool's true labels.

    After the strategy has selected (as the plain loop does), it predicts the whole unlabelled pool with the
    fitted model and, for a ``ScoreStrategy``, scores the whole pool once more with the strategy's estimator;
    one row per query lands in :attr:`diagnostics`. These extra passes come after the selection and touch
    neither the loop's generator nor the training seeds (every fit reseeds), so with deterministic estimators
    the queries are those of the learning-curve run. A stochastic estimator (MC dropout) draws new samples in
    the second pass, so its scores are close to, not equal to, those the selection used:
    ``picks_are_top_scores`` says whether the top ``k`` agree.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.pool_subset is not None:
            raise ValueError(
                f"Expected `pool_subset` to be None (the whole pool is measured), but got {self.pool_subset}."
            )
        self.diagnostics: list[dict[str, Any]] = []

    def _score_and_select(self, model: pl.LightningModule, dm: ActiveDataModule, k: int, row: dict[str, Any]) -> Any:
        outputs, selection = super()._score_and_select(model, dm, k, row)
        self.diagnostics.append(self._diagnose(model, dm, selection))
        return outputs, selection

    def _diagnose(self, model: pl.LightningModule, dm: ActiveDataModule, selection: Selection) -> dict[str, Any]:
        ids_N = dm.unlabelled_ids
        truth = predict_outputs(
            self._eval_trainer(), model, dm.pool_dataloader(ids_N), Softmax(), frozenset({PROBS}), dm.inputs, dm.targets
        )
        if not torch.equal(truth.ids, ids_N):
            raise RuntimeError("Expected the pool predictions in ascending id order, but they came in another order.")
        probs_N_C, labels_N = truth[PROBS].double(), truth[TARGETS].long()
        loss_N = -probs_N_C.gather(1, labels_N[:, None]).squeeze(1).clamp_min(torch.finfo(torch.float64).tiny).log()
        wrong_N = probs_N_C.argmax(dim=1) != labels_N
        picks_K = torch.searchsorted(ids_N, selection.ids)
        k = picks_K.numel()
        diagnostic: dict[str, Any] = {
            "round": self.round,
            "num_labelled": dm.num_labelled,
            "pool_error_rate": float(wrong_N.double().mean()),
            "hit_rate": float(wrong_N[picks_K].double().mean()),
            "pick_classes": int(labels_N[picks_K].unique().numel()),
            "random_classes": expected_classes(labels_N, k),
            "spearman": math.nan,
            "auroc": math.nan,
        }
        if isinstance(self.strategy, ScoreStrategy):
            outputs = self._gathered_outputs(model, dm, ids_N, frozenset(self.strategy.requires))
            labelled_needs = frozenset(self.strategy.requires_labelled)
            if labelled_needs and dm.num_labelled:
                outputs.labelled = self._gathered_outputs(model, dm, dm.labelled_ids, labelled_needs)
            scores_N = self.strategy.score(outputs).double().cpu()
            diagnostic["spearman"] = spearman(scores_N, loss_N)
            diagnostic["auroc"] = auroc(scores_N, wrong_N)
            top_K = ids_N[topk_select(scores_N, k)]
            diagnostic["picks_are_top_scores"] = set(top_K.tolist()) == set(selection.ids.tolist())
        return diagnostic


def measure_arm(setting: Setting, arm_name: str, seed: int, rounds: int) -> list[dict[str, Any]]:
    """Run ``rounds`` queries of ``setting``'s protocol with one arm and seed; one diagnostic row per query."""
    datamodule, model, loop_kwargs = prepare_run(setting, arm_name, seed)
    loop = ScoreQualityLoop(**{**loop_kwargs, "rounds": rounds})
    loop.run(model, datamodule)
    return [{"arm": arm_name, "seed": seed, **row} for row in loop.diagnostics]


# ----- tables ------------------------------------------------------------------------------------------------
def mean_std(values: list[float], digits: int = 3) -> str:
    """``mean ± sample std`` of the finite values (``—`` if none; std 0 for one value)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "—"
    mean = sum(finite) / len(finite)
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1)) if len(finite) > 1 else 0.0
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def summary_table(rows: list[dict[str, Any]], arms: list[str]) -> str:
    """One line per arm: each column of :data:`COLUMNS` as mean ± std over its rounds and seeds."""
    lines = [
        "| strategy | " + " | ".join(header for _, header in COLUMNS) + " | rounds × seeds |",
        "|---" * (len(COLUMNS) + 2) + "|",
    ]
    for arm in arms:
        mine = [row for row in rows if row["arm"] == arm]
        if not mine:
            continue
        cells = [mean_std([float(row[key]) for row in mine], 2 if "classes" in key else 3) for key, _ in COLUMNS]
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {len(mine)} |")
    return "\n".join(lines)


def hit_rate_by_round(rows: list[dict[str, Any]], arms: list[str]) -> str:
    """Per arm and round: mean over seeds of the picks' hit rate / the pool's error rate."""
    rounds = sorted({row["round"] for row in rows})
    labels = {row["round"]: row["num_labelled"] for row in rows}
    lines = [
        "| strategy | " + " | ".join(f"{labels[r]} labels" for r in rounds) + " |",
        "|---" * (len(rounds) + 1) + "|",
    ]

    def cell(selected: list[dict[str, Any]]) -> str:
        if not selected:
            return "—"
        hit = sum(row["hit_rate"] for row in selected) / len(selected)
        error = sum(row["pool_error_rate"] for row in selected) / len(selected)
        return f"{hit:.2f} / {error:.2f}"

    for arm in arms:
        mine = [row for row in rows if row["arm"] == arm]
        if mine:
            lines.append(f"| {arm} | " + " | ".join(cell([r for r in mine if r["round"] == n]) for n in rounds) + " |")
    return "\n".join(lines)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def protocol_text(setting: Setting, arms: list[str], seeds: int, rounds: int) -> str:
    """The protocol and the columns in words, for the head of the table."""
    seed_range = "seed 0" if seeds == 1 else f"seeds 0-{seeds - 1}"
    last = setting.initial + (rounds - 1) * setting.query_size
    at = f"{setting.initial}" if rounds == 1 else f"{setting.initial}-{last}"
    return (
        f"**Data.** {setting.recipe}\n\n"
        f"**Protocol.** The `{setting.name}` learning-curve protocol (benchmarks/settings.py), cut to "
        f"{rounds} {'query' if rounds == 1 else 'queries'}: {setting.initial} random initial labels, "
        f"queries of {setting.query_size}, the model refitted from the same initial weights for "
        f"{_plural(setting.epochs, 'epoch')} of at least {setting.min_steps_per_epoch} steps (batch "
        f"{setting.batch_size}), one CPU thread, {seed_range}. Strategies: {', '.join(arms)} (benchmarks/arms.py). "
        f"Each query (at {at} labels) is measured against the true labels of the whole unlabelled pool; every "
        "figure is mean ± sample std over queries and seeds.\n\n"
        "**Columns.** *Spearman(score, loss)*: rank correlation between the strategy's scores of the pool and "
        "the fitted model's cross-entropy -log p(y|x); *AUROC(score, error)*: probability that a misclassified "
        "sample scores above a correctly classified one (ties 1/2); both only for strategies that score each "
        "sample (for those with a stochastic estimator, from a second scoring pass). *Hit rate of picks*: "
        "share of the query the model misclassifies; *pool error rate*: share of the pool it misclassifies, "
        "i.e. Random's hit rate in expectation. *Classes among picks*: distinct true classes in the query; "
        "*classes, random picks*: the expected number for a uniformly random query of the same size."
    )


# ----- command line ------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=list(SETTINGS), default="digits", help="default: digits")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(DEFAULT_ARMS))
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (0..n-1), default 3")
    parser.add_argument("--rounds", type=int, default=8, help="queries per run, default 8")
    parser.add_argument("--workers", type=int, default=2, help="parallel runs, default 2")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"default: {DEFAULT_OUTPUT}")
    args = parser.parse_args(argv)
    for name in ("seeds", "rounds", "workers"):
        if getattr(args, name) < 1:
            parser.error(f"Expected --{name} to be at least 1, but got {getattr(args, name)}.")
    args.arms = list(dict.fromkeys(args.arms))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setting = SETTINGS[args.setting]
    start = time.perf_counter()
    jobs = [(arm, seed) for arm in args.arms for seed in range(args.seeds)]
    print(f"{len(jobs)} runs of {args.rounds} queries on {args.workers} workers → {args.output}", flush=True)
    rows: list[dict[str, Any]] = []
    failures = []
    with ProcessPoolExecutor(max_workers=args.workers) as executor:
        futures: dict[Future, tuple[str, int]] = {
            executor.submit(measure_arm, setting, arm, seed, args.rounds): (arm, seed) for arm, seed in jobs
        }
        for future in futures:
            arm, seed = futures[future]
            if future.exception() is not None:
                failures.append((arm, seed))
                print(f"{arm} seed {seed} failed: {future.exception()!r}", file=sys.stderr, flush=True)
            else:
                rows += future.result()
                print(f"{arm} seed {seed} done ({time.perf_counter() - start:.0f} s)", flush=True)
    disagreeing = sorted({row["arm"] for row in rows if row.get("picks_are_top_scores") is False})
    text = (
        f"# Score quality: {setting.name}\n\n{protocol_text(setting, args.arms, args.seeds, args.rounds)}\n\n"
        f"{summary_table(rows, args.arms)}\n\n"
        "**Hit rate of picks / pool error rate, by number of labels** (mean over seeds).\n\n"
        f"{hit_rate_by_round(rows, args.arms)}\n"
    )
    if disagreeing:
        text += (
            f"\nThe second scoring pass ranked other top-{setting.query_size} samples for: {', '.join(disagreeing)}.\n"
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"\n{text}\nwritten to {args.output}; wall time {time.perf_counter() - start:.0f} s")
    if failures:
        print(f"{len(failures)} runs failed: {failures}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
