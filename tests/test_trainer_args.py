"""The Trainers of a round: the user's arguments win in the main fit; internal fits and passes stay quiet."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from conftest import FAST_TRAINER, TinyClassifier

import lightning_al as al
from lightning_al import trainer_args
from lightning_al.strategies import Entropy, Random


def make_dm(tiny_data, **kwargs) -> al.ActiveDataModule:
    train, test = tiny_data
    return al.ActiveDataModule(train, test_set=test, initial_labelled=10, batch_size=8, seed=0, **kwargs)


class FitRecorder(pl.Callback):
    """Records, per fit, the epochs trained and whether the Trainer has a progress bar and checkpointing."""

    def __init__(self) -> None:
        self.epochs: list[int] = []
        self.bars: list[bool] = []

    def on_fit_start(self, trainer, pl_module) -> None:
        self.epochs.append(0)
        self.bars.append(trainer.progress_bar_callback is not None)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epochs[-1] += 1


def test_model_checkpoint_in_the_main_fit_writes_each_rounds_best(tiny_data, tmp_path):
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="train_loss", save_top_k=1)
    loop = al.ActiveLearningLoop(
        Random(), query_size=5, rounds=2, trainer_kwargs={**FAST_TRAINER, "callbacks": [checkpoint]}, progress=False
    )
    loop.run(TinyClassifier(), make_dm(tiny_data))
    files = sorted(path.name for path in (tmp_path / "ckpt").iterdir())
    # every fit keeps its own best (3 fits, 3 epochs each: the best epochs' files, versioned on a name clash)
    assert len(files) == 3, files
    assert checkpoint.best_model_path.endswith(files[-1]) or checkpoint.best_model_path in {
        str(tmp_path / "ckpt" / name) for name in files
    }
    state = torch.load(checkpoint.best_model_path, weights_only=False)
    assert state["state_dict"].keys() == TinyClassifier().state_dict().keys()


def test_the_users_enable_checkpointing_still_wins(tiny_data, tmp_path):
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, monitor="train_loss")
    loop = al.ActiveLearningLoop(
        Random(),
        query_size=5,
        rounds=1,
        trainer_kwargs={**FAST_TRAINER, "callbacks": [checkpoint], "enable_checkpointing": False},
        progress=False,
    )
    with pytest.raises(Exception, match="enable_checkpointing=False"):
        loop.run(TinyClassifier(), make_dm(tiny_data))


def test_early_stopping_starts_afresh_every_round(tiny_data):
    # patience 0: a fit stops at its first epoch that does not beat the best so far. Carried over from
    # round 0's trained model, round 1's first (untrained) epoch could never beat it: 1 epoch per round.
    stopping = pl.callbacks.EarlyStopping(monitor="train_loss", patience=0, mode="min", check_on_train_epoch_end=True)
    recorder = FitRecorder()
    kwargs = {"max_epochs": 4, "accelerator": "cpu", "callbacks": [stopping, recorder]}
    loop = al.ActiveLearningLoop(Random(), query_size=5, rounds=2, trainer_kwargs=kwargs, progress=False)
    loop.run(TinyClassifier(), make_dm(tiny_data, min_steps_per_epoch=4))
    assert len(recorder.epochs) == 3
    assert all(epochs >= 2 for epochs in recorder.epochs), recorder.epochs
    assert torch.isfinite(stopping.best_score)  # the user's instance is the one the fits used


def test_lightning_progress_bar_is_off_unless_asked_for(tiny_data, capsys):
    recorder = FitRecorder()
    kwargs = {**FAST_TRAINER, "callbacks": [recorder]}
    al.ActiveLearningLoop(Random(), query_size=5, rounds=1, trainer_kwargs=kwargs).run(
        TinyClassifier(), make_dm(tiny_data)
    )
    out = capsys.readouterr().out
    assert recorder.bars == [False, False]
    assert out.splitlines() == [
        "[lightning_al] round 1/2 · 10 labelled · test_accuracy " + out.splitlines()[0].rsplit(" ", 1)[1],
        "[lightning_al] round 2/2 · 15 labelled · test_accuracy " + out.splitlines()[1].rsplit(" ", 1)[1],
    ]

    recorder = FitRecorder()
    kwargs = {**FAST_TRAINER, "callbacks": [recorder], "enable_progress_bar": True}
    al.ActiveLearningLoop(Random(), query_size=5, rounds=1, trainer_kwargs=kwargs, progress=False).run(
        TinyClassifier(), make_dm(tiny_data)
    )
    captured = capsys.readouterr()
    assert recorder.bars == [True, True]
    assert "[lightning_al]" not in captured.err + captured.out


def test_internal_fits_take_the_training_arguments_but_nothing_asked_for_the_main_fit():
    user = {
        "max_epochs": 7,
        "gradient_clip_val": 1.0,
        "precision": "bf16-mixed",
        "enable_progress_bar": True,
        "enable_checkpointing": True,
        "enable_model_summary": True,
        "logger": object(),
        "callbacks": [pl.callbacks.ModelCheckpoint()],
    }
    kwargs = trainer_args.internal_fit_kwargs(user, max_epochs=2)
    assert kwargs == {
        "gradient_clip_val": 1.0,
        "precision": "bf16-mixed",
        **trainer_args.QUIET,
        "callbacks": [],
        "max_epochs": 2,
    }


def test_passes_run_on_the_fits_device_in_its_precision():
    user = {"strategy": "ddp", "devices": [1, 2], "num_nodes": 2, "precision": "16-mixed", "max_epochs": 3}
    assert trainer_args.pass_kwargs(user, torch.device("cuda", 2)) == {
        "accelerator": "cuda",
        "devices": [2],
        "precision": "16-mixed",
        **trainer_args.QUIET,
    }
    assert trainer_args.single_device_kwargs(torch.device("cuda")) == {"accelerator": "cuda", "devices": [0]}
    with pytest.raises(ValueError, match="xla"):
        trainer_args.single_device_kwargs(torch.device("xla", 0))


def test_the_loops_passes_get_the_fits_precision(tiny_data):
    loop = al.ActiveLearningLoop(
        Entropy(), query_size=5, rounds=1, trainer_kwargs={**FAST_TRAINER, "precision": "64-true"}, progress=False
    )
    passes = []
    make_pass = loop._eval_trainer

    def recording_pass():
        trainer = make_pass()
        passes.append(trainer)
        return trainer

    loop._eval_trainer = recording_pass
    history = loop.run(TinyClassifier(), make_dm(tiny_data))
    assert len(passes) == 3  # test, scoring, the last test
    assert len({id(trainer) for trainer in passes}) == 1  # one Trainer serves every pass of the run
    assert {trainer.precision for trainer in passes} == {"64-true"}
    assert {trainer.strategy.root_device.type for trainer in passes} == {"cpu"}
    assert all(0 <= row["test_accuracy"] <= 1 for row in history)


def test_a_cold_start_scores_on_the_device_a_fit_would_use(tiny_data):
    train, test = tiny_data
    dm = al.ActiveDataModule(train, test_set=test, initial_labelled=0, batch_size=8, seed=0)
    loop = al.ActiveLearningLoop(Entropy(), query_size=5, rounds=1, trainer_kwargs=FAST_TRAINER, progress=False)
    history = loop.run(TinyClassifier(), dm)
    assert history[0]["num_labelled"] == 0 and len(history[0]["selected_ids"]) == 5
    assert loop._pass_device == torch.device("cpu")
