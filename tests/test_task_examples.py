"""The multi-label and segmentation examples and benchmarks: tiny runs of each example (and of its real-data path on
stand-in data), the learning-curve benchmark's quick protocol and the segmentation scoring benchmark's pieces."""

from __future__ import annotations

import shlex
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT))  # the benchmarks package, from any working directory

import multilabel  # noqa: E402
import segmentation  # noqa: E402

from benchmarks import segmentation_scoring, task_curves  # noqa: E402


def _check_history(history: list[dict], metrics: tuple[str, ...], grid: list[int]) -> None:
    assert [row["num_labelled"] for row in history] == grid
    for row in history:
        for metric in metrics:
            assert 0.0 <= row[metric] <= 1.0, (metric, row[metric])
    queried = [i for row in history[:-1] for i in row["selected_ids"]]
    assert len(queried) == len(set(queried)) == grid[-1] - grid[0]


def _printed_rounds(out: str) -> list[list[str]]:
    return [line.split() for line in out.splitlines() if line.split() and line.split()[0].isdigit()]


# ----- multi-label ------------------------------------------------------------------------------------------
def test_multilabel_example_learns_and_prints_one_line_per_round(capsys):
    history = multilabel.main(["--tiny", "--strategy", "entropy"])
    _check_history(history, ("test_map", "test_f1"), [10, 20, 30])
    assert history[-1]["test_map"] > history[0]["test_map"] + 0.03  # seeded: 0.378 -> 0.447
    lines = _printed_rounds(capsys.readouterr().out)
    assert [line[:2] for line in lines] == [["0", "10"], ["1", "20"], ["2", "30"]]
    assert [float(line[2]) for line in lines] == pytest.approx([row["test_map"] for row in history], abs=5e-4)


@pytest.mark.parametrize("strategy", ["bald", "coreset", "badge"])
def test_multilabel_example_runs_each_kind_of_strategy(strategy):
    history = multilabel.main(["--tiny", "--strategy", strategy, "--rounds", "1", "--mc-samples", "4"])
    _check_history(history, ("test_map", "test_f1"), [10, 20])


def test_multilabel_yeast_path_on_stand_in_openml_data(monkeypatch):
    import sklearn.datasets

    generator = np.random.default_rng(0)
    x = generator.normal(size=(150, 103))
    labels = np.where(x[:, :14] > 0, "TRUE", "FALSE").astype(object)  # 14 label columns, as OpenML gives them

    def fetch_openml(name, version, **kwargs):
        assert (name, version, kwargs["return_X_y"]) == ("yeast", 4, True)
        return x, labels

    monkeypatch.setattr(sklearn.datasets, "fetch_openml", fetch_openml)
    pool, test, in_features, num_labels = multilabel.yeast_data("unused", seed=0)
    assert (len(pool), len(test), in_features, num_labels) == (120, 30, 103, 14)
    features, targets = pool.tensors
    assert features.mean(dim=0).abs().max() < 1e-5 and targets.dtype == torch.float32
    args = shlex.split("--dataset yeast --initial 10 --query-size 10 --rounds 1 --epochs 1 --min-steps 2")
    _check_history(multilabel.main(args), ("test_map", "test_f1"), [10, 20])


def test_multilabel_flags_are_checked():
    for argv in (["--dataset", "yeast", "--tiny"], ["--tiny", "--rounds", "20"], ["--query-size", "0"]):
        with pytest.raises(SystemExit):
            multilabel.parse_args(argv)


# ----- segmentation -----------------------------------------------------------------------------------------
def test_segmentation_example_learns_and_prints_one_line_per_round(capsys):
    history = segmentation.main(["--tiny", "--strategy", "entropy"])
    _check_history(history, ("test_miou", "test_pixel_accuracy"), [4, 8, 12])
    assert history[-1]["test_miou"] > history[0]["test_miou"] + 0.02  # seeded: 0.577 -> 0.611
    lines = _printed_rounds(capsys.readouterr().out)
    assert [float(line[2]) for line in lines] == pytest.approx([row["test_miou"] for row in history], abs=5e-4)


@pytest.mark.parametrize("strategy", ["bald", "coreset"])
def test_segmentation_example_runs_mc_dropout_and_diversity(strategy):
    history = segmentation.main(["--tiny", "--strategy", strategy, "--rounds", "1", "--mc-samples", "4"])
    _check_history(history, ("test_miou", "test_pixel_accuracy"), [4, 8])


