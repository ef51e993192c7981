"""Loss-prediction head, VAAL and MAL under two-process CPU DDP (gloo): their modules stay identical on every rank."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import blobs, run_ranks

import lightning_al as al
from lightning_al import distributed
from lightning_al.data.unlabelled import UnlabelledBatches

CASES = ("loss_prediction", "loss_prediction_own", "vaal", "mal")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    return run_ranks("aux_ddp_run.py", tmp_path_factory.mktemp("aux_ddp"))


@pytest.mark.parametrize("case", CASES)
def test_auxiliary_modules_are_identical_across_ranks(ranks: list[dict], case: str) -> None:
    assert [rank["world_size"] for rank in ranks] == [2, 2]
    first, second = ranks[0][case], ranks[1][case]
    assert first["steps"] > 0 and first["steps"] == second["steps"]
    # each rank fitted on its own half of the labelled batches: DDP keeps the model identical, and the
    # averaged gradients keep the modules trained beside it identical too
    assert first["model"] == second["model"]
    assert len(first["aux"]) == len(second["aux"]) > 0
    for mine, theirs in zip(first["aux"], second["aux"], strict=True):
        assert len(mine) > 0
        assert mine == theirs


def test_average_gradients_takes_the_mean_over_ranks(ranks: list[dict]) -> None:
    # a: (1 + 2) / 2; b: rank 0 has none, counted as zero as in DDP: (0 + 1) / 2; c: no rank has one
    for rank in ranks:
        assert rank["averaged"] == {"a": [1.5, 1.5], "b": [0.5, 0.5], "c": None}


def test_average_gradients_is_the_identity_on_one_process(tmp_path: Path) -> None:
    layer = torch.nn.Linear(3, 2)
    layer.weight.grad = torch.ones_like(layer.weight)
    distributed.average_gradients(layer.parameters())
    assert torch.equal(layer.weight.grad, torch.ones(2, 3)) and layer.bias.grad is None
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        distributed.average_gradients(layer.parameters())  # one rank: nothing to average
        assert torch.equal(layer.weight.grad, torch.ones(2, 3)) and layer.bias.grad is None
    finally:
        distributed.shutdown()


def test_unlabelled_batches_draw_this_ranks_share_of_the_pool(monkeypatch) -> None:
    dm = al.ActiveDataModule(blobs(30), initial_labelled=10, batch_size=4, seed=0)
    id_of_row = {tuple(row.tolist()): i for i, row in enumerate(dm.pool_set.tensors[0])}
    unlabelled = dm.unlabelled_ids.tolist()  # the pool loader's order
    for rank in (0, 1):
        monkeypatch.setattr(distributed, "rank_and_world", lambda rank=rank: (rank, 2))
        batches = UnlabelledBatches(seed=0)
        drawn = [id_of_row[tuple(row.tolist())] for _ in range(5) for row in batches.next(dm, 4, torch.device("cpu"))]
        # 10 of the 20 unlabelled ids, every other one from position `rank`, each once per pass
        assert sorted(drawn[:10]) == unlabelled[rank::2]
