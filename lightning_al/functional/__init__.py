"""Pure tensor kernels: acquisition scores and selection helpers.

No Lightning, no I/O; randomness only through an explicit ``generator``. Every score is
*higher = query first*, in nats where it is an entropy.
"""

from lightning_al.functional.selection import topk_select
from lightning_al.functional.uncertainty import entropy, least_confidence, margin

__all__ = ["entropy", "least_confidence", "margin", "topk_select"]
