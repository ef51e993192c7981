"""Pool embeddings held in half precision: the loop option, host collection and the diversity kernels."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from conftest import FAST_TRAINER, QUIET_TRAINER, TinyClassifier, blobs
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import lightning_al as al
from lightning_al.estimators import Softmax
from lightning_al.functional import diversity as diversity_module
from lightning_al.functional.diversity import badge, covering_radius, kcenter_greedy
from lightning_al.outputs import EMBEDDINGS, PROBS
from lightning_al.scoring import TARGETS, _HostOutputs, predict_outputs
from lightning_al.strategies import BADGE, CoreSet

HALF = [torch.float16, torch.bfloat16]


# ----- the loop option -----------------------------------------------------------------------------
class RecordingCoreSet(CoreSet):
    """CoreSet that records the dtypes of the pool and labelled embeddings it receives."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[torch.dtype, torch.dtype]] = []

    def select(self, outputs, k, generator=None):
        self.seen.append((outputs[EMBEDDINGS].dtype, outputs.labelled[EMBEDDINGS].dtype))
        return super().select(outputs, k, generator=generator)


class RecordingBADGE(BADGE):
    """BADGE that records the dtypes of the embeddings and probabilities it receives."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[torch.dtype, torch.dtype]] = []

    def select(self, outputs, k, generator=None):
        self.seen.append((outputs[EMBEDDINGS].dtype, outputs[PROBS].dtype))
        return super().select(outputs, k, generator=generator)


def make_dm(n: int = 60) -> al.ActiveDataModule:
    return al.ActiveDataModule(blobs(n, seed=0), initial_labelled=10, batch_size=8, eval_batch_size=16, seed=0)


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        (RecordingCoreSet(), (torch.float16, torch.float16)),  # pool and labelled embeddings
        (RecordingBADGE(), (torch.float16, torch.float32)),  # embeddings, and probs left as they are
    ],
    ids=["coreset", "badge"],
)
def test_loop_gathers_half_embeddings_for_two_rounds(strategy, expected) -> None:
    dm = make_dm()
    initial = set(dm.labelled_ids.tolist())
    loop = al.ActiveLearningLoop(
        strategy, query_size=5, rounds=2, trainer_kwargs=FAST_TRAINER, progress=False, embedding_dtype="float16"
    )
    history = loop.run(TinyClassifier(), dm)
    assert strategy.seen == [expected, expected]
    assert [row["num_labelled"] for row in history] == [10, 15, 20]
    picked = [i for row in history[:2] for i in row["selected_ids"]]
    assert len(set(picked)) == 10 and not set(picked) & initial


def test_default_embedding_dtype_keeps_float32() -> None:
    strategy = RecordingCoreSet()
    loop = al.ActiveLearningLoop(strategy, query_size=5, rounds=1, trainer_kwargs=FAST_TRAINER, progress=False)
    assert loop.embedding_dtype == "float32"
    loop.run(TinyClassifier(), make_dm())
    assert strategy.seen == [(torch.float32, torch.float32)]


@pytest.mark.parametrize("bad", ["float64", "half", torch.float16, None])
def test_bad_embedding_dtype_is_refused(bad) -> None:
    with pytest.raises(ValueError) as error:
        al.ActiveLearningLoop(CoreSet(), query_size=5, embedding_dtype=bad)
    assert str(error.value) == (
        f"Expected `embedding_dtype` to be one of ['bfloat16', 'float16', 'float32'], but got {bad!r}."
    )


# ----- predict_outputs ---------------------------------------------------------------------------
def predict_trainer() -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, **QUIET_TRAINER)


def reference_outputs(model: TinyClassifier, dataset) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Probabilities, penultimate features (input of the last linear layer) and targets, in one pass."""
    model.eval()
    x, y = dataset.tensors
    with torch.no_grad():
        features = model.net[:-1](x)
        probs = torch.softmax(model.net[-1](features), dim=1)
    return probs, features, y


@pytest.mark.parametrize("embedding_dtype", [None, torch.float16, torch.bfloat16])
def test_predict_outputs_match_a_single_pass(embedding_dtype) -> None:
    torch.manual_seed(0)
    dm, model = make_dm(50), TinyClassifier()
    ids = dm.unlabelled_ids
    trainer = predict_trainer()
    outputs = predict_outputs(
        trainer,
        model,
        dm.pool_dataloader(ids),  # 40 samples in batches of 16: the last one is short
        Softmax(),
        frozenset({PROBS, EMBEDDINGS}),
        dm.inputs,
        dm.targets,
        embedding_dtype=embedding_dtype,
    )
    probs, features, targets = reference_outputs(model, dm.train_set)
    assert torch.equal(outputs.ids, ids)
    assert outputs[PROBS].dtype == torch.float32
    torch.testing.assert_close(outputs[PROBS], probs[ids], rtol=1e-6, atol=1e-7)
    assert torch.equal(outputs[TARGETS], targets[ids])
    expected = features[ids] if embedding_dtype is None else features[ids].to(embedding_dtype)
    assert outputs[EMBEDDINGS].dtype == expected.dtype
    torch.testing.assert_close(outputs[EMBEDDINGS], expected, rtol=1e-6, atol=1e-7)
    assert trainer.predict_loop.predictions == []  # Lightning kept no list of batches


