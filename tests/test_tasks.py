"""Multi-label and segmentation tasks: hand-computed scores, label checks, and every task-aware strategy end to end."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import TensorDataset

import lightning_al as al
from lightning_al import functional as F
from lightning_al.datasets import Shapes
from lightning_al.models import MultiLabelMLP, SmallUNet
from lightning_al.outputs import MC_PROBS, PROBS, VALID, PoolOutputs
from lightning_al.strategies import (
    BADGE,
    BALD,
    QBC,
    CoreSet,
    Entropy,
    LabelDispersion,
    LeastConfidence,
    Margin,
    MeanSTD,
    Random,
    VariationRatios,
)
from lightning_al.tasks import MultiClass, MultiLabel, Segmentation


def _h(p: float) -> float:
    return -sum(q * math.log(q) for q in (p, 1 - p) if q > 0)


# ----- hand-computed scores ------------------------------------------------------------------
def test_multilabel_entropy_is_the_sum_of_binary_entropies():
    probs = torch.tensor([[0.5, 0.1, 1.0], [0.9, 0.9, 0.2]])
    outputs = PoolOutputs(ids=torch.arange(2), values={PROBS: probs}, task=MultiLabel(3))
    expected = [_h(0.5) + _h(0.1) + _h(1.0), _h(0.9) * 2 + _h(0.2)]
    assert Entropy().score(outputs).tolist() == pytest.approx(expected, abs=1e-6)
    mean = PoolOutputs(ids=torch.arange(2), values={PROBS: probs}, task=MultiLabel(3, reduction="mean"))
    assert Entropy().score(mean).tolist() == pytest.approx([e / 3 for e in expected], abs=1e-6)
    # least confidence 1 - max(p, 1 - p) and margin 1 - |2p - 1| per label, summed
    assert LeastConfidence().score(outputs).tolist() == pytest.approx([0.5 + 0.1 + 0.0, 0.1 + 0.1 + 0.2], abs=1e-6)
    assert Margin().score(outputs).tolist() == pytest.approx([1.0 + 0.2 + 0.0, 0.2 + 0.2 + 0.4], abs=1e-6)


def test_multilabel_bald_is_the_bernoulli_mutual_information_summed():
    mc = torch.tensor([[[0.9, 0.5], [0.1, 0.5]]])  # (N=1, T=2, L=2)
    outputs = PoolOutputs(ids=torch.arange(1), values={MC_PROBS: mc}, task=MultiLabel(2))
    first = _h(0.5) - (_h(0.9) + _h(0.1)) / 2  # members disagree on label 0
    assert BALD().score(outputs).tolist() == pytest.approx([first + 0.0], abs=1e-6)


def test_segmentation_entropy_is_the_pixel_mean_over_the_valid_region():
    # one 2x2 image over 2 classes; the bottom-right pixel is ignored
    p = torch.tensor([[0.5, 0.9], [0.2, 0.7]])
    probs = torch.stack([p, 1 - p])[None]  # (1, 2, 2, 2)
    valid = torch.tensor([[[True, True], [True, False]]])
    outputs = PoolOutputs(ids=torch.arange(1), values={PROBS: probs, VALID: valid}, task=Segmentation(2))
    assert Entropy().score(outputs).tolist() == pytest.approx([(_h(0.5) + _h(0.9) + _h(0.2)) / 3], abs=1e-6)
    by_max = PoolOutputs(
        ids=torch.arange(1), values={PROBS: probs, VALID: valid}, task=Segmentation(2, reduction="max")
    )
    assert Entropy().score(by_max).tolist() == pytest.approx([_h(0.5)], abs=1e-6)
    top2 = Segmentation(2, reduction="topk_mean", top_k=2)
    outputs = PoolOutputs(ids=torch.arange(1), values={PROBS: probs}, task=top2)  # every pixel valid
    assert Entropy().score(outputs).tolist() == pytest.approx([(_h(0.5) + _h(0.7)) / 2], abs=1e-6)


def test_segmentation_mc_scores_run_per_pixel():
    mc = torch.rand(3, 4, 5, 2, 3, generator=torch.Generator().manual_seed(0)).softmax(dim=2)  # (N, T, C, H, W)
    outputs = PoolOutputs(ids=torch.arange(3), values={MC_PROBS: mc}, task=Segmentation(5))
    per_pixel = F.bald(mc.permute(0, 3, 4, 1, 2).reshape(-1, 4, 5)).view(3, 6)
    assert torch.allclose(BALD().score(outputs), per_pixel.mean(dim=1), atol=1e-6)
    assert torch.allclose(
        MeanSTD().score(outputs), F.mean_std(mc.permute(0, 3, 4, 1, 2).reshape(-1, 4, 5)).view(3, 6).mean(1)
    )


def test_reduce_units_edge_cases():
    scores = torch.tensor([[3.0, 1.0, 2.0], [5.0, 4.0, 0.0]])
    none_valid = torch.tensor([[False, False, False], [True, False, True]])
    cases = [("mean", [0.0, 2.5]), ("max", [0.0, 5.0]), ("sum", [0.0, 5.0]), ("topk_mean", [0.0, 2.5])]
    for reduction, expected in cases:
        assert F.reduce_units(scores, reduction, none_valid, top_k=5).tolist() == expected, reduction
    with pytest.raises(ValueError, match="`reduction` to be one of"):
        F.reduce_units(scores, "median")


def test_multiclass_scores_are_unchanged_by_the_task():
    probs = torch.rand(6, 4, generator=torch.Generator().manual_seed(1)).softmax(dim=1)
    outputs = PoolOutputs(ids=torch.arange(6), values={PROBS: probs})
    assert torch.equal(Entropy().score(outputs), F.entropy(probs))
    assert isinstance(outputs.task, MultiClass)


# ----- labels ------------------------------------------------------------------------------
def _seg_dm(n: int = 24, size: int = 8, **kwargs) -> al.ActiveDataModule:
    train = Shapes(n, size=size, seed=0)
    return al.ActiveDataModule(
        train, test_set=Shapes(8, size=size, seed=1), task=Segmentation(3), batch_size=4, seed=0, **kwargs
    )


def test_bad_masks_are_refused_with_nothing_applied():
    dm = _seg_dm(initial_labelled=4)
    before = dm.state_dict()
    ids = dm.unlabelled_ids[:2]
    good = torch.zeros(8, 8, dtype=torch.long)
    with pytest.raises(ValueError, match=r"mask of id \d+ to have its image's size \(8, 8\), but got \(4, 4\)"):
        dm.label(ids, [good, torch.zeros(4, 4, dtype=torch.long)])
    with pytest.raises(ValueError, match=r"class ids in \[0, 3\) or the ignore_index 255, but got values \[7\]"):
        dm.label(ids, [good, torch.full((8, 8), 7)])
    with pytest.raises(ValueError, match="one mask per id"):
        dm.label(ids, [good])
    after = dm.state_dict()["pool"]
    assert torch.equal(after["labelled_round"], before["pool"]["labelled_round"])
    assert after["labels"]["ids"].tolist() == before["pool"]["labels"]["ids"].tolist()
    dm.label(ids, [good, torch.full((8, 8), 255)])  # all-ignored masks are valid
    assert dm.num_labelled == 6


def test_segmentation_pool_state_round_trips_and_training_items_carry_masks():
    dm = _seg_dm(initial_labelled=5)
    masks = dm.train_set.tensors[1]
    batch = next(iter(dm.train_dataloader()))
    _, y = batch
    assert y.dtype == torch.long and y.shape[1:] == (8, 8)
    assert torch.equal(y, masks[batch.ids.cpu()])
    fresh = _seg_dm()
    fresh.load_state_dict(dm.state_dict())
    assert fresh.labelled_ids.tolist() == dm.labelled_ids.tolist()
    for i in dm.labelled_ids.tolist():
        assert torch.equal(fresh.pool.label_of(i).long(), masks[i])
    with pytest.raises(ValueError, match="pool state for 4 classes, but got one for 3"):
        al.ActiveDataModule(dm.train_set, task=Segmentation(4)).load_state_dict(dm.state_dict())
    with pytest.raises(ValueError, match=r"pool state for the task Segmentation\(num_classes=3, ignore_index=None"):
        al.ActiveDataModule(dm.train_set, task=Segmentation(3, ignore_index=None)).load_state_dict(dm.state_dict())


def test_multilabel_labels_are_validated_stored_and_trained_on_as_floats():
    x = torch.randn(20, 4)
    y = (torch.randn(20, 3) > 0).float()
    dm = al.ActiveDataModule(TensorDataset(x, y), task=MultiLabel(3), initial_labelled=6, batch_size=4)
    assert torch.equal(dm.pool.labels[dm.labelled_ids].float(), y[dm.labelled_ids])
    with pytest.raises(ValueError, match=r"0/1 vectors of 3 labels"):
        dm.label(dm.unlabelled_ids[:1], torch.ones(1, 4))
    with pytest.raises(ValueError, match="only 0 and 1"):
        dm.label(dm.unlabelled_ids[:1], torch.tensor([[0.0, 2.0, 1.0]]))
    assert dm.num_labelled == 6
    batch = next(iter(dm.train_dataloader()))
    assert batch[1].dtype == torch.float32 and torch.equal(batch[1], y[batch.ids])
    with pytest.raises(ValueError, match="`initial_per_class` only with single-label"):
        al.ActiveDataModule(TensorDataset(x, y), task=MultiLabel(3), initial_per_class=1)


def test_a_strategy_refuses_a_task_it_has_no_score_for():
    dm = _seg_dm(initial_labelled=4)
    loop = al.ActiveLearningLoop(LabelDispersion(), query_size=2, rounds=1, progress=False)
    with pytest.raises(ValueError, match=r"LabelDispersion supports \(multiclass\).*Segmentation\(num_classes=3"):
        loop.run(SmallUNet(num_classes=3, width=4), dm)
    assert dm.num_labelled == 4


# ----- every task-aware strategy, 2 rounds on each task -----------------------------------------
STRATEGIES = {
    "LeastConfidence": LeastConfidence,
    "Margin": Margin,
    "Entropy": Entropy,
    "BALD": lambda: BALD(mc_samples=4),
    "VariationRatios": lambda: VariationRatios(mc_samples=4),
    "MeanSTD": lambda: MeanSTD(mc_samples=4),
    "QBC": lambda: QBC(mc_samples=4),
    "Random": Random,
    "CoreSet": CoreSet,
    "BADGE": BADGE,
}


def _run(task_name: str, strategy) -> tuple[list[dict], al.ActiveDataModule]:
    torch.manual_seed(0)
    if task_name == "segmentation":
        dm = _seg_dm(initial_labelled=4)
        model = SmallUNet(num_classes=3, width=4)
    else:
        x = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
        y = torch.stack([x[:, 0] > 0, x[:, 1] > 0.5, x[:, 0] + x[:, 2] > 0], dim=1).float()
        test = TensorDataset(x[:16] + 0.1, y[:16])
        dm = al.ActiveDataModule(
            TensorDataset(x, y), test_set=test, task=MultiLabel(3), initial_labelled=6, batch_size=8
        )
        model = MultiLabelMLP(in_features=6, num_labels=3, hidden=8)
    loop = al.ActiveLearningLoop(
        strategy,
        query_size=3,
        rounds=2,
        progress=False,
        trainer_kwargs=dict(max_epochs=1, accelerator="cpu", enable_progress_bar=False),
    )
    return loop.run(model, dm), dm


@pytest.mark.parametrize("task_name", ["multilabel", "segmentation"])
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_each_strategy_runs_two_rounds_on_each_task(task_name, name):
    history, dm = _run(task_name, STRATEGIES[name]())
    start = 6 if task_name == "multilabel" else 4
    assert [row["num_labelled"] for row in history] == [start, start + 3, start + 6]
    metric = "test_map" if task_name == "multilabel" else "test_miou"
    assert all(0.0 <= row[metric] <= 1.0 for row in history)
    queried = [i for row in history[:-1] for i in row["selected_ids"]]
    assert len(set(queried)) == 6 and not set(queried) & set(range(0))
    labels = dm.train_set.tensors[1]
    for i in queried:  # the simulated oracle's labels were recorded as they are in the dataset
        stored = dm.pool.label_of(i)
        assert torch.equal(stored.to(labels.dtype), labels[i])


def test_a_segmentation_run_logs_its_metric_queries_and_curve_to_wandb(tmp_path):
    wandb = pytest.importorskip("wandb")
    from pytorch_lightning.loggers import WandbLogger
    from wandb_offline import offline_wandb, read_offline_run

    with offline_wandb(tmp_path):
        dm = _seg_dm(initial_labelled=4)
        loop = al.ActiveLearningLoop(
            Entropy(),
            query_size=3,
            rounds=2,
            progress=False,
            trainer_kwargs=dict(max_epochs=1, accelerator="cpu", logger=WandbLogger(save_dir=str(tmp_path))),
        )
        torch.manual_seed(0)
        history = loop.run(SmallUNet(num_classes=3, width=4), dm)
        wandb.finish()
    run = read_offline_run(tmp_path)
    rounds = run.rows_with("al/round")
    assert [row["al/test_miou"] for row in rounds] == pytest.approx([row["test_miou"] for row in history])
    assert run.metrics["al/test_miou"] == "al/num_labelled"
    masks = dm.train_set.tensors[1]
    tables = [run.table(row["al/queried_samples"]) for row in run.rows_with("al/queried_samples")]
    assert tables[0]["columns"][:4] == ["id", "score", "predicted", "label"]
    for table in tables:  # a mask is shown as the classes it holds
        for row in table["data"]:
            assert row[3] == [c for c in masks[row[0]].unique().tolist() if c != 255]
    (curve,) = [run.table(row["al/learning_curve"]) for row in run.rows_with("al/learning_curve")]
    assert curve["columns"][:2] == ["num_labelled", "test_miou"]
    assert run.config["task"].startswith("Segmentation(num_classes=3")


@pytest.mark.parametrize(
    "kernel",
    [F.bald, F.variation_ratio, F.mean_std, F.vote_entropy, F.kl_to_consensus, F.predictive_entropy],
    ids=lambda kernel: kernel.__name__,
)
def test_kernels_on_units_in_place_equal_their_flattened_form(kernel):
    generator = torch.Generator().manual_seed(2)
    seg_mc = torch.rand(3, 5, 4, 2, 3, generator=generator).softmax(dim=2)  # (N, T, C, H, W)
    ml_mc = torch.rand(3, 5, 4, generator=generator)  # (N, T, L)
    for task, mc in ((Segmentation(4, reduction="max"), seg_mc), (MultiLabel(4), ml_mc)):
        fast = task.mc_score(kernel, mc)
        units = task.mc_units(mc)
        flat = task.reduce(kernel(units.reshape(-1, *units.shape[2:])).view(3, -1))
        torch.testing.assert_close(fast, flat, rtol=1e-6, atol=1e-7)
    # a kernel of the user's own goes through the flattened form
    assert torch.equal(Segmentation(4).mc_score(lambda p: p[:, 0, 0], seg_mc), seg_mc[:, 0, 0].flatten(1).mean(1))
    with pytest.raises(ValueError, match=r"`probs_N_T_C_U` to have shape \(N, T, C, \.\.\.\)"):
        F.bayesian.per_unit(F.bald, torch.rand(3, 4))
