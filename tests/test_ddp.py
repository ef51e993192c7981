"""Two-process CPU DDP (gloo) against one process: the same queries, round after round."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from conftest import NAMESPACES, run_ranks

from lightning_al import distributed
from lightning_al.outputs import PoolOutputs

SCRIPTS = Path(__file__).parent / "scripts"
sys.path.insert(0, str(SCRIPTS))


def test_helpers_are_the_identity_on_one_process() -> None:
    ids = torch.tensor([3, 5, 9])
    assert distributed.rank_and_world() == (0, 1)
    assert torch.equal(distributed.shard(ids), ids)
    outputs = PoolOutputs(ids=ids, values={"probs": torch.eye(3)})
    assert distributed.gather_by_id(outputs) is outputs
    assert distributed.broadcast_from_rank_zero({"a": 1}) == {"a": 1}
    top_ids, top_scores = distributed.merge_top_k(ids, torch.tensor([0.5, 0.9, 0.5], dtype=torch.float64), 2)
    assert top_ids.tolist() == [5, 3] and top_scores.tolist() == [0.9, 0.5]


def test_shutdown_destroys_the_process_group(tmp_path: Path) -> None:
    distributed.shutdown()  # no process group: nothing to do
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    assert torch.distributed.is_initialized()
    distributed.shutdown()
    assert not torch.distributed.is_initialized()
    assert distributed.rank_and_world() == (0, 1)


def test_unique_by_id_drops_sampler_padding() -> None:
    # DistributedSampler over ids [10, 11, 12, 13, 14] on 2 ranks pads with id 10: rank 0 gets 10, 12, 14
    # and rank 1 gets 11, 13 and the copy of 10 (whose value differs, as a fresh MC-dropout pass would).
    ids = torch.tensor([10, 12, 14, 11, 13, 10])
    values = {"v": torch.tensor([0.0, 2.0, 4.0, 1.0, 3.0, -1.0])}
    merged = distributed.unique_by_id(ids, values)
    assert merged.ids.tolist() == [10, 11, 12, 13, 14]
    assert merged["v"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]  # rank 0's original, not the copy


def assert_same_selections(ddp: dict, one: dict, name: str) -> None:
    """The DDP run selected and labelled what the one-process run did, with the same scores."""
    assert ddp["selected_ids"] == one["selected_ids"], name
    assert ddp["labelled_ids"] == one["labelled_ids"], name
    if one["selected_scores"][0] is not None:
        torch.testing.assert_close(torch.tensor(ddp["selected_scores"]), torch.tensor(one["selected_scores"]))


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_two_process_ddp_selects_as_one_process(tmp_path: Path, namespace: str) -> None:
    ranks = run_ranks("ddp_run.py", tmp_path, 2, namespace)
    assert ranks[0]["world_size"] == 2 and ranks[0] == ranks[1]  # every rank labels the same ids
    assert ranks[0]["namespace"] == namespace

    import ddp_run

    single = ddp_run.run_all(devices=1, namespace=namespace)
    assert single["world_size"] == 1
    for name in ("entropy", "entropy_subset", "badge", "coreset"):
        assert len(single[name]["selected_ids"]) == 2, name  # two queries
        assert_same_selections(ranks[0][name], single[name], name)
    # the subset run scores only 41 candidates, so it must differ from the whole pool's query somewhere
    assert single["entropy_subset"]["selected_ids"] != single["entropy"]["selected_ids"]


def test_two_process_ddp_selects_as_one_process_on_multilabel_and_segmentation(tmp_path: Path) -> None:
    ranks = run_ranks("ddp_run.py", tmp_path, 2, "tasks")
    assert ranks[0]["world_size"] == 2 and ranks[0] == ranks[1]

    import ddp_run

    single = ddp_run.run_tasks(devices=1)
    for name in ("seg_entropy", "seg_bald", "seg_coreset", "seg_badge", "ml_bald", "ml_badge"):
        assert len(single[name]["selected_ids"]) == 2 and len(single[name]["labelled_ids"]) == 12, name
        assert_same_selections(ranks[0][name], single[name], name)
