"""The learning-curve benchmark's settings: a dataset, a protocol, and the arms that run on it.

A :class:`Setting` fixes everything a run depends on except the arm and the seed, and states it
(:meth:`Setting.protocol`) so the tables say how they were made. :data:`SETTINGS` is the registry
the command line picks from; a new setting is one more entry.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset, TensorDataset

from benchmarks.arms import ARMS, COLD_START_ONLY_ARMS, DIGITS_FEATURE_ARMS, VARIANT_ARMS
from benchmarks.glyphs import glyphs
from lightning_al.datasets import Digits

# Labels needed to reach each of these test accuracies are tabulated.
TARGETS = (0.8, 0.9, 0.95)
# 18 queries of 10 (20 -> 200 labels). Every fit is 10 epochs of at least 20 steps: 200 optimizer steps up to 640
# labels, the labelled set repeated within an epoch. Measured on digits, 3 seeds, AULC / Random: with 25 epochs of at
# least 4 steps (100-175 steps) BALD scored 0.955, BatchBALD 0.936, MeanSTD 0.979 and BALD with Bayes by backprop
# 0.947 -- MC-dropout disagreement of an undertrained model is noise -- while 10 x 20 steps gave 1.030, 1.035, 1.035
# and 1.027, close to 50 epochs of at least 4 steps (1.039, 1.039, 1.042, 1.042) at about half its cost.
PROTOCOL_ROUNDS = 18
PROTOCOL_EPOCHS = 10
PROTOCOL_MIN_STEPS = 20


@dataclass(frozen=True)
class Setting:
    """One benchmark setting: its data, the active-learning protocol, and the arms compared on it.

    Attributes:
        name: folder and file stem of the setting's results.
        data: builds ``(pool, test)``; items ``(x, y)`` with ``x`` of shape ``(64,)``.
        recipe: how the data is made and what the metric means, in words (written into the table).
        arms: names in :data:`benchmarks.arms.ARMS`, in table order; ``"Random"`` first (the AULC reference).
        initial: labels drawn uniformly at random from the pool before round 0.
        query_size: labels acquired per round.
        rounds: number of queries (``rounds + 1`` fits).
        epochs: ``max_epochs`` of every fit (weights reset to the same initial values each round).
        seeds: seeds ``0..seeds-1`` (initial labels, initial weights, training order, random choices).
        batch_size: training batch size.
        min_steps_per_epoch: the labelled set is repeated so that an epoch has at least this many steps.
        metric: the history key the curves plot and the table reads.
    """

    name: str
    data: Callable[[], tuple[Dataset, Dataset]]
    recipe: str
    arms: tuple[str, ...]
    initial: int
    query_size: int
    rounds: int
    epochs: int
    seeds: int = 3
    batch_size: int = 32
    min_steps_per_epoch: int = PROTOCOL_MIN_STEPS
    metric: str = "test_accuracy"

    def __post_init__(self) -> None:
        unknown = [arm for arm in self.arms if arm not in ARMS]
        if unknown:
            raise ValueError(f"Expected `arms` to be names in benchmarks.arms.ARMS, but got unknown {unknown}.")
        if not self.arms or self.arms[0] != "Random":
            raise ValueError(f"Expected `arms` to start with 'Random' (the reference), but got {self.arms[:1]}.")

    @property
    def label_grid(self) -> list[int]:
        """Label counts of the fits: ``initial + r · query_size`` for ``r = 0..rounds``."""
        return [self.initial + r * self.query_size for r in range(self.rounds + 1)]

    def protocol(self) -> dict[str, Any]:
        """What a run of this setting depends on besides its arm and seed (compared when resuming)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields.pop("data")
        fields["arms"] = list(self.arms)
        return fields

    def quick(self) -> Setting:
        """The smoke-test protocol: 2 rounds of 2 epochs, one seed."""
        return dataclasses.replace(self, rounds=2, epochs=2, seeds=1)


def balanced_digits() -> tuple[Dataset, Dataset]:
    """scikit-learn's digits: the fixed stratified split of :class:`~lightning_al.datasets.Digits` (1,203 / 594)."""
    return Digits("pool"), Digits("test")


