"""The project's own data pipeline and model signature: collate functions, several inputs, ``.logits`` outputs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pytest
import pytorch_lightning as pl
import torch
from conftest import FAST_TRAINER, blobs
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

import lightning_al as al
from lightning_al.estimators import MCDropout
from lightning_al.model_call import KeywordInputs, PositionalInputs, call_model, logits_of, model_inputs
from lightning_al.strategies import BADGE, BALD, CAL, CoreSet, Entropy

VOCAB, CLASSES, PAD = 40, 3, 0


class Sentences(Dataset):
    """Variable-length token sequences (lengths 3..12); class ``c`` draws its tokens from its own band."""

    def __init__(self, n: int, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % CLASSES
        lengths = torch.randint(3, 13, (n,), generator=generator)
        self.tokens = [
            1 + int(c) * 12 + torch.randint(0, 12, (int(length),), generator=generator)
            for c, length in zip(self.labels, lengths, strict=True)
        ]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"tokens": self.tokens[index], "label": int(self.labels[index])}


def pad_collate(items: Sequence[dict]) -> dict[str, Tensor]:
    longest = max(item["tokens"].numel() for item in items)
    tokens = torch.full((len(items), longest), PAD, dtype=torch.long)
    mask = torch.zeros(len(items), longest, dtype=torch.long)
    for row, item in enumerate(items):
        tokens[row, : item["tokens"].numel()] = item["tokens"]
        mask[row, : item["tokens"].numel()] = 1
    return {"tokens": tokens, "mask": mask, "label": torch.tensor([item["label"] for item in items])}


@dataclass
class Output:
    """A model output object in the Hugging Face style: logits as an attribute."""

    logits: Tensor
    loss: Tensor | None = None


class _BagMixin:
    """Mean of masked token embeddings → dropout → linear; ``forward(tokens, mask)`` returns an object with logits."""

    def __init__(self, as_dict: bool = False) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(VOCAB, 16, padding_idx=PAD)
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, CLASSES))
        self.as_dict = as_dict
        self.shapes: list[tuple[int, int]] = []

    def forward(self, tokens: Tensor, mask: Tensor) -> Output | dict:
        mask = mask.unsqueeze(-1).float()
        pooled = (self.embed_tokens(tokens) * mask).sum(1) / mask.sum(1).clamp_min(1)
        logits = self.head(pooled)
        return {"logits": logits} if self.as_dict else Output(logits)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        assert batch.ids.shape == batch["label"].shape
        self.shapes.append(tuple(batch["tokens"].shape))
        logits = self(batch["tokens"], batch["mask"]).logits if not self.as_dict else self(**_inputs(batch))["logits"]
        return nn.functional.cross_entropy(logits, batch["label"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


class BagOfTokens(_BagMixin, pl.LightningModule):
    """:class:`_BagMixin` as a ``pytorch_lightning`` module."""


def _inputs(batch: dict) -> dict:
    return {"tokens": batch["tokens"], "mask": batch["mask"]}


def text_datamodule(**kwargs) -> al.ActiveDataModule:
    return al.ActiveDataModule(
        Sentences(90), test_set=Sentences(30, seed=1), initial_labelled=9, batch_size=8, eval_batch_size=16,
        collate_fn=pad_collate, input_key=None, target_key="label", seed=0, **kwargs,
    )  # fmt: skip


# ----- the contract, by hand ----------------------------------------------------------------------
def test_model_inputs_and_logits_follow_the_documented_contract() -> None:
    batch = {"tokens": torch.ones(2, 3), "mask": torch.zeros(2, 3), "label": torch.tensor([0, 1])}
    inputs = model_inputs(batch, None, "label")
    assert isinstance(inputs, KeywordInputs) and list(inputs) == ["tokens", "mask"]
    assert model_inputs(batch, "tokens", "label") is batch["tokens"]
    tuple_inputs = model_inputs((torch.ones(2), torch.zeros(2), torch.tensor([0, 1])), None, -1)
    assert isinstance(tuple_inputs, PositionalInputs) and len(tuple_inputs) == 2
    assert call_model(lambda a, b: a - b, tuple_inputs).tolist() == [1.0, 1.0]
    assert call_model(lambda tokens, mask: tokens + mask, inputs).shape == (2, 3)
    logits = torch.randn(2, 3)
    assert (
        logits_of(logits) is logits and logits_of(Output(logits)) is logits and logits_of({"logits": logits}) is logits
    )
    with pytest.raises(TypeError, match=r"tensor, or an object or dict with a `logits` tensor.*but got dict with keys"):
        logits_of({"scores": logits})
    with pytest.raises(TypeError, match="but got tuple"):
        logits_of((logits,))
    with pytest.raises(ValueError, match="model inputs besides the target 'label'"):
        model_inputs({"label": torch.tensor([0])}, None, "label")


# ----- variable-length inputs end to end ----------------------------------------------------------
@pytest.mark.parametrize(
    ("strategy", "estimator"),
    [(Entropy(), None), (BALD(), MCDropout(mc_samples=5)), (BADGE(), None), (CoreSet(), None), (CAL(), None)],
    ids=["entropy", "bald", "badge", "coreset", "cal"],
)
def test_padded_variable_length_batches_flow_through_every_output(strategy, estimator) -> None:
    torch.manual_seed(0)
    model = BagOfTokens()
    dm = text_datamodule()
    loop = al.ActiveLearningLoop(
        strategy, query_size=6, rounds=2, estimator=estimator, trainer_kwargs=FAST_TRAINER, progress=False
    )
    history = loop.run(model, dm)
    assert [row["num_labelled"] for row in history] == [9, 15, 21]
    assert history[-1]["test_accuracy"] > 1 / CLASSES  # a learnable task, learned
    assert len({width for _, width in model.shapes}) > 1  # padded to each batch's own longest sequence
    queried = [id_ for row in history for id_ in row.get("selected_ids", [])]
    assert len(set(queried)) == 12


def test_dict_outputs_and_tuple_batches_with_several_inputs() -> None:
    class TwoInputs(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 3)

        def forward(self, left: Tensor, right: Tensor) -> dict:
            return {"logits": self.a(left) + self.b(right)}

        def training_step(self, batch, batch_idx: int) -> Tensor:
            left, right, y = batch
            return nn.functional.cross_entropy(self(left, right)["logits"], y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=1e-2)

    x, y = blobs(60).tensors
    pairs = torch.utils.data.TensorDataset(x, x.flip(1), y)
    dm = al.ActiveDataModule(pairs, initial_labelled=6, input_key=None, target_key=2, seed=0)
    loop = al.ActiveLearningLoop(BADGE(), query_size=5, rounds=1, trainer_kwargs=FAST_TRAINER, progress=False)
    loop.run(TwoInputs(), dm)
    assert dm.num_labelled == 11


def test_the_collate_function_serves_every_loader_and_keeps_the_ids() -> None:
    calls: list[int] = []

    def counting(items):
        calls.append(len(items))
        return pad_collate(items)

    dm = al.ActiveDataModule(
        Sentences(40), val_set=Sentences(10, seed=2), test_set=Sentences(10, seed=1), initial_labelled=4,
        collate_fn=counting, input_key=None, target_key="label", eval_batch_size=50,
    )  # fmt: skip
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader(), dm.pool_dataloader()):
        batch = next(iter(loader))
        assert batch.ids.shape == batch["label"].shape
    assert calls == [4, 10, 10, 36]
    assert next(iter(dm.pool_dataloader())).ids.tolist() == dm.unlabelled_ids.tolist()
    assert dm.pool_inputs(torch.tensor([5, 1]))["tokens"].shape[0] == 2


def test_from_datamodule_keeps_each_loaders_collate_function_and_worker_settings() -> None:
    def eval_collate(items):
        batch = pad_collate(items)
        batch["evaluated"] = torch.ones(len(items))
        return batch

    class TextProject(pl.LightningDataModule):
        def setup(self, stage: str) -> None:
            self.train, self.test = Sentences(40), Sentences(12, seed=1)

        def train_dataloader(self):
            return DataLoader(self.train, batch_size=5, collate_fn=pad_collate, pin_memory=True)

        def test_dataloader(self):
            return DataLoader(self.test, batch_size=5, collate_fn=eval_collate)

    dm = al.ActiveDataModule.from_datamodule(TextProject(), initial_labelled=5, input_key=None, target_key="label")
    assert dm.collate_fn is pad_collate and dm.pin_memory and dm.batch_size == 5
    assert "evaluated" in next(iter(dm.test_dataloader()))
    assert "evaluated" not in next(iter(dm.pool_dataloader()))


# ----- bad input: refused before any label is applied ---------------------------------------------
def test_a_collate_function_that_drops_the_target_is_refused_naming_it() -> None:
    def drops_label(items):
        batch = pad_collate(items)
        del batch["label"]
        return batch

    dm = al.ActiveDataModule(
        Sentences(40), initial_labelled=4, collate_fn=drops_label, input_key=None, target_key="label"
    )
    loop = al.ActiveLearningLoop(Entropy(), query_size=4, rounds=1, trainer_kwargs=FAST_TRAINER)
    with pytest.raises(ValueError, match=r"the target at key 'label'.*\['tokens', 'mask'\].*`target_key`.*collate_fn"):
        loop.run(BagOfTokens(), dm)
    assert dm.num_labelled == 4


def test_a_missing_input_field_is_refused_naming_it() -> None:
    dm = al.ActiveDataModule(
        Sentences(40), initial_labelled=4, collate_fn=pad_collate, input_key="ids_", target_key="label"
    )
    loop = al.ActiveLearningLoop(Entropy(), query_size=4, rounds=1, trainer_kwargs=FAST_TRAINER)
    with pytest.raises(ValueError, match=r"the model input at key 'ids_'.*`input_key`"):
        loop.run(BagOfTokens(), dm)
    assert dm.num_labelled == 4


def test_an_output_without_logits_is_refused_before_labelling() -> None:
    class NoLogits(BagOfTokens):
        def forward(self, tokens, mask):
            return {"scores": super().forward(tokens, mask).logits}

        def training_step(self, batch, batch_idx):
            return super().forward(batch["tokens"], batch["mask"]).logits.sum() * 0

    dm = text_datamodule()
    loop = al.ActiveLearningLoop(Entropy(), query_size=4, rounds=1, trainer_kwargs=FAST_TRAINER, progress=False)
    with pytest.raises(TypeError, match=r"`logits` tensor \(a Hugging Face ModelOutput\), but got dict with keys"):
        loop.run(NoLogits(), dm)
    assert dm.num_labelled == 9


def test_bad_datamodule_arguments_name_themselves() -> None:
    with pytest.raises(TypeError, match="Expected `collate_fn` to be callable"):
        al.ActiveDataModule(Sentences(10), collate_fn="pad")
    with pytest.raises(ValueError, match="Expected `input_key` and `target_key` to differ, but both are 'label'"):
        al.ActiveDataModule(Sentences(10), input_key="label", target_key="label")
    dm = al.ActiveDataModule(Sentences(10), collate_fn=lambda items: object(), input_key=None, target_key="label")
    with pytest.raises(TypeError, match="Expected `collate_fn` to return a tuple, list, dict or tensor batch"):
        next(iter(dm.pool_dataloader()))


def test_the_wandb_query_table_logs_variable_length_queries_of_a_lightning_model(tmp_path) -> None:
    """A ``lightning.pytorch`` model and WandbLogger, padded text batches: the offline run holds the queries."""
    wandb = pytest.importorskip("wandb")
    import lightning.pytorch as L
    from wandb_offline import offline_wandb, read_offline_run

    model = type("UnifiedBag", (_BagMixin, L.LightningModule), {})()
    dm = text_datamodule()
    with offline_wandb(tmp_path):
        logger = L.loggers.WandbLogger(project="lightning-al-tests", save_dir=str(tmp_path))
        loop = al.ActiveLearningLoop(
            Entropy(), query_size=5, rounds=2, progress=False,
            trainer_kwargs=dict(max_epochs=2, accelerator="cpu", logger=logger, log_every_n_steps=1),
        )  # fmt: skip
        history = loop.run(model, dm)
        wandb.finish()
    run = read_offline_run(tmp_path)
    tables = [run.table(row["al/queried_samples"]) for row in run.rows_with("al/queried_samples")]
    assert [[r[0] for r in t["data"]] for t in tables] == [row["selected_ids"] for row in history[:2]]
    assert all(r[3] == int(dm.train_set.labels[r[0]]) for t in tables for r in t["data"])


@pytest.mark.parametrize("multilabel", [False, True])
def test_the_training_loader_gathers_whole_batches_with_the_pools_labels(monkeypatch, multilabel) -> None:
    from lightning_al.data.datamodule import _Relabelled

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, generator=generator)
    if multilabel:
        targets = torch.randint(0, 2, (40, 4), generator=generator, dtype=torch.int32)
        task, labels = al.tasks.MultiLabel(4), 1 - targets[10:14]  # the oracle's labels differ from the dataset's
    else:
        targets = torch.randint(0, 3, (40,), generator=generator, dtype=torch.int32)
        task, labels = al.tasks.MultiClass(3), (targets[10:14] + 1) % 3
    dm = al.ActiveDataModule(torch.utils.data.TensorDataset(x, targets), initial_labelled=10, batch_size=4, task=task)
    dm.label(dm.unlabelled_ids[:4], labels)
    relabelled = _Relabelled(dm.train_set, dm.pool.labels, 1, task)
    expected = {i: relabelled[i] for i in dm.labelled_ids.tolist()}  # the item-by-item path, for reference

    def one_by_one(self, index):
        raise AssertionError("the training loader fetched an item on its own")

    monkeypatch.setattr(_Relabelled, "__getitem__", one_by_one)
    seen = []
    for batch in dm.train_dataloader():
        ids = batch.ids.tolist()
        reference = torch.utils.data.default_collate([expected[i] for i in ids])
        assert [tuple(column.shape) for column in batch] == [tuple(column.shape) for column in reference]
        assert all(a.dtype == b.dtype and torch.equal(a, b) for a, b in zip(batch, reference, strict=True))
        seen += ids
    assert sorted(seen) == dm.labelled_ids.tolist()
