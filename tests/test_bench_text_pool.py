"""The text-pool scoring benchmark runs on a tiny pool and measures every method against the floor."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from benchmarks import text_pool


def test_text_pool_lengths_and_padding() -> None:
    pool = text_pool.text_pool(200)
    lengths = [len(item["input_ids"]) for item in pool]
    assert min(lengths) >= 16 and max(lengths) <= 128 and len(set(lengths)) > 50
    batch = text_pool.text.pad_collate([pool[0], pool[1]])
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, max(lengths[:2]))


def test_text_pool_benchmark_measures_each_method() -> None:
    seconds = text_pool.measure(n=48, mc_samples=3, batch_size=16, repeats=1, query_size=5)
    assert next(iter(seconds)) == text_pool.FLOOR
    assert len(seconds) == 4 and all(value > 0 for value in seconds.values())
