"""The claims table: every benchmarked arm has its paper's claim, and the AULC cells come from the result tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.arms import ARMS
from benchmarks.claims import CLAIMS, COLUMNS, claims_table, read_aulc

RESULT = """# Learning curves: digits

| strategy | labels to 80% | AULC ÷ Random | s / round | seeds |
|---|---|---|---|---|
| Random | 53 ± 6 | 1.000 ± 0.014 | 0.29 ± 0.02 | 3 |
| Margin | 33 ± 6 | 1.064 ± 0.008 | 0.29 ± 0.02 | 3 |

trailing text
"""


def test_every_arm_has_a_claim_in_a_setting_that_exists():
    assert set(ARMS) <= set(CLAIMS)
    assert all(claim.regime in COLUMNS for claim in CLAIMS.values())


def test_aulc_cells_are_read_by_column_name():
    assert read_aulc(RESULT) == {"Random": "1.000 ± 0.014", "Margin": "1.064 ± 0.008"}
    with pytest.raises(ValueError, match="'AULC ÷ Random' column"):
        read_aulc("| strategy | accuracy |\n|---|---|\n| Random | 0.5 |\n")


def test_the_table_bolds_the_regime_setting_and_refuses_an_arm_without_a_claim(tmp_path: Path):
    (tmp_path / "digits.md").write_text(RESULT)
    (tmp_path / "digits_cold_start.md").write_text(RESULT.replace("Margin", "TypiClust"))
    (tmp_path / "tasks.md").write_text(
        "| strategy | multilabel: AULC ÷ Random | segmentation: AULC ÷ Random |\n|---|---|---|\n"
        "| Random | 1.000 ± 0.017 | 1.000 ± 0.063 |\n| SuggestiveAnnotation | 1.050 ± 0.008 | 1.085 ± 0.006 |\n"
    )
    lines = claims_table(tmp_path).splitlines()
    assert lines[0].endswith("| digits | cold start | multi-label | segmentation |")
    assert next(line for line in lines if line.startswith("| SuggestiveAnnotation |")) == (
        "| SuggestiveAnnotation | Yang et al. 2017 | gland segmentation, FCN committee: above uncertainty alone |  |  "
        "| 1.050 ± 0.008 | **1.085 ± 0.006** |"
    )
    rows = {line.split(" | ")[0][2:]: line for line in lines[2:]}
    assert rows["Margin"].endswith("| **1.064 ± 0.008** |  |  |  |")
    assert rows["TypiClust"].endswith("|  | **1.064 ± 0.008** |  |  |")
    (tmp_path / "glyphs.md").write_text(RESULT.replace("Margin", "MyStrategy"))
    with pytest.raises(ValueError, match=r"claim for every benchmarked arm, but \['MyStrategy'\] have none"):
        claims_table(tmp_path)
