"""Scoring a padded text pool with a Hugging Face model, against one plain forward pass over the same pool.

The pool is ``N`` token sequences of lengths drawn uniformly from 16 to 128 (random token ids of a
1,000-word vocabulary, ``[CLS]`` first), scored by the tiny randomly initialised
``BertForSequenceClassification`` of ``examples/text_classification.py`` (width 32, 2 layers, 2 heads,
4 classes) wrapped in a ``lightning.pytorch`` module whose ``forward(input_ids, attention_mask)`` returns the
model's ``ModelOutput``. Every loader pads each batch to its longest sequence with the example's collate.

Methods, taking turns, the fastest of ``--repeats`` runs counting (BALD with dropout everywhere, ``T`` full
forward passes, runs once, after the first turn):

- **floor**: a plain ``DataLoader`` over the same dataset with the same collate and batch size,
  ``softmax(model(**inputs).logits)`` in eval mode under ``torch.inference_mode``;
- **Entropy** through the loop's scoring-and-selection step (``ActiveLearningLoop._score_and_select``,
  an ``ActiveDataModule(collate_fn=..., input_key=None)``);
- **BALD** with ``T`` MC-dropout passes, the same way: with the transformer's own dropout everywhere
  (embeddings, attention, hidden layers, classifier: the whole model runs ``T`` times), and with dropout
  in the classifier only (``hidden_dropout_prob = attention_probs_dropout_prob = 0``,
  ``classifier_dropout = 0.1``: the cached-prefix path runs the transformer once and the classifier ``T`` times).

Run: ``python -m benchmarks.text_pool [--n 20000] [--mc-samples 20] [--batch-size 256] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

import lightning_al as al
from benchmarks.scoring import best_times, machine, scoring_step
from benchmarks.suite import SuiteRow

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import text_classification as text

VOCAB, CLASSES, CLS = 1000, 4, 2
FLOOR = "floor: plain forward over the pool loader"


def text_pool(n: int, seed: int = 0) -> text.TextDataset:
    """``n`` sequences of random tokens, lengths uniform in [16, 128], ``[CLS]`` first."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(16, 129, (n,), generator=generator).tolist()
    sequences = [[CLS, *torch.randint(5, VOCAB, (length - 1,), generator=generator).tolist()] for length in lengths]
    return text.TextDataset(sequences, (torch.arange(n) % CLASSES).tolist())


def classifier(classifier_dropout_only: bool, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.1)
    return text.TextClassifier(text.tiny_bert(VOCAB, CLASSES, **(config if classifier_dropout_only else {})))


def plain_forward(model: nn.Module, loader: DataLoader) -> None:
    model.eval()
    with torch.inference_mode():
        for batch in loader:
            torch.softmax(model(batch["input_ids"], batch["attention_mask"]).logits, dim=-1)


def measure(n: int, mc_samples: int, batch_size: int, repeats: int, query_size: int = 100) -> dict[str, float]:
    """Seconds of each method (fastest of ``repeats``, methods taking turns); ``FLOOR`` first."""
    pool = text_pool(n)
    dm = al.ActiveDataModule(
        pool, eval_batch_size=batch_size, collate_fn=text.pad_collate, input_key=None, target_key="labels"
    )
    loader = DataLoader(pool, batch_size=batch_size, collate_fn=text.pad_collate)
    everywhere, head_only = classifier(False), classifier(True)
    T, k = mc_samples, query_size
    entropy = scoring_step(al.strategies.Entropy(), k)
    bald_everywhere = scoring_step(al.strategies.BALD(mc_samples=T), k)
    bald_head = scoring_step(al.strategies.BALD(mc_samples=T), k)
    methods: dict[str, Callable[[], Any]] = {
        FLOOR: lambda: plain_forward(everywhere, loader),
        "Entropy": lambda: entropy(everywhere, dm),
        f"BALD, classifier dropout only (T={T})": lambda: bald_head(head_only, dm),
    }
    slow = {f"BALD, the transformer's own dropout (T={T})": lambda: bald_everywhere(everywhere, dm)}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*MCDropout could not compute the part.*")
        seconds = best_times(methods, 1)  # a warm-up round, and the first of the repeats
        seconds.update(best_times(slow, 1))  # T full passes: timed once, between the repeats
        for name, value in best_times(methods, repeats - 1).items() if repeats > 1 else ():
            seconds[name] = min(seconds[name], value)
    return seconds


def suite_rows(quick: bool = False) -> list[SuiteRow]:
    n = 1_000 if quick else 20_000
    seconds = measure(n, 20, 256, 1 if quick else 3)
    floor = seconds.pop(FLOOR)
    benchmark = f"text pool scoring, tiny BERT, N={n:,} (lengths 16-128, padded per batch)"
    rows = [SuiteRow(benchmark, "plain forward over the pool (floor)", floor)]
    return rows + [SuiteRow(benchmark, name, value, "floor", value / floor) for name, value in seconds.items()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="pool size N")
    parser.add_argument("--mc-samples", type=int, default=20, help="MC-dropout passes T")
    parser.add_argument("--batch-size", type=int, default=256, help="pool batch size")
    parser.add_argument("--repeats", type=int, default=3, help="runs per method (the fastest counts)")
    args = parser.parse_args(argv)
    seconds = measure(args.n, args.mc_samples, args.batch_size, args.repeats)
    floor = seconds[FLOOR]
    print(f"Text pool scoring: N={args.n} sequences, lengths 16-128, batch size {args.batch_size}; tiny BERT")
    print(f"machine: {machine()}; best of {args.repeats} runs")
    print(f"{'method':<52}{'seconds':>10}{'x floor':>10}")
    for name, value in seconds.items():
        print(f"{name:<52}{value:>10.2f}{value / floor:>10.2f}")


if __name__ == "__main__":
    main()
