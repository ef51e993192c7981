"""An active-learning run that SIGKILLs itself at a chosen point (used by tests/test_kill.py).

    python kill_run.py OUTPUT_DIR POINT [ROUND [TASK]]

POINT is ``none`` (run to the end), ``fit``, ``scoring`` or ``labelled`` (right after a round's
labels are recorded); the process kills itself the first time it reaches POINT in round ROUND.
On a normal end it writes the labelled ids and their rounds to ``OUTPUT_DIR/labelled.json``. TASK is
``multiclass`` (default) or ``segmentation`` (a small U-Net on generated shapes; the labels written are
then whether each labelled id's stored mask equals the dataset's).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import TinyClassifier, blobs

import lightning_al as al
from lightning_al.datasets import Shapes
from lightning_al.models import SmallUNet
from lightning_al.strategies import Entropy
from lightning_al.tasks import Segmentation

torch.set_num_threads(1)


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class KillDuringFit(pl.Callback):
    def __init__(self, loop: list, armed: bool, round: int) -> None:
        self.loop, self.armed, self.round = loop, armed, round

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.armed and self.loop[0].round == self.round and trainer.current_epoch == 1:
            die()


class KillableEntropy(Entropy):
    def __init__(self, loop: list, armed: bool, round: int) -> None:
        super().__init__()
        self.loop, self.armed, self.round = loop, armed, round

    def score(self, outputs):
        if self.armed and self.loop[0].round == self.round:
            die()
        return super().score(outputs)


def main(output_dir: str, point: str, round: int, task: str = "multiclass") -> None:
    holder: list = []
    strategy = KillableEntropy(holder, point == "scoring", round)
    callbacks = [KillDuringFit(holder, point == "fit", round)]
    if task == "segmentation":
        dm = al.ActiveDataModule(
            Shapes(120, size=8, seed=0),
            test_set=Shapes(20, size=8, seed=1),
            task=Segmentation(3),
            initial_labelled=10,
            batch_size=8,
            seed=0,
        )
        make_model = functools.partial(SmallUNet, num_classes=3, width=4)
    else:
        dm = al.ActiveDataModule(
            blobs(120, seed=0), test_set=blobs(60, seed=1), initial_labelled=10, batch_size=8, seed=0
        )
        make_model = TinyClassifier
    loop = al.ActiveLearningLoop(
        strategy=strategy,
        query_size=5,
        rounds=4,
        trainer_kwargs=dict(max_epochs=3, accelerator="cpu", callbacks=callbacks),
        output_dir=output_dir,
        progress=False,
    )
    holder.append(loop)

    def on_round_end(row: dict) -> None:
        if point == "labelled" and row["round"] == round:
            die()

    torch.manual_seed(0)
    model = make_model()
    resume = (Path(output_dir) / "state.pt").exists()
    loop.run(model, dm, on_round_end=on_round_end, resume=resume)
    labelled = {"ids": dm.labelled_ids.tolist(), "rounds": dm.pool.labelled_round[dm.labelled_ids].tolist()}
    if task == "segmentation":
        masks = dm.train_set.tensors[1]
        labelled["labels_match"] = [bool((dm.pool.label_of(i).long() == masks[i]).all()) for i in labelled["ids"]]
    (Path(output_dir) / "labelled.json").write_text(json.dumps({**labelled, "history": loop.history}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0, *sys.argv[4:5])
