"""The documentation hook: the public modules it documents and the docstring gaps it reports."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("api_reference", ROOT / "docs" / "hooks" / "api_reference.py")
api_reference = importlib.util.module_from_spec(spec)
spec.loader.exec_module(api_reference)


FAKE_MODULE = '''"""A module with a docstring."""


class Base:
    """A documented base."""

    def step(self, x: int) -> int:
        """One step."""
        return x


class Child(Base):
    """A documented child."""

    def step(self, x: int) -> int:  # inherits Base.step's docstring
        return x + 1

    def undocumented(self, y) -> None:
        pass

    @property
    def size(self) -> int:
        return 1

    def _private(self) -> None:
        pass


def helper(a: int, b, *args, **kwargs) -> None:
    """Documented, but `b` has no annotation."""


def bare(a: int) -> None:
    pass
'''


@pytest.fixture
def fake_module(tmp_path, monkeypatch):
    (tmp_path / "fake_public.py").write_text(FAKE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "fake_public"
    sys.modules.pop("fake_public", None)


def test_gaps_name_every_missing_docstring_and_annotation(fake_module):
    gaps = api_reference.docstring_gaps("fake_public")
    assert sorted(gaps) == [
        "fake_public.Child.size: no docstring",
        "fake_public.Child.undocumented: no docstring",
        "fake_public.Child.undocumented: parameter `y` has no type annotation",
        "fake_public.bare: no docstring",
        "fake_public.helper: parameter `b` has no type annotation",
    ]


def test_a_module_without_docstring_is_a_gap(monkeypatch):
    monkeypatch.setitem(sys.modules, "fake_bare", types.ModuleType("fake_bare"))
    assert api_reference.docstring_gaps("fake_bare") == ["fake_bare: no module docstring"]


def test_every_public_module_of_the_package_gets_a_page_and_no_private_one():
    modules = api_reference.public_modules()
    files = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in (ROOT / "lightning_al").rglob("*.py")
    }
    assert set(modules) == {name for name in files if not any(p.startswith("_") for p in name.split("."))}
    assert "lightning_al.loop" in modules and "lightning_al._atomic" not in modules
    page = api_reference.reference_page("lightning_al.strategies")
    assert "members: false" in page and "[`lightning_al.strategies.uncertainty`]" in page
    assert api_reference.reference_page("lightning_al.loop") == "# `lightning_al.loop`\n\n::: lightning_al.loop\n"


def test_the_package_has_no_docstring_gap():
    gaps = [gap for name in api_reference.public_modules() for gap in api_reference.docstring_gaps(name)]
    assert gaps == []
