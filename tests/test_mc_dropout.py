"""MCDropout: stochastic passes that differ, the cached prefix against naive loops, fallback, modes, refusals."""

from __future__ import annotations

import copy
import pickle
import warnings

import numpy as np
import pytest
import torch
from conftest import TinyClassifier
from torch import nn

from lightning_al.estimators.dropout_masks import KEEP_BITS, keep_numerator, scaled_keep_mask
from lightning_al.estimators.mc_dropout import MCDropout, dropout_layers


class MLP(nn.Module):
    """Linear → ReLU → Dropout → Linear → ReLU → Dropout → Linear: two dropout layers after a prefix."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.prefix = nn.Linear(5, 16)
        self.drop1 = nn.Dropout(p)
        self.middle = nn.Linear(16, 12)
        self.drop2 = nn.Dropout(p)
        self.head = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop1(torch.relu(self.prefix(x)))
        return self.head(self.drop2(torch.relu(self.middle(x))))


class Residual(nn.Module):
    """A skip connection from before the dropout joined after it: ``head(drop(h) + h)``."""

    def __init__(self) -> None:
        super().__init__()
        self.prefix = nn.Linear(5, 16)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.prefix(x))
        return self.head(self.drop(h) + h)


class ConvNet(nn.Module):
    """Conv → ReLU → Dropout2d (whole channels) → Flatten → Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3, padding=1)
        self.drop = nn.Dropout2d(0.5)
        self.head = nn.Linear(6 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(torch.relu(self.conv(x))).flatten(1))


class BatchNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.prefix = nn.Sequential(nn.Linear(5, 16), nn.BatchNorm1d(16), nn.ReLU())
        self.drop = nn.Dropout(0.3)
        self.head = nn.Sequential(nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.prefix(x)))


def seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    for parameter in model.parameters():
        nn.init.normal_(parameter, std=0.5)
    return model


def bald_np(probs_N_T_C: np.ndarray) -> np.ndarray:
    def entropy(p: np.ndarray) -> np.ndarray:
        return -(p * np.log(np.clip(p, 1e-300, None))).sum(-1)

    return entropy(probs_N_T_C.mean(1)) - entropy(probs_N_T_C).mean(1)


def reference_consistent(model: nn.Module, x: torch.Tensor, estimator: MCDropout) -> torch.Tensor:
    """T separate full forwards in eval mode, each applying mask ``t`` of every dropout layer."""
    names = {m: n for n, m in model.named_modules() if isinstance(m, (nn.Dropout, nn.Dropout2d)) and m.p > 0}
    model.eval()
    passes = []
    for t in range(estimator.mc_samples):

        def apply_mask(module, args, output, t=t):
            h = args[0]
            shape = (h.shape[1], 1, 1) if isinstance(module, nn.Dropout2d) else tuple(h.shape[1:])
            keep = estimator.consistent_mask(names[module], module.p, shape)[t]
            return h * keep.to(h.dtype) / (1 - module.p)

        handles = [m.register_forward_hook(apply_mask) for m in names]
        with torch.no_grad():
            passes.append(torch.softmax(model(x), dim=-1))
        for handle in handles:
            handle.remove()
    return torch.stack(passes, dim=1)


def predict(estimator: MCDropout, model: nn.Module, x) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return estimator.predict(model, x, frozenset({"mc_probs", "probs"}))


def test_passes_differ_so_bald_is_positive():
    torch.manual_seed(0)
    model = TinyClassifier(in_features=4, num_classes=3, hidden=32)
    model.net[2].p = 0.5
    out = predict(MCDropout(mc_samples=8), model, torch.randn(16, 4) * 3)
    mc = out["mc_probs"]
    assert mc.shape == (16, 8, 3) and out["probs"].shape == (16, 3)
    torch.testing.assert_close(out["probs"], mc.mean(dim=1))
    torch.testing.assert_close(mc.sum(-1), torch.ones(16, 8))
    spread = (mc - mc[:, :1]).abs().amax(dim=(1, 2))
    assert (spread > 1e-4).all()  # for every sample, the T probability vectors are not all equal
    assert (bald_np(mc.double().numpy()) > 1e-6).all()


