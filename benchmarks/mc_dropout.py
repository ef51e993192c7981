"""Time MC-dropout pool scoring: a naive loop of T full forwards against ``MCDropout.predict``.

The model has dropout only in its head (an MLP backbone 784→1024→1024→512 with ReLU, then
Dropout(0.5) → Linear(512, 10)), the case where computing the deterministic backbone once
per batch pays off most: the naive loop runs the backbone T times, ``MCDropout`` once.
Both score the same batches, taking turns batch by batch, under ``torch.inference_mode`` after a warm-up.

Run: ``python -m benchmarks.mc_dropout [--n 50000] [--mc-samples 20] [--device cuda]``.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from lightning_al.estimators.mc_dropout import MCDropout, dropout_layers


def head_dropout_mlp() -> nn.Sequential:
    """784→1024→1024→512 with ReLU, then Dropout(0.5) → Linear(512, 10); dropout only in the head."""
    return nn.Sequential(
        nn.Linear(784, 1024),
        nn.ReLU(),
        nn.Linear(1024, 1024),
        nn.ReLU(),
        nn.Linear(1024, 512),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(512, 10),
    )


def naive_mc_probs(model: nn.Module, x_B_D: Tensor, mc_samples: int) -> Tensor:
    """``(B, T, C)`` from T full forwards with dropout on and everything else in eval mode."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    for layer in dropout_layers(model):
        layer.train()
    try:
        return torch.stack([torch.softmax(model(x_B_D).float(), dim=-1) for _ in range(mc_samples)], dim=1)
    finally:
        for module, training in modes:
            module.training = training


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_side_by_side(
    methods: dict[str, Callable[[Tensor], Tensor]], batches: list[Tensor], warmup: int, device: torch.device
) -> dict[str, tuple[float, Tensor]]:
    """Per method, seconds to score every batch and the mean probabilities ``(N, C)``.

    Each method first scores ``warmup`` untimed batches; then the methods take turns on every
    batch (the first method alternates), so a change in the machine's load hits them alike.
    """
    seconds = dict.fromkeys(methods, 0.0)
    probs: dict[str, list[Tensor]] = {name: [] for name in methods}
    order = list(methods)
    with torch.inference_mode():
        for x in batches[:warmup]:
            for score in methods.values():
                score(x)
        for i, x in enumerate(batches):
            for name in order if i % 2 == 0 else order[::-1]:
                _synchronize(device)
                start = time.perf_counter()
                probs_B_T_C = methods[name](x)
                _synchronize(device)
                seconds[name] += time.perf_counter() - start
                probs[name].append(probs_B_T_C.mean(dim=1).cpu())
    return {name: (seconds[name], torch.cat(probs[name])) for name in methods}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000, help="pool size N")
    parser.add_argument("--mc-samples", type=int, default=20, help="stochastic passes T")
    parser.add_argument("--batch-size", type=int, default=256, help="pool batch size B")
    parser.add_argument("--max-rows", type=int, default=8192, help="MCDropout's max rows per forward")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches scored first by each method")
    parser.add_argument("--consistent-masks", action="store_true", help="MCDropout(consistent_masks=True)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("n", "mc_samples", "batch_size", "max_rows"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda was asked for, but torch.cuda.is_available() is False")
    device = torch.device(args.device)

    torch.manual_seed(args.seed)
    model = head_dropout_mlp().to(device)
    pool_N_D = torch.randn(args.n, 784, generator=torch.Generator().manual_seed(args.seed)).to(device)
    batches = list(pool_N_D.split(args.batch_size))
    T = args.mc_samples
    estimator = MCDropout(mc_samples=T, consistent_masks=args.consistent_masks, seed=args.seed, max_rows=args.max_rows)

    methods = {
        "naive": lambda x: naive_mc_probs(model, x, T),
        "cached": lambda x: estimator.predict(model, x, frozenset({"mc_probs"}))["mc_probs"],
    }
    results = time_side_by_side(methods, batches, args.warmup, device)
    (naive_s, naive_probs), (cached_s, cached_probs) = results["naive"], results["cached"]
    per_forward = max(1, min(T, args.max_rows // args.batch_size))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"MC dropout pool scoring: N={args.n}, T={T}, batch size {args.batch_size}, {len(batches)} batches, "
        f"consistent masks {args.consistent_masks}"
    )
    print("model: 784-1024-1024-512 MLP (ReLU), Dropout(0.5) -> Linear(512, 10) in the head only")
    print(
        f"machine: {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"device {device} ({name})"
    )
    print(f"{'method':<36}{'forwards/batch':>16}{'seconds':>10}{'pool rows/s':>14}")
    for label, forwards, seconds in (
        ("(a) naive loop of T full forwards", T, naive_s),
        ("(b) MCDropout.predict", math.ceil(T / per_forward), cached_s),
    ):
        print(f"{label:<36}{forwards:>16}{seconds:>10.2f}{args.n / seconds:>14.0f}")
    print(f"{'speed-up a/b':<52}{naive_s / cached_s:>10.1f}x")
    diff = (naive_probs - cached_probs).abs().mean().item()
    print(f"mean |probs(a) - probs(b)| over the pool (different masks, should be small): {diff:.4f}")


if __name__ == "__main__":
    main()
