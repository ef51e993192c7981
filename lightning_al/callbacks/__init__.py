"""Callbacks that attach to a user's Trainer."""

from lightning_al.callbacks.snapshots import SnapshotCallback, cyclic_cosine_factor

__all__ = ["SnapshotCallback", "cyclic_cosine_factor"]