def test_predict_outputs_of_fewer_batches_than_the_loader_has() -> None:
    dm, model = make_dm(50), TinyClassifier()
    trainer = pl.Trainer(accelerator="cpu", devices=1, limit_predict_batches=2, **QUIET_TRAINER)
    loader = dm.pool_dataloader()  # 40 samples, 2 batches of 16 predicted
    outputs = predict_outputs(trainer, model, loader, Softmax(), frozenset({PROBS}), dm.inputs)
    probs, _, _ = reference_outputs(model, dm.train_set)
    assert torch.equal(outputs.ids, dm.unlabelled_ids[:32])
    torch.testing.assert_close(outputs[PROBS], probs[dm.unlabelled_ids[:32]], rtol=1e-6, atol=1e-7)


def test_host_outputs_grow_past_their_reservation() -> None:
    host = _HostOutputs()
    host.reserve(3)
    batches = [torch.arange(4 * start, 4 * start + 4, dtype=torch.float32).reshape(2, 2) for start in range(3)]
    for number, batch in enumerate(batches):
        host.add({"ids": torch.tensor([2 * number, 2 * number + 1]), "x": batch})
    result = host.result()
    assert torch.equal(result["ids"], torch.arange(6))
    assert torch.equal(result["x"], torch.arange(12, dtype=torch.float32).reshape(6, 2))


def test_half_embeddings_that_overflow_are_refused() -> None:
    dm, model = make_dm(50), TinyClassifier()
    with torch.no_grad():
        model.net[0].weight.mul_(1e6)  # penultimate features far beyond float16's 65504
    loader = dm.pool_dataloader()
    needs = frozenset({EMBEDDINGS})
    with pytest.raises(ValueError, match=r"fit in `embedding_dtype` float16 \(largest magnitude 65504\)"):
        predict_outputs(predict_trainer(), model, loader, Softmax(), needs, dm.inputs, embedding_dtype=torch.float16)
    wide = predict_outputs(
        predict_trainer(), model, loader, Softmax(), needs, dm.inputs, embedding_dtype=torch.bfloat16
    )
    assert wide[EMBEDDINGS].dtype == torch.bfloat16 and torch.isfinite(wide[EMBEDDINGS]).all()


# ----- the diversity kernels on half-precision input ---------------------------------------------
def seeded_problem(n: int = 400, dim: int = 16, classes: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    centres = 4.0 * torch.randn(classes, dim, generator=g)
    x = centres[torch.randint(classes, (n,), generator=g)] + torch.randn(n, dim, generator=g)
    probs = torch.floor(64 * torch.softmax(2.0 * torch.randn(n, classes, generator=g), dim=1)) / 64
    probs[:, -1] += 1 - probs.sum(dim=1)  # multiples of 1/64 summing to 1: exact in half precision too
    labelled = torch.zeros(n, dtype=torch.bool)
    labelled[torch.randperm(n, generator=g)[:12]] = True
    return x, probs, labelled


@pytest.mark.parametrize("half", HALF)
@pytest.mark.parametrize("chunk_elements", [None, 100])  # None: the module's default
def test_half_input_picks_equal_the_upcast_picks(monkeypatch, half, chunk_elements) -> None:
    if chunk_elements is not None:
        monkeypatch.setattr(diversity_module, "_CHUNK_ELEMENTS", chunk_elements)
    x, probs, labelled = seeded_problem()
    x_half = x.to(half)
    x_up = x_half.float()  # the same values, upcast as a whole
    nobody = torch.zeros_like(labelled)
    assert kcenter_greedy(x_half, labelled, 30).tolist() == kcenter_greedy(x_up, labelled, 30).tolist()
    assert kcenter_greedy(x_half, nobody, 30).tolist() == kcenter_greedy(x_up, nobody, 30).tolist()
    assert torch.equal(covering_radius(x_half, labelled), covering_radius(x_up, labelled))
    for p_half, p_up in [(probs, probs), (probs.to(half), probs.to(half).float())]:
        picks_half = badge(p_half, x_half, 30, generator=torch.Generator().manual_seed(3))
        picks_up = badge(p_up, x_up, 30, generator=torch.Generator().manual_seed(3))
        assert picks_half.tolist() == picks_up.tolist()


class LargestFloatTensor(TorchDispatchMode):
    """Records the largest number of entries of any float32/float64 tensor an operation returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor) and leaf.dtype in (torch.float32, torch.float64):
                self.largest = max(self.largest, leaf.numel())
        return out


@pytest.mark.parametrize("half", HALF)
def test_half_input_is_never_upcast_as_a_whole(monkeypatch, half) -> None:
    monkeypatch.setattr(diversity_module, "_CHUNK_ELEMENTS", 256)
    x, probs, labelled = seeded_problem(n=400, dim=16)  # 6,400 entries; chunks of 16 rows
    x_half, probs_half = x.to(half), probs.to(half)
    bound = max(256, x.shape[0])  # one chunk, or one (N,) float64 vector
    for run in (
        lambda: kcenter_greedy(x_half, labelled, 20),
        lambda: kcenter_greedy(x_half, torch.zeros_like(labelled), 20),
        lambda: covering_radius(x_half, labelled),
        lambda: badge(probs_half, x_half, 20, generator=torch.Generator().manual_seed(0)),
    ):
        with LargestFloatTensor() as watch:
            run()
        assert 0 < watch.largest <= bound
