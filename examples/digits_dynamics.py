"""Strategies that hook training on scikit-learn's digits, against Random.

Same protocol as ``examples/digits.py`` (20 initial labels, queries of 10, 25 rounds,
3 seeds, an MLP with dropout). Contenders: label dispersion over the epochs of each fit
(Bengar et al. 2021), a loss-prediction head on the MLP's hidden layers (Yoo & Kweon
2019), VAAL's VAE and discriminator trained alongside (Sinha et al. 2019), CEAL's
pseudo-labels on top of entropy sampling (Wang et al. 2016) and MAL's minimax entropy with a
discriminator on the MLP's features (Ebrahimi et al. 2021; its MLP ends in a cosine classifier).

    python examples/digits_dynamics.py
    python examples/digits_dynamics.py --strategies Random CEAL --seeds 1
"""

from __future__ import annotations

import functools

from digits import ARMS, Arm, DigitsMLP, main

from lightning_al.callbacks.mal import CosineClassifier
from lightning_al.strategies.ceal import CEAL
from lightning_al.strategies.dynamics import LabelDispersion
from lightning_al.strategies.loss_prediction import LossPrediction
from lightning_al.strategies.mal import MAL
from lightning_al.strategies.vaal import VAAL


def cosine_mlp() -> DigitsMLP:
    """The digits MLP with MAL's cosine classifier (temperature 0.05) in place of its last linear layer."""
    model = DigitsMLP()
    model.net[6] = CosineClassifier(model.hparams.hidden, model.hparams.num_classes, temperature=0.05)
    return model


DYNAMICS_ARMS = {
    "Random": ARMS["Random"],
    "LabelDispersion": Arm(LabelDispersion),
    "LossPrediction": Arm(functools.partial(LossPrediction, layers=["net.1", "net.4"])),
    "VAAL": Arm(VAAL),
    "CEAL": Arm(functools.partial(CEAL, threshold=0.05, decay=0.002)),
    "MAL": Arm(functools.partial(MAL, encoder_layer="net.4"), model=cosine_mlp),
    "Entropy": ARMS["Entropy"],
}


if __name__ == "__main__":
    main(DYNAMICS_ARMS, __doc__, default_output="examples/results/digits_dynamics")
