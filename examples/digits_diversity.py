"""Diversity, gradient and hybrid strategies on scikit-learn's digits, against Random.

Same protocol as ``examples/digits.py`` (20 initial labels, queries of 10, 25 rounds,
3 seeds, an MLP with dropout). Contenders: core-set (Sener & Savarese 2018), BADGE
(Ash et al. 2020), expected gradient length (Settles et al. 2008), diverse mini-batch
(Zhdanov 2019) and CAL (Margatina et al. 2021); all read the 128-d input of the MLP's
last linear layer as embedding.

    python examples/digits_diversity.py
    python examples/digits_diversity.py --strategies Random BADGE --seeds 1
"""

from __future__ import annotations

from digits import ARMS, Arm, main

import lightning_al as al

DIVERSITY_ARMS = {
    "Random": ARMS["Random"],
    "CoreSet": Arm(al.strategies.CoreSet),
    "BADGE": Arm(al.strategies.BADGE),
    "DiverseMiniBatch": Arm(al.strategies.DiverseMiniBatch),
    "EGL": Arm(al.strategies.EGL),
    "CAL": Arm(al.strategies.CAL),
}


if __name__ == "__main__":
    main(DIVERSITY_ARMS, __doc__, default_output="examples/results/digits_diversity")
