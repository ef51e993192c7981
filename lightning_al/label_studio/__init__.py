"""Label Studio as a live oracle: queries pushed as tasks with the model's suggestion, annotations pulled back."""

from lightning_al.label_studio.client import LabelStudioClient, LabelStudioError
from lightning_al.label_studio.oracle import LabelStudioOracle

__all__ = ["LabelStudioClient", "LabelStudioError", "LabelStudioOracle"]
