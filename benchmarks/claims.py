"""Each method's published claim beside its AULC ÷ Random in every learning-curve setting.

Reads the tables :mod:`benchmarks.learning_curves` wrote to ``benchmarks/results/<setting>.md`` (and
:mod:`benchmarks.task_curves` to ``tasks.md``) and writes
``benchmarks/results/claims.md``: one row per arm with the paper, what the paper claims and in which regime,
the setting here closest to that regime, and the area under the learning curve divided by Random's
(mean ± std over seeds) in each setting; the cell of the closest setting is in bold.

    python -m benchmarks.claims
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
AULC_HEADER = "AULC ÷ Random"
# Column key -> (title, result file, header of its AULC column): the learning-curve settings, then the tasks'.
COLUMNS: dict[str, tuple[str, str, str]] = {
    "digits": ("digits", "digits.md", AULC_HEADER),
    "digits_imbalanced": ("imbalanced", "digits_imbalanced.md", AULC_HEADER),
    "digits_cold_start": ("cold start", "digits_cold_start.md", AULC_HEADER),
    "glyphs": ("glyphs", "glyphs.md", AULC_HEADER),
    "glyphs_cold_start": ("glyphs, cold start", "glyphs_cold_start.md", AULC_HEADER),
    "multilabel": ("multi-label", "tasks.md", f"multilabel: {AULC_HEADER}"),
    "segmentation": ("segmentation", "tasks.md", f"segmentation: {AULC_HEADER}"),
}


@dataclass(frozen=True)
class Claim:
    """What a method's paper reports and the setting here closest to the paper's regime.

    Attributes:
        paper: authors and year.
        claim: the paper's claim and its regime (data, budget, representation), in a few words.
        regime: the setting (a key of :data:`COLUMNS`) closest to that regime.
    """

    paper: str
    claim: str
    regime: str


_UNCERTAINTY = "fewer labels than random for the same accuracy, warm start"
_MNIST = "MNIST, 20 balanced labels, queries of 10: about 40 % of Random's labels to 5 % error"
_LOW_BUDGET = "below 1 label per class and a few per class, on self-supervised features: above Random and uncertainty"

CLAIMS: dict[str, Claim] = {
    "Random": Claim("—", "the reference", "digits"),
    "LeastConfidence": Claim("Lewis & Gale 1994; Settles 2009", _UNCERTAINTY, "digits"),
    "Margin": Claim("Scheffer et al. 2001", _UNCERTAINTY, "digits"),
    "Entropy": Claim("Shannon 1948; Settles 2009", _UNCERTAINTY, "digits"),
    "BALD": Claim("Houlsby et al. 2011; Gal et al. 2017", _MNIST, "digits"),
    "BatchBALD": Claim(
        "Kirsch et al. 2019", "MNIST, batches of 10: as good as BALD one at a time, above top-10 BALD", "digits"
    ),
    "VariationRatios": Claim("Freeman 1965; Gal et al. 2017", _MNIST, "digits"),
    "MeanSTD": Claim(
        "Kampffmeyer et al. 2016; Gal et al. 2017", "MNIST: above Random, below BALD and variation ratios", "digits"
    ),
    "QBC-ensemble": Claim(
        "Beluch et al. 2018", "CIFAR-10 / ImageNet: deep ensembles above MC dropout and Random", "digits"
    ),
    "BALD-BayesByBackprop": Claim(
        "Blundell et al. 2015; Houlsby et al. 2011", "BALD with a variational posterior: above Random", "digits"
    ),
    "MaxEntropy": Claim("Gal et al. 2017", _MNIST, "digits"),
    "CoreSet": Claim("Sener & Savarese 2018", "CIFAR, 5,000-label batches: above uncertainty and Random", "digits"),
    "BADGE": Claim("Ash et al. 2020", "any batch size and model: at least as good as the best baseline", "digits"),
    "DiverseMiniBatch": Claim("Zhdanov 2019", "MNIST / CIFAR batches: above margin and Random", "digits"),
    "EGL": Claim("Settles et al. 2008; Huang et al. 2016", "speech and text: above entropy and Random", "digits"),
    "CAL": Claim(
        "Margatina et al. 2021", "text, fine-tuned BERT (pretrained features): above BADGE and Random", "digits"
    ),
    "LabelDispersion": Claim("Bengar et al. 2021", "CIFAR, thousands of labels: above Random and entropy", "digits"),
    "LossPrediction": Claim("Yoo & Kweon 2019", "CIFAR-10, 1,000-label queries: above entropy and core-set", "digits"),
    "VAAL": Claim("Sinha et al. 2019", "CIFAR / ImageNet from 10 % labelled: above core-set and MC dropout", "digits"),
    "CEAL": Claim(
        "Wang et al. 2016", "faces / objects, pseudo-labels of confident samples: above its base criterion", "digits"
    ),
    "MAL": Claim("Ebrahimi et al. 2021", "semi-supervised features: above VAAL and Random", "digits"),
    "TwoStage": Claim("library composition", "— (margin pre-filter, core-set on it)", "digits"),
    "WeightedMix": Claim("library composition", "— (rank mix of margin and EGL)", "digits"),
    "SuggestiveAnnotation": Claim(
        "Yang et al. 2017", "gland segmentation, FCN committee: above uncertainty alone", "segmentation"
    ),
    "SelectionViaProxy": Claim(
        "Coleman et al. 2020", "CIFAR / ImageNet: a smaller proxy selects as well as the target", "digits"
    ),
    "TypiClust": Claim("Hacohen et al. 2022", _LOW_BUDGET, "digits_cold_start"),
    "ProbCover": Claim("Yehuda et al. 2022", _LOW_BUDGET, "digits_cold_start"),
    "BudgetAware": Claim(
        "library default (Hacohen et al. 2022)", "typicality at low budgets, BADGE above them", "digits_cold_start"
    ),
    "BudgetAware-default": Claim(
        "library default", "as BudgetAware, on the task model's own features", "digits_cold_start"
    ),
    "TypiClust-SimCLR": Claim("Hacohen et al. 2022", _LOW_BUDGET + " (SimCLR, as the paper)", "digits_cold_start"),
    "ProbCover-SimCLR": Claim("Yehuda et al. 2022", _LOW_BUDGET + " (SimCLR, as the paper)", "digits_cold_start"),
    "BudgetAware-SimCLR": Claim(
        "library default (Hacohen et al. 2022)", "as BudgetAware, on SimCLR features", "digits_cold_start"
    ),
    "BatchBALD-sequential": Claim("Kirsch et al. 2019", "as BatchBALD (the earlier sampling of the joint)", "digits"),
    "SelectionViaProxy-same-init": Claim(
        "Coleman et al. 2020", "as SelectionViaProxy (the proxy reset to the same weights)", "digits"
    ),
}


def _cells(line: str) -> list[str]:
    """The stripped cells of a markdown table row."""
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def read_aulc(table: str, header: str = AULC_HEADER) -> dict[str, str]:
    """The ``header`` cell of each strategy in the first table of a result (markdown) that has that column."""
    lines = table.splitlines()
    starts = [i for i, line in enumerate(lines) if _cells(line)[0] == "strategy" and header in _cells(line)]
    if not starts:
        raise ValueError(f"Expected a table with a 'strategy' and an {header!r} column, but found none.")
    column = _cells(lines[starts[0]]).index(header)
    out = {}
    for line in lines[starts[0] + 2 :]:
        if not line.startswith("|"):
            break
        cells = _cells(line)
        out[cells[0]] = cells[column]
    return out


def claims_table(results: Path = RESULTS) -> str:
    """The markdown table of every arm of any column whose result file is in ``results``."""
    keys = [key for key, (_, file, _) in COLUMNS.items() if (results / file).exists()]
    aulc = {key: read_aulc((results / COLUMNS[key][1]).read_text(), COLUMNS[key][2]) for key in keys}
    arms = [arm for arm in CLAIMS if any(arm in aulc[key] for key in keys)]
    missing = [arm for key in keys for arm in aulc[key] if arm not in CLAIMS]
    if missing:
        raise ValueError(f"Expected a claim for every benchmarked arm, but {sorted(set(missing))} have none.")
    header = ["method", "paper", "the paper's claim (its regime)", *(COLUMNS[key][0] for key in keys)]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm in arms:
        claim = CLAIMS[arm]
        cells = []
        for key in keys:
            value = aulc[key].get(arm, "")
            cells.append(f"**{value}**" if value and key == claim.regime else value)
        rows.append("| " + " | ".join([arm, claim.paper, claim.claim, *cells]) + " |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"default: {RESULTS}")
    args = parser.parse_args(argv)
    text = (
        "# The papers' claims beside the learning curves\n\n"
        "AULC ÷ Random, mean ± std over 3 seeds, per setting (`python -m benchmarks.learning_curves`; multi-label "
        "and segmentation: `python -m benchmarks.task_curves`); in bold "
        "the setting closest to the regime of the method's paper. Written by `python -m benchmarks.claims`.\n\n"
        # the table alone, for pages that include it (pymdownx.snippets sections)
        "<!-- --8<-- [start:table] -->\n" + claims_table(args.results) + "<!-- --8<-- [end:table] -->\n"
    )
    (args.results / "claims.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
