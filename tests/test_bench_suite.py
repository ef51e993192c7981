"""The benchmark suite's entry point: parts run, their rows land in one markdown table with the machine and command."""

from __future__ import annotations

from benchmarks.__main__ import PARTS, main, markdown
from benchmarks.suite import SuiteRow


def test_markdown_has_one_line_per_row_and_names_the_reference() -> None:
    rows = [
        SuiteRow("pool scoring", "floor", 2.0),
        SuiteRow("pool scoring", "BALD", 3.0, "floor", 1.5, "T=20"),
    ]
    lines = markdown(rows).splitlines()
    assert len(lines) == 4
    assert lines[2] == "| pool scoring | floor | 2.000 |  | (reference) |  |"
    assert lines[3] == "| pool scoring | BALD | 3.000 | 1.5 | floor | T=20 |"


def test_every_part_is_a_module_with_suite_rows() -> None:
    import importlib

    for module in PARTS.values():
        assert callable(importlib.import_module(f"benchmarks.{module}").suite_rows)


def test_quick_suite_writes_the_table(tmp_path, capsys) -> None:
    output = tmp_path / "suite.md"
    assert main(["--quick", "--only", "loop", "batchbald", "--output", str(output)]) == 0
    text = output.read_text()
    assert "Command: `python -m benchmarks --quick --only loop batchbald`" in text
    assert "Machine: " in text and "torch" in text
    table = [line for line in text.splitlines() if line.startswith("| ")][1:]
    assert any(line.startswith("| loop") or "round" in line for line in table)
    assert any("identical picks" in line for line in table)
    assert "written to" in capsys.readouterr().out
