"""Active learning for semantic segmentation: a small U-Net queries whole images, scored per pixel.

The task is given once, ``ActiveDataModule(..., task=Segmentation(num_classes))``: a label is an ``(H, W)``
mask of class ids (``255`` marks pixels nobody labelled, such as object outlines), every pixel is scored
(entropy, or BALD from MC-dropout passes) and an image's score is the mean over its pixels. The loop records
the test set's mean IoU (``test_miou``) and pixel accuracy after every fit.

    python examples/segmentation.py                      # Shapes 32x32, entropy (~25 s on 2 cores)
    python examples/segmentation.py --strategy bald      # MC dropout in the U-Net's head only
    python examples/segmentation.py --tiny               # a few seconds: tiny pool, 2 rounds
    python examples/segmentation.py --dataset pets --data-root data --accelerator auto   # downloads ~800 MB

``--dataset shapes`` (the default) needs no download: :class:`~lightning_al.datasets.Shapes` draws noisy
squares (class 1) and discs (class 2) of random brightness on a background (class 0), so only their shape
tells them apart; their one-pixel outlines are 255 in the masks. :class:`SmallUNet`'s only dropout sits
before its 1x1 head, so BALD's ``T`` passes run the encoder and decoder once per batch and the head ``T``
times. ``--dataset pets`` downloads the Oxford-IIIT Pet trimaps with torchvision (``OxfordIIITPet(...,
target_types="segmentation")``), resized to ``--image-size``: trimap 1 (pet) is class 1, 2 (background) is
class 0 and 3 (the uncertain border) is 255, ignored in training and in the metrics.

Each fit anneals the learning rate to 0 over its steps (cosine): with a constant rate, fits of the U-Net on
a few dozen Shapes images now and then stall with squares and discs merged into one class, which makes the
learning curve jump up and down from one round to the next.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import Dataset

import lightning_al as al
from lightning_al.datasets import Shapes
from lightning_al.models import SmallUNet
from lightning_al.tasks import Segmentation

IGNORE = 255
STRATEGIES: dict[str, Callable[[argparse.Namespace], al.Strategy]] = {
    "random": lambda args: al.strategies.Random(),
    "entropy": lambda args: al.strategies.Entropy(),
    "margin": lambda args: al.strategies.Margin(),
    "bald": lambda args: al.strategies.BALD(mc_samples=args.mc_samples),
    "meanstd": lambda args: al.strategies.MeanSTD(mc_samples=args.mc_samples),
    "coreset": lambda args: al.strategies.CoreSet(),
}
# Defaults of each data path, and of --tiny; flags left unset take them.
DEFAULTS = {
    "shapes": dict(
        pool_size=300,
        test_size=200,
        image_size=32,
        noise=0.15,
        initial=4,
        query_size=4,
        rounds=5,
        epochs=8,
        min_steps=25,
        width=16,
        batch_size=8,
        lr=3e-3,
    ),
    "pets": dict(
        pool_size=None,
        test_size=None,
        image_size=128,
        noise=None,
        initial=50,
        query_size=50,
        rounds=8,
        epochs=10,
        min_steps=0,
        width=32,
        batch_size=16,
        lr=1e-3,
    ),
    "tiny": dict(
        pool_size=40,
        test_size=24,
        image_size=16,
        noise=0.15,
        initial=4,
        query_size=4,
        rounds=2,
        epochs=4,
        min_steps=15,
        width=8,
        batch_size=4,
        lr=1e-2,
    ),
}


class CosineUNet(SmallUNet):
    """:class:`~lightning_al.models.SmallUNet` whose Adam learning rate follows a cosine from ``lr`` to 0 over
    the fit (``trainer.estimated_stepping_batches`` steps, one scheduler step per optimizer step)."""

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


# ----- Oxford-IIIT Pet --------------------------------------------------------------------------
def trimap_to_mask(trimap: Tensor) -> Tensor:
    """An Oxford-IIIT Pet trimap (1 pet, 2 background, 3 border) as a mask: 1, 0 and ``IGNORE`` (long)."""
    mask = torch.full(trimap.shape, IGNORE, dtype=torch.long)
    mask[trimap == 1] = 1
    mask[trimap == 2] = 0
    return mask


class PetSegmentation(Dataset):
    """Items ``(image, mask)`` from a dataset of ``(PIL image, PIL trimap)`` pairs (``OxfordIIITPet(...,
    target_types="segmentation")``): ``image`` ``(3, size, size)`` float in [0, 1] (bilinear resize) and ``mask``
    ``(size, size)`` long from :func:`trimap_to_mask` (nearest-neighbour resize, so no new trimap values appear)."""

    def __init__(self, pairs: Dataset, size: int) -> None:
        self.pairs, self.size = pairs, size

    def __len__(self) -> int:
        return len(self.pairs)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        import numpy as np
        from PIL import Image

        image, trimap = self.pairs[index]
        image = image.convert("RGB").resize((self.size, self.size), Image.Resampling.BILINEAR)
        trimap = trimap.resize((self.size, self.size), Image.Resampling.NEAREST)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
        return pixels, trimap_to_mask(torch.from_numpy(np.asarray(trimap, dtype=np.int64)))


def pets_data(args: argparse.Namespace) -> tuple[Dataset, Dataset]:
    """``(pool, test)``: Oxford-IIIT Pet ``trainval`` (3,680 images) and ``test`` (3,669), downloaded on first use."""
    try:
        from torchvision.datasets import OxfordIIITPet
    except ImportError as error:
        raise ImportError("--dataset pets needs torchvision: `pip install torchvision`.") from error

    def split(name: str, limit: int | None) -> Dataset:
        pairs = OxfordIIITPet(args.data_root, split=name, target_types="segmentation", download=True)
        data: Dataset = PetSegmentation(pairs, args.image_size)
        if limit is not None and limit < len(pairs):
            data = torch.utils.data.Subset(data, range(limit))
        return data

    return split("trainval", args.pool_size), split("test", args.test_size)


# ----- the experiment ---------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("shapes", "pets"), default="shapes", help="see the module docstring")
    parser.add_argument("--data-root", default="data", help="pets: download folder")
    parser.add_argument("--strategy", choices=list(STRATEGIES), default="entropy")
    parser.add_argument("--mc-samples", type=int, default=20, help="MC-dropout passes of bald and meanstd")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (shapes only): a smoke test in seconds")
    parser.add_argument("--pool-size", type=int, help="images in the pool (shapes 300; pets: all 3,680)")
    parser.add_argument("--test-size", type=int, help="images in the test set (shapes 200; pets: all 3,669)")
    parser.add_argument("--image-size", type=int, help="height and width, even (shapes 32, pets 128)")
    parser.add_argument("--noise", type=float, help="shapes: pixel noise (0.15)")
    parser.add_argument("--initial", type=int, help="images labelled at random before round 0 (shapes 4, pets 50)")
    parser.add_argument("--query-size", type=int, help="images labelled per round (shapes 4, pets 50)")
    parser.add_argument("--rounds", type=int, help="queries (shapes 5, pets 8)")
    parser.add_argument("--epochs", type=int, help="epochs per fit (shapes 8, pets 10)")
    parser.add_argument("--min-steps", type=int, help="training steps per epoch at least (shapes 25, pets 0)")
    parser.add_argument("--width", type=int, help="U-Net channels at full resolution (shapes 16, pets 32)")
    parser.add_argument("--batch-size", type=int, help="training batch size (shapes 8, pets 16)")
    parser.add_argument("--lr", type=float, help="peak Adam learning rate (shapes 3e-3, pets 1e-3)")
    parser.add_argument("--num-workers", type=int, default=0, help="dataloader workers (pets: decoding JPEGs)")
    parser.add_argument("--accelerator", default="cpu", help="Trainer accelerator")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.tiny and args.dataset != "shapes":
        parser.error("--tiny runs the generated shapes only")
    for name, value in DEFAULTS["tiny" if args.tiny else args.dataset].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.image_size < 2 or args.image_size % 2:
        parser.error(f"--image-size must be even and >= 2 (the U-Net pools once), got {args.image_size}")
    if args.min_steps < 0 or args.rounds < 0 or args.num_workers < 0:
        parser.error("--min-steps, --rounds and --num-workers must be >= 0")
    for name in ("initial", "query_size", "epochs", "width", "batch_size", "mc_samples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.dataset == "shapes":
        for name in ("pool_size", "test_size"):
            if getattr(args, name) < 1:
                parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
        if args.initial + args.rounds * args.query_size > args.pool_size:
            parser.error("--initial + --rounds * --query-size exceeds --pool-size")
    return args


def shapes_data(args: argparse.Namespace) -> tuple[Dataset, Dataset]:
    """``(pool, test)`` of :class:`Shapes` at ``args.image_size`` and ``args.noise`` (test drawn with another seed)."""
    pool = Shapes(args.pool_size, size=args.image_size, noise=args.noise, seed=args.seed)
    test = Shapes(args.test_size, size=args.image_size, noise=args.noise, seed=args.seed + 1_000_003)
    return pool, test


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the experiment of the command line ``argv``; prints one line per round and returns the history."""
    args = parse_args(argv)
    # Lightning itself trips a torch pytree deprecation on every fit; it says nothing about this run.
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    if args.dataset == "shapes":
        pool, test = shapes_data(args)
        in_channels, num_classes = 1, Shapes.num_classes
    else:
        pool, test = pets_data(args)
        in_channels, num_classes = 3, 2
    datamodule = al.ActiveDataModule(
        pool,
        test_set=test,
        task=Segmentation(num_classes, ignore_index=IGNORE),
        initial_labelled=args.initial,
        batch_size=args.batch_size,
        eval_batch_size=64,
        min_steps_per_epoch=args.min_steps,
        num_workers=args.num_workers,
        seed=args.seed,
    )
    pl.seed_everything(args.seed, verbose=False)
    model = CosineUNet(in_channels=in_channels, num_classes=num_classes, width=args.width, lr=args.lr)
    loop = al.ActiveLearningLoop(
        strategy=STRATEGIES[args.strategy](args),
        query_size=args.query_size,
        rounds=args.rounds,
        trainer_kwargs=dict(max_epochs=args.epochs, accelerator=args.accelerator, enable_progress_bar=False),
        seed=args.seed,
        progress=False,
    )
    size = f"{args.image_size}x{args.image_size}"
    print(f"{args.strategy} on {args.dataset} ({size}): pool {len(pool)}, test {len(test)}", flush=True)
    print(f"{'round':>5}{'labelled':>10}{'test mIoU':>11}{'pixel acc':>11}{'train s':>9}{'score s':>9}", flush=True)

    def report(row: dict) -> None:
        score = f"{row['score_seconds']:9.2f}" if "score_seconds" in row else f"{'-':>9}"
        print(
            f"{row['round']:>5}{row['num_labelled']:>10}{row['test_miou']:>11.3f}{row['test_pixel_accuracy']:>11.3f}"
            f"{row.get('train_seconds', 0.0):>9.2f}{score}",
            flush=True,
        )

    return loop.run(model, datamodule, on_round_end=report)


if __name__ == "__main__":
    main()
