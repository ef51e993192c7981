"""Active learning on text with a Hugging Face model: a tiny BERT and a WordPiece tokenizer trained on a
generated corpus, variable-length sequences padded per batch, the model called with keyword inputs."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

import lightning_al as al
from lightning_al.estimators.mc_dropout import MCDropout
from lightning_al.outputs import MC_PROBS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import text_classification as text

INITIAL, QUERY, ROUNDS = 8, 8, 2
FALLBACK = "MCDropout could not compute"
CLASSIFIER_DROPOUT_ONLY = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.1)


@pytest.fixture(scope="module")
def corpus():
    """``(tokenizer, pool, test)``: 80 and 40 sentences of 16 to 40 words, tokenised by a locally trained WordPiece."""
    pool_texts, pool_labels = text.make_corpus(80, seed=0, max_words=40)
    test_texts, test_labels = text.make_corpus(40, seed=1, max_words=40)
    tokenizer = text.train_tokenizer(pool_texts)
    pool = text.TextDataset.tokenize(tokenizer, pool_texts, pool_labels, max_length=64)
    test = text.TextDataset.tokenize(tokenizer, test_texts, test_labels, max_length=64)
    return tokenizer, pool, test


def datamodule(pool, test, collate=text.pad_collate) -> al.ActiveDataModule:
    return al.ActiveDataModule(
        pool,
        test_set=test,
        initial_labelled=INITIAL,
        num_classes=4,
        batch_size=8,
        eval_batch_size=32,
        collate_fn=collate,
        input_key=None,
        target_key="labels",
        seed=0,
    )


def model(tokenizer, **config) -> text.TextClassifier:
    torch.manual_seed(0)
    return text.TextClassifier(text.tiny_bert(tokenizer.vocab_size, 4, **config), lr=3e-3)


def run(module, dm, strategy) -> list[dict]:
    loop = al.ActiveLearningLoop(
        strategy, query_size=QUERY, rounds=ROUNDS, trainer_kwargs=dict(max_epochs=1, accelerator="cpu"), progress=False
    )
    return loop.run(module, dm)


def test_tokenizer_dataset_and_padding(corpus):
    tokenizer, pool, _ = corpus
    words = text.make_corpus(8, seed=0, max_words=40)[0][0].split()
    assert tokenizer.convert_ids_to_tokens(pool[0]["input_ids"].tolist()) == ["[CLS]", *words, "[SEP]"]
    lengths = [len(item["input_ids"]) for item in pool]
    assert min(lengths) >= 18 and max(lengths) <= 42 and len(set(lengths)) > 10
    items = [pool[i] for i in range(5)]
    batch = text.pad_collate(items, pad_token_id=tokenizer.pad_token_id)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (5, max(lengths[:5]))
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [item["labels"] for item in items]
    assert batch["attention_mask"].sum(1).tolist() == lengths[:5]
    padded = batch["attention_mask"] == 0
    assert (batch["input_ids"][padded] == tokenizer.pad_token_id).all()
    logits = model(tokenizer)(batch["input_ids"], batch["attention_mask"]).logits
    assert logits.shape == (5, 4)


@pytest.mark.parametrize(
    "strategy",
    [al.strategies.Entropy(), al.strategies.BALD(mc_samples=4), al.strategies.BADGE(), al.strategies.CAL()],
    ids=repr,
)
def test_strategies_query_padded_text(corpus, strategy):
    tokenizer, pool, test = corpus
    dm = datamodule(pool, test)
    initial = set(dm.labelled_ids.tolist())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=f"{FALLBACK}.*")  # dropout everywhere: the full tile runs
        history = run(model(tokenizer), dm, strategy)
    assert [row["num_labelled"] for row in history] == [INITIAL + r * QUERY for r in range(ROUNDS + 1)]
    seen = set(initial)
    for r, row in enumerate(history[:-1]):
        ids = row["selected_ids"]
        assert len(ids) == len(set(ids)) == QUERY and not seen & set(ids)  # unique, and unlabelled when queried
        assert (dm.pool.labelled_round[ids] == r + 1).all()
        seen |= set(ids)
        if isinstance(strategy, al.strategies.BALD):
            assert min(row["selected_scores"]) > 0  # the MC passes disagree: dropout was stochastic
    assert seen == set(dm.labelled_ids.tolist())
    assert all(0.0 <= row["test_accuracy"] <= 1.0 for row in history)


def test_bald_with_classifier_dropout_only_runs_the_trunk_once(corpus):
    """Dropout only before the classifier: the cached-prefix path computes BERT once per batch, no fallback."""
    tokenizer, pool, test = corpus
    module = model(tokenizer, **CLASSIFIER_DROPOUT_ONLY)
    dm = datamodule(pool, test)
    calls = []
    handle = module.model.bert.register_forward_hook(lambda _, args, out: calls.append(out[0].shape[0]))
    estimator = MCDropout(mc_samples=5)
    batch = next(iter(dm.pool_dataloader()))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=f"{FALLBACK}.*")
        mc_probs = estimator.predict(module, dm.inputs(batch), frozenset({MC_PROBS}))[MC_PROBS]
        assert calls == [batch["labels"].shape[0]]  # the trunk ran once, on the batch's own rows
        handle.remove()
        history = run(module, dm, al.strategies.BALD(estimator=estimator))
    assert mc_probs.shape == (batch["labels"].shape[0], 5, 4)
    assert (mc_probs.std(dim=1).amax(dim=1) > 0).all()  # each sample's passes differ
    assert [row["num_labelled"] for row in history] == [INITIAL + r * QUERY for r in range(ROUNDS + 1)]
    assert all(min(row["selected_scores"]) > 0 for row in history[:-1])


def test_collate_dropping_the_target_is_refused(corpus):
    tokenizer, pool, test = corpus

    def without_labels(items):
        batch = text.pad_collate(items)
        del batch["labels"]
        return batch

    dm = datamodule(pool, test, collate=without_labels)
    with pytest.raises(ValueError, match="labels"):
        run(model(tokenizer), dm, al.strategies.Entropy())
    assert dm.num_labelled == INITIAL


@pytest.mark.filterwarnings(f"ignore:{FALLBACK}")
def test_example_runs_offline(capsys):
    history = text.main(
        [
            "--offline",
            "--strategy",
            "bald",
            "--mc-samples",
            "3",
            "--pool-size",
            "60",
            "--test-size",
            "20",
            "--initial",
            "8",
            "--query-size",
            "8",
            "--rounds",
            "1",
            "--epochs",
            "1",
            "--min-steps",
            "2",
        ]
    )
    assert [row["num_labelled"] for row in history] == [8, 16]
    assert len(set(history[0]["selected_ids"])) == 8 and "test_accuracy" in history[-1]
    out = capsys.readouterr().out
    assert "bald (offline corpus, tiny BERT): pool 60, test 20" in out