def test_cosine_unet_anneals_its_learning_rate_to_zero():
    import pytorch_lightning as pl

    model = segmentation.CosineUNet(width=4, lr=1e-2)
    model.trainer = types.SimpleNamespace(estimated_stepping_batches=10)  # what Lightning gives it in a fit
    config = model.configure_optimizers()
    scheduler = config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step" and scheduler.T_max == 10
    for _ in range(10):
        config["optimizer"].step()
        scheduler.step()
    assert config["optimizer"].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert isinstance(model, pl.LightningModule)


def test_trimaps_become_pet_background_and_ignored_border():
    trimap = torch.tensor([[1, 2, 3], [3, 1, 2]])
    assert segmentation.trimap_to_mask(trimap).tolist() == [[1, 0, 255], [255, 1, 0]]


def _fake_pet(seed: int, size: tuple[int, int] = (24, 20)) -> tuple[Image.Image, Image.Image]:
    generator = np.random.default_rng(seed)
    image = Image.fromarray(generator.integers(0, 256, (*size[::-1], 3), dtype=np.uint8))
    trimap = np.full(size[::-1], 2, dtype=np.uint8)
    trimap[4:14, 5:15] = 1
    trimap[4:14, 5] = trimap[4:14, 14] = 3
    return image, Image.fromarray(trimap)


def test_pet_items_are_resized_images_and_masks():
    item_image, item_mask = segmentation.PetSegmentation([_fake_pet(0)], size=16)[0]
    assert item_image.shape == (3, 16, 16) and item_image.dtype == torch.float32
    assert item_image.min() >= 0.0 and item_image.max() <= 1.0
    assert item_mask.shape == (16, 16) and item_mask.dtype == torch.long
    assert set(item_mask.unique().tolist()) == {0, 1, 255}  # nearest resize: no in-between trimap values


def test_pets_path_runs_on_a_stand_in_torchvision(monkeypatch):
    made = []

    class OxfordIIITPet:  # the torchvision signature the example calls, serving made-up pets
        def __init__(self, root, split, target_types, download):
            assert (split in ("trainval", "test"), target_types, download) == (True, "segmentation", True)
            made.append(split)
            self.pairs = [
                _fake_pet(i + (100 if split == "test" else 0)) for i in range(20 if split == "trainval" else 8)
            ]

        def __len__(self):
            return len(self.pairs)

        def __getitem__(self, index):
            return self.pairs[index]

    torchvision = types.ModuleType("torchvision")
    torchvision.datasets = types.SimpleNamespace(OxfordIIITPet=OxfordIIITPet)
    monkeypatch.setitem(sys.modules, "torchvision", torchvision)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", torchvision.datasets)
    argv = shlex.split(
        "--dataset pets --image-size 16 --initial 4 --query-size 4 --rounds 1 --epochs 1 --width 4 --batch-size 4 "
        "--test-size 6 --strategy bald --mc-samples 3"
    )
    _check_history(segmentation.main(argv), ("test_miou", "test_pixel_accuracy"), [4, 8])
    assert made == ["trainval", "test"]


def test_segmentation_flags_are_checked():
    for argv in (["--image-size", "15"], ["--dataset", "pets", "--tiny"], ["--tiny", "--rounds", "50"]):
        with pytest.raises(SystemExit):
            segmentation.parse_args(argv)


# ----- the learning-curve benchmark -------------------------------------------------------------------------
def test_task_curves_quick_writes_tables_plots_and_keeps_other_sections(tmp_path, capsys):
    results = tmp_path / task_curves.RESULTS_FILE
    task_curves.write_section(results, "segmentation_scoring", "## scoring\n\nkept")
    assert task_curves.main(["--quick", "--output", str(tmp_path), "--workers", "2"]) == 0
    text = results.read_text()
    assert text.count("<!-- task_curves -->") == 1 and "## scoring\n\nkept" in text
    assert text.index("segmentation_scoring") < text.index("<!-- task_curves -->")  # order kept
    for name in ("multilabel", "segmentation"):
        assert f"### {name}" in text and (tmp_path / f"tasks_{name}.png").stat().st_size > 10_000
    table = [line for line in text.splitlines() if line.startswith("| Random |")]
    assert table[0].split("|")[2].strip() == "1.000 ± 0.000"  # Random is the reference of the combined table
    task_curves.write_section(results, "task_curves", "replaced")
    assert "replaced" in results.read_text() and "### multilabel" not in results.read_text()
    assert "written to" in capsys.readouterr().out


