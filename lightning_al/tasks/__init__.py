"""Tasks: single-label, multi-label and segmentation (what a label is, probabilities, metrics, reductions)."""

from lightning_al.tasks.base import ALL_TASKS, Task
from lightning_al.tasks.multiclass import MultiClass
from lightning_al.tasks.multilabel import MultiLabel
from lightning_al.tasks.segmentation import MaskLabels, Segmentation

__all__ = ["ALL_TASKS", "MaskLabels", "MultiClass", "MultiLabel", "Segmentation", "Task"]
