"""A screenshot of a Label Studio project filled by LabelStudioOracle, its tasks sorted by acquisition score.

    python -m benchmarks.label_studio_screenshot     # writes docs/images/label_studio_project.png

Starts a real Label Studio server (``make label-studio``) on a fresh data directory, runs one round of the
digits loop with ``LabelStudioOracle`` (the query is pushed, the run stops), logs a headless Chromium in and
captures the project's "By acquisition score" view. Needs ``pip install playwright`` and a Chromium
(``apt-get install chromium``, or ``CHROMIUM=/path/to/chrome``).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from label_studio_server import PASSWORD, USER, init_data_dir, start_server

import lightning_al as al
from lightning_al.datasets import Digits
from lightning_al.label_studio import LabelStudioOracle
from lightning_al.models import MLPClassifier
from lightning_al.strategies import Entropy

OUTPUT = Path(__file__).parents[1] / "docs" / "images" / "label_studio_project.png"


def fill_project(url: str, token: str, run_dir: Path) -> LabelStudioOracle:
    """One round of the digits loop: fit on 20 labels, query 30 by entropy, push them, stop."""
    torch.manual_seed(0)
    dm = al.ActiveDataModule(Digits("pool"), test_set=Digits("test"), initial_labelled=20, batch_size=32, seed=0)
    oracle = LabelStudioOracle(url, [str(d) for d in range(10)], project="digits", token=token, image_shape=[8, 8])
    loop = al.ActiveLearningLoop(
        Entropy(), query_size=30, rounds=2, oracle=oracle, output_dir=str(run_dir), seed=0, progress=False,
        trainer_kwargs={"max_epochs": 30, "accelerator": "cpu"},
    )  # fmt: skip
    loop.run(MLPClassifier(in_features=64, num_classes=10), dm)
    return oracle


def capture(url: str, page_url: str, output: Path) -> None:
    from playwright.sync_api import sync_playwright

    executable = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{url}/user/login/")
        page.fill("input[name=email]", USER)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit], input[type=submit]")
        page.wait_for_load_state("networkidle")
        page.goto(page_url)
        page.wait_for_load_state("networkidle")
        page.wait_for_timeout(3000)  # the Data Manager renders the task table after its own requests
        output.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(output))
        browser.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as root:
        data_dir = Path(root) / "data"
        data_dir.mkdir()
        init_data_dir(data_dir)
        server = start_server(data_dir, Path(root) / "server.log")
        try:
            oracle = fill_project(server.url, server.token, Path(root) / "run")
            capture(server.url, oracle.project_url(), OUTPUT)
        finally:
            server.stop()
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