@pytest.mark.parametrize("cache_prefix", [True, False])
@pytest.mark.parametrize("max_rows", [None, 14])  # 14 rows over a batch of 6: groups of 2, 2, 1 passes
def test_consistent_masks_equal_separate_forwards(cache_prefix, max_rows):
    model, x = seeded(MLP()), torch.randn(6, 5)
    estimator = MCDropout(mc_samples=5, consistent_masks=True, seed=3, cache_prefix=cache_prefix, max_rows=max_rows)
    mc = predict(estimator, model, x)["mc_probs"]
    torch.testing.assert_close(mc, reference_consistent(model, x, estimator), rtol=1e-5, atol=1e-6)
    assert (mc - mc[:, :1]).abs().amax() > 1e-3


def test_consistent_channel_masks_equal_separate_forwards():
    model, x = seeded(ConvNet()), torch.randn(3, 2, 4, 4)
    estimator = MCDropout(mc_samples=6, consistent_masks=True, seed=1)
    mc = predict(estimator, model, x)["mc_probs"]
    torch.testing.assert_close(mc, reference_consistent(model, x, estimator), rtol=1e-5, atol=1e-6)
    mask = estimator.consistent_mask("drop", 0.5, (6, 1, 1))
    assert mask.shape == (6, 6, 1, 1) and mask.dtype == torch.bool
    assert 0 < mask.float().mean() < 1


def test_consistent_masks_are_shared_across_batches_and_follow_the_seed():
    model, x = seeded(MLP()), torch.randn(4, 5)
    estimator = MCDropout(mc_samples=7, consistent_masks=True, seed=5)
    first = predict(estimator, model, x[[0, 1, 2]])["mc_probs"]
    second = predict(estimator, model, x[[3, 0]])["mc_probs"]
    torch.testing.assert_close(first[0], second[1], rtol=1e-5, atol=1e-6)  # same sub-network t for sample 0
    again = predict(MCDropout(mc_samples=7, consistent_masks=True, seed=5), model, x[[0]])["mc_probs"]
    torch.testing.assert_close(again[0], first[0], rtol=1e-5, atol=1e-6)
    other = predict(MCDropout(mc_samples=7, consistent_masks=True, seed=6), model, x[[0]])["mc_probs"]
    assert (other[0] - first[0]).abs().amax() > 1e-3


def test_independent_masks_agree_with_naive_mc_dropout_in_distribution():
    model, x = seeded(MLP(p=0.3)), torch.randn(3, 5)
    T = 4000
    mc = predict(MCDropout(mc_samples=T, max_rows=None), model, x)["mc_probs"]
    # naive MC dropout: nn.Dropout's own sampling in train mode, one row per pass (as a loop of T forwards would)
    model.eval()
    for layer in dropout_layers(model):
        layer.train()
    torch.manual_seed(1)
    with torch.no_grad():
        naive = torch.softmax(model(x.repeat(T, 1)), dim=-1).view(T, 3, 4).transpose(0, 1)
    model.eval()
    # the difference of two means of T values in [0, 1] has standard error <= 0.5 * sqrt(2 / T) ≈ 0.011
    torch.testing.assert_close(mc.mean(1), naive.mean(1), rtol=0, atol=0.03)
    torch.testing.assert_close(mc.std(1), naive.std(1), rtol=0, atol=0.03)
    assert naive.std(1).amax() > 0.1  # the comparison is not between two constants


def test_independent_masks_are_seeded_fresh_per_call_and_resumable():
    model, x = seeded(MLP()), torch.randn(4, 5)
    first = MCDropout(mc_samples=5, seed=2)
    call0, call1 = predict(first, model, x)["mc_probs"], predict(first, model, x)["mc_probs"]
    assert (call0 - call1).abs().amax() > 1e-3  # a new call draws new masks
    assert first.state_dict() == {"calls": 2, "fits": 0}
    resumed = MCDropout(mc_samples=5, seed=2)
    torch.testing.assert_close(predict(resumed, model, x)["mc_probs"], call0)
    resumed.load_state_dict({"calls": 1})
    torch.testing.assert_close(predict(resumed, model, x)["mc_probs"], call1)
    other_seed = predict(MCDropout(mc_samples=5, seed=3), model, x)["mc_probs"]
    assert (other_seed - call0).abs().amax() > 1e-3
    with pytest.raises(ValueError, match=r"Expected `state\['calls'\]` to be an int >= 0, but got -1"):
        resumed.load_state_dict({"calls": -1})


