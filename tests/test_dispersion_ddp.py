"""LabelDispersionCallback under two-process CPU DDP (gloo): sharded pool predictions summed across ranks."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from conftest import run_ranks

SCRIPTS = Path(__file__).parent / "scripts"
sys.path.insert(0, str(SCRIPTS))


def _reference_counts(num_classes: int = 3) -> torch.Tensor:
    """Counts written from scratch: the initial weights predict every unlabelled id once per epoch."""
    import dispersion_ddp_run as script

    model, dm = script.make_model().eval(), script.make_datamodule()
    x_N_D, _ = dm.pool_set.tensors
    ids = dm.unlabelled_ids
    counts = torch.zeros(len(dm.pool_set), num_classes, dtype=torch.long)
    with torch.no_grad():
        for epoch in range(script.EPOCHS):
            preds = script.biased_logits(model.net(x_N_D[ids]), epoch).argmax(dim=-1)
            counts[ids, preds] += 1
    return counts


def test_two_process_counts_equal_one_process(tmp_path: Path) -> None:
    ranks = run_ranks("dispersion_ddp_run.py", tmp_path)
    assert [rank["world_size"] for rank in ranks] == [2, 2]

    import dispersion_ddp_run as script

    single = script.run(devices=1)
    assert single["world_size"] == 1
    expected = _reference_counts()
    num_unlabelled = len(single["unlabelled_ids"])
    assert num_unlabelled == 51
    torch.testing.assert_close(torch.tensor(single["label_counts"]), expected, rtol=0, atol=0)
    # every unlabelled id predicted once per epoch; the epoch bias makes some of them change their label
    assert expected.sum(dim=1)[single["unlabelled_ids"]].tolist() == [script.EPOCHS] * num_unlabelled
    assert 0 < int((expected.amax(dim=1) == 1).sum()) < num_unlabelled
    for rank in ranks:
        torch.testing.assert_close(torch.tensor(rank["label_counts"]), expected, rtol=0, atol=0)
        assert rank["num_predictions"] == script.EPOCHS == single["num_predictions"]
    # each rank predicted only its share of the pool (26 and 25 of the 51 ids), once per epoch
    assert [rank["eval_rows"] for rank in ranks] == [26 * script.EPOCHS, 25 * script.EPOCHS]
    assert single["eval_rows"] == num_unlabelled * script.EPOCHS
