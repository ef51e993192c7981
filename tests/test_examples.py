"""The examples: the existing-project conversion runs end to end; MNIST and CIFAR-10 import and parse without
torchvision, and their loops run on stand-in tensors of the real shapes."""

from __future__ import annotations

import importlib.util
import json
import shlex
import sys
from pathlib import Path

import pytest
import torch
import wandb
from torch.utils.data import TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import cifar10  # noqa: E402
import existing_project  # noqa: E402
import mnist  # noqa: E402

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None


def stand_in_images(n: int, shape: tuple[int, ...], seed: int) -> TensorDataset:
    """``n`` random images of ``shape`` with labels ``0..9`` in turn (every class present)."""
    x = torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))
    return TensorDataset(x, torch.arange(n) % 10)


def test_existing_project_runs_as_active_learning(tmp_path):
    history = existing_project.main(
        epochs=1, strategy="Margin", initial_labelled=10, query_size=5, rounds=2, output_dir=str(tmp_path)
    )
    assert [row["num_labelled"] for row in history] == [10, 15, 20]
    for row in history:  # the user's own validation_step / test_step metrics land in the history
        assert {"val_acc", "test_acc", "test_accuracy"} <= set(row)
        assert row["test_acc"] == pytest.approx(row["test_accuracy"], abs=1e-6)
    queried = [i for row in history[:-1] for i in row["selected_ids"]]
    assert len(queried) == len(set(queried)) == 10
    assert json.loads((tmp_path / "history.json").read_text())[-1]["num_labelled"] == 20


def test_existing_project_is_a_plain_lightning_project():
    datamodule = existing_project.DigitsDataModule()
    datamodule.setup("fit")
    sizes = [len(datamodule.train_set), len(datamodule.val_set), len(datamodule.test_set)]
    assert sum(sizes) == 1797
    x, _ = next(iter(datamodule.train_dataloader()))
    assert x.shape == (32, 1, 8, 8) and x.min() >= 0 and x.max() <= 1
    assert existing_project.DigitsCNN()(x).shape == (32, 10)


@pytest.mark.parametrize("example", [mnist, cifar10])
def test_image_examples_import_without_torchvision_and_parse_their_flags(example):
    defaults = example.parse_args([])
    assert defaults.wandb is False and defaults.resume is False and defaults.data_root == "data"
    assert example.make_logger(defaults) is False
    args = example.parse_args(["--wandb", "--wandb-project", "p", "--rounds", "3", "--seed", "2"])
    assert (args.wandb, args.rounds, args.seed) == (True, 3, 2)
    logger = example.make_logger(args)
    assert type(logger).__name__ == "WandbLogger" and logger.name == "p"
    assert wandb.run is None  # no W&B run starts until the loop first logs


@pytest.mark.skipif(HAS_TORCHVISION, reason="checks the message shown when torchvision is missing")
@pytest.mark.parametrize("example", [mnist, cifar10])
def test_image_examples_say_how_to_install_torchvision(example, tmp_path):
    with pytest.raises(ImportError, match="pip install torchvision"):
        example.main(["--data-root", str(tmp_path), "--output", ""])


def test_mnist_bald_loop_runs_on_mnist_shaped_tensors():
    args = mnist.parse_args(
        shlex.split(
            "--initial-per-class 1 --query-size 3 --rounds 1 --epochs 1 --mc-samples 3 --batch-size 8 "
            "--num-workers 0 --output ''"
        )
    )
    history = mnist.run(args, stand_in_images(40, (1, 28, 28), 0), stand_in_images(20, (1, 28, 28), 1))
    assert [row["num_labelled"] for row in history] == [10, 13]
    assert len(history[0]["selected_scores"]) == 3  # BALD scored the picks
    assert mnist.MNISTCNN()(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_cifar10_badge_loop_runs_on_cifar_shaped_tensors():
    args = cifar10.parse_args(
        shlex.split("--initial 10 --query-size 5 --rounds 1 --epochs 1 --batch-size 8 --num-workers 0 --output ''")
    )
    train = stand_in_images(40, (3, 32, 32), 0)
    history = cifar10.run(args, train, train, stand_in_images(20, (3, 32, 32), 1))
    assert [row["num_labelled"] for row in history] == [10, 15]
    assert len(set(history[0]["selected_ids"])) == 5