def test_independent_channel_masks_drop_whole_channels_of_t_major_rows():
    model, x = seeded(ConvNet()), torch.randn(3, 2, 4, 4)
    seen = []
    model.head.register_forward_hook(lambda m, a, o: seen.append(a[0].reshape(-1, 6, 16)))
    predict(MCDropout(mc_samples=8), model, x)
    with torch.no_grad():
        kept_R_C_HW = (2 * torch.relu(model.conv(x))).reshape(3, 6, 16).repeat(8, 1, 1)  # row t * B + b
    out_R_C_HW = seen[0]
    dropped = (out_R_C_HW == 0).all(dim=2)
    kept = torch.isclose(out_R_C_HW, kept_R_C_HW, rtol=1e-5, atol=1e-6).all(dim=2)
    assert (dropped | kept).all()  # every channel of every row is either zeroed or kept and scaled by 1/(1-p)
    assert 0.2 < dropped.float().mean() < 0.8 and (kept & (kept_R_C_HW != 0).any(dim=2)).any()


def test_residual_model_falls_back_to_the_full_tile_and_warns_once():
    model, x = seeded(Residual()), torch.randn(5, 5)
    estimator = MCDropout(mc_samples=6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = predict(estimator, model, x)["mc_probs"]
        second = predict(estimator, model, x)["mc_probs"]
    messages = [str(w.message) for w in caught if "MCDropout" in str(w.message)]
    assert len(messages) == 1 and "Residual" in messages[0]
    assert first.shape == second.shape == (5, 6, 4)
    assert ((first - first[:, :1]).abs().amax(dim=(1, 2)) > 1e-4).all()
    consistent = MCDropout(mc_samples=6, consistent_masks=True)
    with pytest.warns(UserWarning, match="tiles the whole input"):
        mc = predict(consistent, model, x)["mc_probs"]
    torch.testing.assert_close(mc, reference_consistent(model, x, consistent), rtol=1e-5, atol=1e-6)


def test_residual_model_with_one_sample_broadcasts_correctly_without_fallback():
    model, x = seeded(Residual()), torch.randn(1, 5)
    estimator = MCDropout(mc_samples=6, consistent_masks=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (1, D) + (T, D) broadcasts: the cached path is exact here
        mc = predict(estimator, model, x)["mc_probs"]
    torch.testing.assert_close(mc, reference_consistent(model, x, estimator), rtol=1e-5, atol=1e-6)


def test_prefix_runs_once_per_batch_and_the_head_once_on_t_times_b_rows():
    model, x = seeded(MLP()), torch.randn(6, 5)
    rows = {"prefix": [], "head": []}
    for name in rows:
        getattr(model, name).register_forward_hook(lambda m, a, o, name=name: rows[name].append(a[0].shape[0]))
    predict(MCDropout(mc_samples=10), model, x)
    assert rows == {"prefix": [6], "head": [60]}
    rows["prefix"].clear(), rows["head"].clear()
    predict(MCDropout(mc_samples=10, max_rows=24), model, x)  # 24 // 6 = 4 passes per forward: 4, 4, 2
    assert rows == {"prefix": [6, 6, 6], "head": [24, 24, 12]}


@pytest.mark.parametrize("consistent_masks", [False, True])
def test_batch_norm_stays_in_eval_and_modes_and_hooks_are_restored(consistent_masks):
    model = seeded(BatchNormNet())
    model.train()
    model.head[0].eval()  # a mixed state that must come back exactly
    before_modes = {name: m.training for name, m in model.named_modules()}
    before_stats = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    model.prefix[1].register_forward_hook(lambda m, a, o: seen.append(m.training))
    user_hooks = {name: (len(m._forward_pre_hooks), len(m._forward_hooks)) for name, m in model.named_modules()}
    out = predict(MCDropout(mc_samples=4, consistent_masks=consistent_masks), model, torch.randn(8, 5))
    assert seen == [False]
    assert ((out["mc_probs"] - out["mc_probs"][:, :1]).abs().amax(dim=(1, 2)) > 1e-5).all()
    for key, value in model.state_dict().items():
        assert torch.equal(value, before_stats[key]), key  # running stats and counters untouched
    assert {name: m.training for name, m in model.named_modules()} == before_modes
    assert {name: (len(m._forward_pre_hooks), len(m._forward_hooks)) for name, m in model.named_modules()} == user_hooks
    assert not model.drop._forward_pre_hooks and not model.drop._forward_hooks


def test_modes_and_hooks_are_restored_when_the_forward_raises():
    class Broken(MLP):
        def forward(self, x):
            super().forward(x)
            raise RuntimeError("broken head")

    model = Broken()
    model.train()
    with pytest.raises(RuntimeError, match="broken head"):
        predict(MCDropout(mc_samples=3, consistent_masks=True), model, torch.randn(2, 5))
    assert all(m.training for m in model.modules())
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


def test_dict_inputs_are_tiled_on_the_full_tile_path():
    class DictNet(MLP):
        def forward(self, batch):
            return super().forward(batch["x"] * batch["scale"])

    model, x = seeded(DictNet()), torch.randn(4, 5)
    estimator = MCDropout(mc_samples=3, consistent_masks=True, cache_prefix=False)
    mc = predict(estimator, model, {"x": x, "scale": torch.tensor(2.0)})["mc_probs"]
    plain = MLP()
    plain.load_state_dict(model.state_dict())  # same layer names, so the same consistent masks
    torch.testing.assert_close(mc, predict(estimator, plain, x * 2)["mc_probs"])


def test_refuses_models_without_active_dropout():
    no_dropout = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(ValueError, match=r"Sequential has no dropout layer.*BALD would be 0"):
        predict(MCDropout(), no_dropout, torch.randn(2, 4))
    zero = MLP(p=0.0)
    with pytest.raises(ValueError, match=r"MLP has only dropout layers with p = 0 \(\['drop1', 'drop2'\]\)"):
        predict(MCDropout(), zero, torch.randn(2, 5))

    class Unused(MLP):
        def forward(self, x):
            return self.head(torch.relu(self.middle(torch.relu(self.prefix(x)))))

    with pytest.raises(ValueError, match="none of the dropout layers of Unused ran"):
        predict(MCDropout(mc_samples=2), Unused(), torch.randn(2, 5))


def test_refuses_bad_arguments_and_inputs():
    for bad in (0, -1, True, 2.0, "20"):
        with pytest.raises(ValueError, match="Expected `mc_samples` to be an int >= 1"):
            MCDropout(bad)
    with pytest.raises(ValueError, match="Expected `max_rows` to be an int >= 1 or None, but got 0"):
        MCDropout(max_rows=0)
    with pytest.raises(TypeError, match="Expected `consistent_masks` to be a bool"):
        MCDropout(consistent_masks="yes")
    with pytest.raises(TypeError, match="Expected `seed` to be an int"):
        MCDropout(seed=1.5)
    alpha = nn.Sequential(nn.Linear(4, 4), nn.AlphaDropout(0.2), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"alpha dropout layers \['1'\]"):
        predict(MCDropout(consistent_masks=True), alpha, torch.randn(2, 4))
    alpha_mc = predict(MCDropout(mc_samples=6), alpha, torch.randn(2, 4) * 3)["mc_probs"]  # its own sampling
    assert alpha_mc.shape == (2, 6, 2) and (alpha_mc - alpha_mc[:, :1]).abs().amax() > 1e-4
    with pytest.raises(TypeError, match="Expected `inputs` to be a tensor"):
        predict(MCDropout(), MLP(), ["not", "tensors"])


def test_copies_keep_the_arguments_and_drop_runtime_caches():
    estimator = MCDropout(mc_samples=4, consistent_masks=True, seed=9, max_rows=100)
    model = seeded(Residual())
    with pytest.warns(UserWarning):
        predict(estimator, model, torch.randn(3, 5))
    for clone in (copy.deepcopy(estimator), pickle.loads(pickle.dumps(estimator))):
        assert repr(clone) == repr(estimator)
        assert len(clone._full_tile_models) == 0 and not clone._masks
        assert torch.equal(clone.consistent_mask("drop", 0.5, (16,)), estimator.consistent_mask("drop", 0.5, (16,)))


@pytest.mark.parametrize("p", [0.5, 0.3, 0.1, 0.9, 0.25])
def test_bulk_bit_masks_keep_with_probability_one_minus_p_and_have_mean_one(p):
    q = keep_numerator(p) / 2**KEEP_BITS
    assert abs(q - (1 - p)) <= 2 ** -(KEEP_BITS + 1)
    n = 400_000
    scaled = scaled_keep_mask((n // 8, 8), p, torch.Generator().manual_seed(0), torch.float64, torch.device("cpu"))
    assert scaled.shape == (n // 8, 8) and scaled.dtype == torch.float64
    values = set(scaled.unique().tolist())
    assert values == {0.0, 1 / q}  # 0 or exactly 1 / q
    kept = (scaled > 0).double()
    # Bernoulli(q): the mean of n draws has standard error sqrt(q (1 - q) / n) <= 0.0008; allow 5 of them
    assert abs(kept.mean().item() - q) < 5 * (q * (1 - q) / n) ** 0.5
    assert abs(kept.var().item() - q * (1 - q)) < 0.004
    assert abs(scaled.mean().item() - 1) < 5 * ((1 - q) / (q * n)) ** 0.5  # E[keep / q] = 1
    # neighbouring elements (adjacent bits of one word, and the same bit of adjacent words) are uncorrelated
    flat = kept.view(-1)
    for lag in (1, 8, 64):
        correlation = np.corrcoef(flat[:-lag].numpy(), flat[lag:].numpy())[0, 1]
        assert abs(correlation) < 0.01, lag


def test_bulk_bit_masks_follow_the_generator_seed_and_edge_probabilities():
    cpu = torch.device("cpu")

    def draw(seed: int, p: float = 0.3) -> torch.Tensor:
        return scaled_keep_mask((7, 33), p, torch.Generator().manual_seed(seed), torch.float32, cpu)

    assert torch.equal(draw(4), draw(4))  # same seed, same masks
    assert not torch.equal(draw(4), draw(5))
    assert torch.equal(draw(0, p=0.0), torch.ones(7, 33)) and torch.equal(draw(0, p=1.0), torch.zeros(7, 33))
    assert keep_numerator(0.5) == 2**15 and keep_numerator(1e-9) == 2**KEEP_BITS and keep_numerator(1.0) == 0


def test_first_dropout_input_is_tiled_and_masked_in_one_step_with_inverted_scale():
    model, x = seeded(MLP(p=0.5)), torch.randn(4, 5)
    seen = []
    model.middle.register_forward_hook(lambda m, a, o: seen.append(a[0].clone()))
    predict(MCDropout(mc_samples=6, seed=1), model, x)
    with torch.no_grad():
        hidden_R_F = torch.relu(model.prefix(x)).repeat(6, 1)  # row t * B + b
    (out_R_F,) = seen
    assert out_R_F.shape == (24, 16)
    dropped, kept = out_R_F == 0, torch.isclose(out_R_F, 2 * hidden_R_F)
    assert (dropped | kept).all() and 0.3 < dropped[hidden_R_F != 0].float().mean() < 0.7
    assert not torch.equal(out_R_F[:4], out_R_F[4:8])  # passes draw different masks


def test_reused_mask_memory_never_overwrites_a_tensor_the_model_kept():
    class Keeping(MLP):
        def forward(self, x):
            h = self.drop1(torch.relu(self.prefix(x)))
            self.kept.append(h[:, :3])  # a view of the masked activation
            return self.head(self.drop2(torch.relu(self.middle(h))))

    model, x = seeded(Keeping()), torch.randn(4, 5)
    model.kept = []
    estimator = MCDropout(mc_samples=6, seed=2)
    predict(estimator, model, x)
    snapshot = model.kept[0].clone()
    predict(estimator, model, x)
    assert torch.equal(model.kept[0], snapshot)  # the second call wrote elsewhere
    assert not torch.equal(model.kept[1], snapshot)  # and drew new masks
    model.kept.clear()  # nothing holds the memory any more: a third call may reuse it, with the same results
    resumed = MCDropout(mc_samples=6, seed=2)
    resumed.load_state_dict({"calls": 2})
    third = predict(estimator, model, x)["mc_probs"]
    torch.testing.assert_close(third, predict(resumed, model, x)["mc_probs"])


class SequentialMLP(nn.Module):
    """An ``nn.Sequential`` with Dropout → Linear pairs: after the first hidden layer and before the head."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(5, 16),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(16, 12),
            nn.ReLU(),
            nn.Dropout(0.25),
            nn.Linear(12, 4),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def rows_seen_by(layer: nn.Module, estimator: MCDropout, model: nn.Module, x: torch.Tensor) -> tuple[dict, list]:
    rows = []
    handle = layer.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    try:
        return predict(estimator, model, x), rows
    finally:
        handle.remove()


@pytest.mark.parametrize("max_rows", [None, 14])  # 14 rows over a batch of 6: groups of 2, 2, 1 passes
def test_folded_linear_equals_masked_rows_and_separate_forwards(max_rows):
    model, x = seeded(SequentialMLP()), torch.randn(6, 5)
    folded = MCDropout(mc_samples=5, consistent_masks=True, seed=3, max_rows=max_rows)
    out, rows = rows_seen_by(model.net[3], folded, model, x)
    assert set(rows) == {6}  # the linear after the first dropout ran on the untiled batch only
    unfolded = MCDropout(mc_samples=5, consistent_masks=True, seed=3, max_rows=max_rows, fold_linear=False)
    reference, rows_unfolded = rows_seen_by(model.net[3], unfolded, model, x)
    assert sum(rows_unfolded) == 5 * 6
    torch.testing.assert_close(out["mc_probs"], reference["mc_probs"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["mc_probs"], reference_consistent(model, x, folded), rtol=1e-5, atol=1e-6)
    assert (out["mc_probs"] - out["mc_probs"][:, :1]).abs().amax() > 1e-3


def test_folding_needs_consistent_masks_and_a_linear_in_the_same_sequential():
    model, x = seeded(SequentialMLP()), torch.randn(6, 5)
    _, rows = rows_seen_by(model.net[3], MCDropout(mc_samples=5), model, x)
    assert sum(rows) == 5 * 6  # independent masks differ per sample: no folding
    mlp = seeded(MLP())  # dropout and linear called from forward, not consecutive in a Sequential
    _, rows = rows_seen_by(mlp.middle, MCDropout(mc_samples=5, consistent_masks=True), mlp, x)
    assert sum(rows) == 5 * 6
    assert "fold_linear=True" in repr(MCDropout())
    with pytest.raises(TypeError, match="`fold_linear`"):
        MCDropout(fold_linear=1)


def test_consistent_masks_are_drawn_afresh_after_each_fit_and_kept_in_the_state():
    model, x = seeded(SequentialMLP()), torch.randn(6, 5)
    estimator = MCDropout(mc_samples=5, consistent_masks=True, seed=3)
    first = predict(estimator, model, x)["mc_probs"]
    torch.testing.assert_close(predict(estimator, model, x)["mc_probs"], first)  # same masks until a fit
    before = estimator.consistent_mask("net.2", 0.5, (16,)).clone()
    estimator.fit(model, train=None)
    assert estimator.state_dict() == {"calls": 2, "fits": 1}
    assert not torch.equal(estimator.consistent_mask("net.2", 0.5, (16,)), before)
    second = predict(estimator, model, x)["mc_probs"]
    assert (second - first).abs().amax() > 1e-3
    resumed = MCDropout(mc_samples=5, consistent_masks=True, seed=3)
    resumed.load_state_dict({"calls": 3, "fits": 1})
    torch.testing.assert_close(predict(resumed, model, x)["mc_probs"], second)
    resumed.load_state_dict({"calls": 0})  # a state saved before fits were counted
    assert resumed.fits == 0
    torch.testing.assert_close(predict(resumed, model, x)["mc_probs"], first)
    with pytest.raises(ValueError, match=r"state\['fits'\]"):
        resumed.load_state_dict({"calls": 0, "fits": -1})


@pytest.mark.parametrize("max_rows", [None, 14])
def test_a_channel_dropout_before_a_pointwise_conv_head_is_folded_into_its_weights(max_rows):
    from lightning_al.models import SmallUNet
    from lightning_al.tasks import Segmentation

    torch.manual_seed(0)
    model, x = SmallUNet(num_classes=3, width=4).eval(), torch.randn(6, 1, 8, 8)
    outputs = {}
    for fold in (True, False):
        estimator = MCDropout(mc_samples=5, consistent_masks=True, seed=3, max_rows=max_rows, fold_linear=fold)
        estimator.bind(Segmentation(3))
        outputs[fold], rows = rows_seen_by(model.head[1], estimator, model, x)
        assert sum(rows) == (6 * len(rows) if fold else 5 * 6)  # folded: the head runs on untiled maps only
    assert outputs[True]["mc_probs"].shape == (6, 5, 3, 8, 8)
    torch.testing.assert_close(outputs[True]["mc_probs"], outputs[False]["mc_probs"], rtol=1e-5, atol=1e-6)
    assert (outputs[True]["mc_probs"] - outputs[True]["mc_probs"][:, :1]).abs().amax() > 1e-3