def imbalanced_digits(rarest_fraction: float = 0.1, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Digits whose pool keeps a geometric share of each class; the test set stays the balanced one.

    Class ``c`` keeps ``round(n_c · rarest_fraction^(c / 9))`` of its ``n_c`` pool samples, drawn with
    ``seed``: with 0.1, digit 0 keeps all 119, digit 9 keeps 12 of 121, 491 in all.
    """
    if not 0 < rarest_fraction <= 1:
        raise ValueError(f"Expected `rarest_fraction` to be in (0, 1], but got {rarest_fraction}.")
    pool, test = Digits("pool"), Digits("test")
    x_N_D, y_N = pool.tensors
    generator = torch.Generator().manual_seed(seed)
    kept = []
    for c in range(10):
        ids = (y_N == c).nonzero().squeeze(1)
        count = round(ids.numel() * rarest_fraction ** (c / 9))
        kept.append(ids[torch.randperm(ids.numel(), generator=generator)[:count]])
    ids = torch.cat(kept).sort().values
    return TensorDataset(x_N_D[ids], y_N[ids]), test


EVERY_ARM = tuple(arm for arm in ARMS if arm not in COLD_START_ONLY_ARMS and arm not in VARIANT_ARMS)

SETTINGS: dict[str, Setting] = {
    "digits": Setting(
        name="digits",
        data=balanced_digits,
        recipe=(
            "scikit-learn digits (8x8, scaled to [0, 1]); fixed stratified split: a pool of 1,203 and a test set "
            "of 594 (58-60 per class). Metric: accuracy on the test set."
        ),
        arms=EVERY_ARM,
        initial=20,
        query_size=10,
        rounds=PROTOCOL_ROUNDS,
        epochs=PROTOCOL_EPOCHS,
    ),
    "digits_imbalanced": Setting(
        name="digits_imbalanced",
        data=imbalanced_digits,
        recipe=(
            "digits with an imbalanced pool: class c keeps round(n_c * 0.1^(c/9)) of its pool samples (digit 0 all "
            "119, digit 9 12 of 121; 491 in all, drawn with seed 0); the test set is the balanced one (594, 58-60 "
            "per class), so its accuracy weighs every class alike and equals balanced accuracy to within 0.005. "
            "Initial labels are drawn from the imbalanced pool, so the rare digits start with few or none."
        ),
        arms=EVERY_ARM,
        initial=20,
        query_size=10,
        rounds=PROTOCOL_ROUNDS,
        epochs=PROTOCOL_EPOCHS,
    ),
    "digits_cold_start": Setting(
        name="digits_cold_start",
        data=balanced_digits,
        recipe=(
            "cold start on digits (pool and test as in `digits`): 20 random initial labels and queries of 5, up "
            "to 100 labels (10 per class), where uncertainty estimates of a model trained on a few dozen labels "
            "mean little. TypiClust, ProbCover and BudgetAware's low-budget part use a fixed 20-dimensional PCA "
            "of the pixels (no labels used); the -SimCLR arms use SimCLR features pre-trained on the pool's images "
            "(benchmarks/arms.py, no labels used). Metric: accuracy on the test set."
        ),
        arms=(
            *("Random", "Entropy", "BALD", "BADGE", "TypiClust", "ProbCover", "BudgetAware", "BudgetAware-default"),
            *COLD_START_ONLY_ARMS,
        ),
        initial=20,
        query_size=5,
        rounds=16,
        epochs=PROTOCOL_EPOCHS,
    ),
    "glyphs": Setting(
        name="glyphs",
        data=glyphs,
        recipe=(
            "generated 8x8 glyphs (benchmarks/glyphs.py): ten stroke shapes (bars, diagonals, plus, cross, square, "
            "ring, corner, tee) under a random shift of up to 1 pixel, random intensity, a soft blur and pixel noise "
            "(sd 0.1); a pool of 1,200 and a test set of 600 (120 and 60 per class, drawn with seeds 0 and 1). The "
            "digits MLP reaches about 40 % with 20 random labels, 87 % with 200 and 96 % with the whole pool. The "
            "arms with a frozen PCA of the digit images (TypiClust, ProbCover, BudgetAware) are left out. Metric: "
            "accuracy on the test set."
        ),
        arms=tuple(arm for arm in EVERY_ARM if arm not in DIGITS_FEATURE_ARMS),
        initial=20,
        query_size=10,
        rounds=PROTOCOL_ROUNDS,
        epochs=PROTOCOL_EPOCHS,
    ),
    "glyphs_cold_start": Setting(
        name="glyphs_cold_start",
        data=glyphs,
        recipe=(
            "cold start on the glyphs (pool and test as in `glyphs`): 20 random initial labels and queries of 5, up "
            "to 100 labels. Metric: accuracy on the test set."
        ),
        arms=("Random", "Entropy", "BALD", "BADGE", "BudgetAware-default"),
        initial=20,
        query_size=5,
        rounds=16,
        epochs=PROTOCOL_EPOCHS,
    ),
}
