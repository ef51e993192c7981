"""Self-supervised representations of the unlabelled pool, for strategies that select in an embedding space.

TypiClust, ProbCover, core-set and CAL choose samples by distances between embeddings; before the first
labels the task model's embeddings are those of an untrained network. SimCLR (Chen, Kornblith, Norouzi &
Hinton 2020, "A Simple Framework for Contrastive Learning of Visual Representations", ICML) learns an
encoder from the pool alone, as Hacohen et al. 2022 (TypiClust) and Yehuda et al. 2022 (ProbCover) do:

- `nt_xent_loss`: the contrastive loss, a pure tensor kernel;
- `ImageAugment`: SimCLR's random views for image tensors (or flat vectors of images), seeded;
- `SimCLR`: the LightningModule (encoder + projection head);
- `pretrain_simclr`: pre-train on a pool, encode it, cache encoder and features by fingerprint; its
  result goes to `lightning_al.estimators.FrozenEncoder` or `lightning_al.estimators.PrecomputedEmbeddings`.
"""

from lightning_al.self_supervised.augment import ImageAugment
from lightning_al.self_supervised.loss import nt_xent_loss
from lightning_al.self_supervised.simclr import Pretrained, SimCLR, encode, pretrain_simclr

__all__ = ["ImageAugment", "Pretrained", "SimCLR", "encode", "nt_xent_loss", "pretrain_simclr"]
