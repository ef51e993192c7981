"""Selection via proxy: a cheaper model does the scoring."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from lightning_al.estimators.base import Estimator, TrainFn
from lightning_al.namespace import namespace_of

if TYPE_CHECKING:
    import pytorch_lightning as pl


class ProxyEstimator(Estimator):
    """Score the pool with ``proxy`` instead of the loop's model (Coleman et al. 2020, "Selection via
    Proxy: Efficient Data Selection for Deep Learning").

    Every round the proxy is fitted from scratch on the labelled set through the loop (with
    ``trainer_overrides``, e.g. fewer epochs); ``inner`` then computes the strategy's outputs on
    the proxy. The loop's model is still trained every round and is the one tested. With
    ``fresh_init=True`` (the authors' code: a new model every round) the proxy's weights are
    drawn anew each round and its fit is seeded from the loop's seed, the round and ``seed``
    (see `TrainFn`), so the proxy varies with the run like the target does; with ``False`` it is
    reset to the weights it had when given and every fit is seeded with ``seed`` alone.

    Args:
        proxy: a smaller LightningModule with the same inputs and classes.
        inner: the estimator run on the proxy.
        seed: seed of the proxy's fits (mixed with the run's seed and round when ``fresh_init``).
        fresh_init: new initial weights every round (``True``) or the given ones (``False``).
        trainer_overrides: Trainer arguments replaced for the proxy's fits.
    """

    def __init__(
        self, proxy: nn.Module, inner: Estimator, seed: int = 0, fresh_init: bool = True, **trainer_overrides: Any
    ) -> None:
        namespace_of(proxy, "proxy")  # a LightningModule of either namespace
        if not isinstance(fresh_init, bool):
            raise TypeError(f"Expected `fresh_init` to be a bool, but got {fresh_init!r}.")
        self.proxy, self.inner, self.seed, self.fresh_init = proxy, inner, seed, fresh_init
        self.trainer_overrides = trainer_overrides
        self.provides = inner.provides
        # the weights every fit restarts from, kept only when they are reused
        self._initial_state = None if fresh_init else copy.deepcopy(proxy.state_dict())

    def fit(self, model: pl.LightningModule, train: TrainFn) -> None:
        """Fit the proxy from fresh (or its given) initial weights on the labelled set, then ``inner`` on it."""
        if self.fresh_init:
            train(self.proxy, self.seed, fresh_init=True, **self.trainer_overrides)
        else:
            self.proxy.load_state_dict(self._initial_state)
            train(self.proxy, self.seed, **self.trainer_overrides)
        self.inner.fit(self.proxy, train)

    def modules(self) -> list[nn.Module]:
        """The proxy and the modules of ``inner``."""
        return [self.proxy, *self.inner.modules()]

    def predict(self, model: nn.Module, inputs: Any, needs: frozenset[str]) -> dict[str, Tensor]:
        """The outputs of ``inner`` on the proxy; ``model`` is unused."""
        return self.inner.predict(self.proxy, inputs, needs)