def test_task_curves_protocols_fit_their_pools():
    for setting in task_curves.SETTINGS.values():
        for protocol in (setting, setting.quick()):
            assert protocol.label_grid[-1] <= protocol.pool_size
    assert task_curves.SETTINGS["segmentation"].quick().image_size == segmentation.DEFAULTS["tiny"]["image_size"]


# ----- the segmentation scoring benchmark -------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_pool(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pool") / "pool.pt"
    segmentation_scoring.make_pool(48, 16, path)
    return path


def test_scoring_worker_and_profile_on_a_tiny_pool(tiny_pool):
    for method in segmentation_scoring.METHODS:
        result = segmentation_scoring.worker(method, tiny_pool, batch_size=16, mc_samples=4, threads=1)
        assert result["seconds"] > 0 and result["peak_mib"] >= result["idle_mib"] > 0
    stages, operators = segmentation_scoring.profile(tiny_pool, batch_size=16, mc_samples=4, batches=2, threads=1)
    assert set(operators) == set(segmentation_scoring.BALD_STAGES) and all(operators.values())
    assert "operator" in segmentation_scoring.operator_table(operators)
    assert all(seconds > 0 for seconds in stages.values())
    text = segmentation_scoring.profile_table(stages, 2, 16)
    assert "MC passes (MCDropout.predict)" in text and "all but the forward before the head" in text


def test_scoring_streams_the_same_bald_scores_as_the_whole_pool(tiny_pool):
    import lightning_al as al
    from lightning_al.outputs import MC_PROBS, PoolOutputs

    dm = segmentation_scoring.load_pool(tiny_pool, 16)
    model = segmentation_scoring.seeded_model()
    picked = segmentation_scoring.streamed_scoring(al.strategies.BALD(mc_samples=4))(model, dm)
    strategy = al.strategies.BALD(mc_samples=4)
    strategy.estimator.bind(dm.task)
    with torch.inference_mode():
        x = dm.train_set.tensors[0]
        mc = strategy.estimator.predict(model, x, frozenset({MC_PROBS}))[MC_PROBS]
    scores = strategy.score(PoolOutputs(ids=torch.arange(len(x)), values={MC_PROBS: mc}, task=dm.task))
    assert sorted(picked.tolist()) == list(range(len(x)))  # k = 100 keeps the whole pool of 48, best first
    ranked = scores[picked]
    assert (ranked[:-1] >= ranked[1:] - 1e-6).all()


def test_scoring_measures_each_method_through_its_worker_command_and_formats_tables(tiny_pool, monkeypatch, capsys):
    calls = []

    def run_in_this_process(command, cwd, env, **kwargs):  # the fresh process, minus its interpreter start-up
        assert command[1:3] == ["-m", "benchmarks.segmentation_scoring"] and Path(cwd) == ROOT
        calls.append((command[command.index("--worker") + 1], env.get("MALLOC_MMAP_THRESHOLD_")))
        capsys.readouterr()
        assert segmentation_scoring.main(command[3:]) == 0
        return subprocess.CompletedProcess(command, 0, stdout=capsys.readouterr().out, stderr="")

    monkeypatch.setattr(segmentation_scoring.subprocess, "run", run_in_this_process)
    results = segmentation_scoring.measure(tiny_pool, 16, 4, repeats=2, threads=1, methods=("floor", "bald"))
    assert calls == [("floor", None), ("bald", None), ("bald", None), ("floor", None)]  # turns, order reversed
    kept = segmentation_scoring.measure(tiny_pool, 16, 4, 1, 1, ("floor", "bald"), env=segmentation_scoring.KEEP_FREED)
    assert calls[-1] == ("bald", str(32 << 20))
    for values in (*results.values(), *kept.values()):
        assert values["seconds"] > 0 and values["peak_mib"] >= values["idle_mib"] > 0 and values["minor_faults"] >= 0
    results["floor"] = {**results["floor"], "seconds": 1.0}
    results["bald"] = {**results["bald"], "seconds": 2.0, "peak_mib": 500.0, "idle_mib": 400.0}
    lines = segmentation_scoring.table(results, 4).splitlines()
    assert len(lines) == 4 and "**2.00**" in lines[3] and "+100 MiB" in lines[3]
    assert len(segmentation_scoring.allocator_table(results, {16: kept}).splitlines()) == 4
