"""Every ``python`` code block of the README and the documentation site runs, so the docs cannot drift from the code.

The blocks of one page run in order in one namespace, in a fresh working directory. A block that cannot run
here carries ``<!-- not-run: why -->`` on the line above it; one that needs a prepared resource carries
``<!-- setup: name -->`` (see ``SETUPS``).
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(
    r"^(?:<!-- (?P<marker>not-run|setup): (?P<argument>[^\n]*?) -->\n)?```python\n(?P<code>.*?)^```$",
    re.MULTILINE | re.DOTALL,
)


@dataclass
class Block:
    page: Path
    line: int
    code: str
    marker: str | None
    argument: str | None


def blocks(page: Path) -> list[Block]:
    """The ``python`` blocks of a page, with their line numbers and markers."""
    text = page.read_text()
    return [
        Block(page, text.count("\n", 0, m.start("code")) + 1, m["code"], m["marker"], m["argument"])
        for m in BLOCK.finditer(text)
    ]


def _text_setup(namespace: dict, request: pytest.FixtureRequest) -> None:
    """``tokenizer``, ``train_set``, ``test_set`` (dict items) and ``bert``: the offline corpus and tiny BERT."""
    pytest.importorskip("transformers")
    sys.path.insert(0, str(ROOT / "examples"))
    import text_classification as text

    pool_texts, pool_labels = text.make_corpus(120, seed=0, max_words=40)
    test_texts, test_labels = text.make_corpus(60, seed=1, max_words=40)
    tokenizer = text.train_tokenizer(pool_texts)
    namespace.update(
        tokenizer=tokenizer,
        train_set=text.TextDataset.tokenize(tokenizer, pool_texts, pool_labels, max_length=64),
        test_set=text.TextDataset.tokenize(tokenizer, test_texts, test_labels, max_length=64),
        bert=text.tiny_bert(tokenizer.vocab_size),
    )


def _label_studio_setup(namespace: dict, request: pytest.FixtureRequest) -> None:
    """A Label Studio server of the tests, named by ``LABEL_STUDIO_URL`` and ``LABEL_STUDIO_API_KEY``."""
    from label_studio_server import fresh_server

    server = fresh_server(request.getfixturevalue("tmp_path_factory"))
    request.addfinalizer(server.stop)
    monkeypatch = request.getfixturevalue("monkeypatch")
    monkeypatch.setenv("LABEL_STUDIO_URL", server.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", server.token)


SETUPS: dict[str, Callable[[dict, pytest.FixtureRequest], None]] = {
    "text": _text_setup,
    "label_studio": _label_studio_setup,
}


def test_every_python_block_is_found_and_every_marker_is_known():
    for page in PAGES:
        found = blocks(page)
        assert len(found) == page.read_text().count("```python\n"), f"{page}: a python block the test cannot parse"
        for block in found:
            if block.marker == "not-run":
                assert block.argument.strip(), f"{page}:{block.line}: not-run needs a reason"
            if block.marker == "setup":
                assert block.argument in SETUPS, f"{page}:{block.line}: unknown setup {block.argument!r}"
    runnable = [b for page in PAGES for b in blocks(page) if b.marker != "not-run"]
    skipped = [b for page in PAGES for b in blocks(page) if b.marker == "not-run"]
    assert len(runnable) >= 20 and len(skipped) <= 2, (len(runnable), [f"{b.page}:{b.line}" for b in skipped])


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p)], ids=lambda p: str(p.relative_to(ROOT)))
def test_page_code_runs(page: Path, tmp_path, monkeypatch, request):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    namespace: dict = {"__name__": "__docs__"}
    ran = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for block in blocks(page):
            if block.marker == "not-run":
                continue
            if block.marker == "setup":
                SETUPS[block.argument](namespace, request)
            where = f"{page.relative_to(ROOT)}:{block.line}"
            exec(compile(block.code, where, "exec"), namespace)
            ran += 1
    assert ran or all(b.marker == "not-run" for b in blocks(page))
