r"""BatchBALD: greedy joint mutual information for batch acquisition.

Kirsch, van Amersfoort & Gal 2019, "BatchBALD: Efficient and Diverse Batch Acquisition
for Deep Bayesian Active Learning" (NeurIPS).

Top-``k`` BALD scores every point alone, so a batch can fill up with near-duplicates that
each look informative but teach the model the same thing. BatchBALD scores the *batch*:
the mutual information between its joint labels and the model parameters,

    a(x_1, \dots, x_n) = H[y_1, \dots, y_n] - \sum_{i=1}^n \mathbb{E}_{p(w)} H[y_i \mid x_i, w],

with `p(w)` represented by ``T`` stochastic passes (MC dropout) or committee members,
`p(y_{1:n}) = \frac{1}{T} \sum_t \prod_i p_t(y_i \mid x_i)` (labels are independent
given the parameters). Adding a point `x` to a set `A` adds
`H[y_x \mid y_A] - \mathbb{E}_t H[p_t(y_x)]`; conditioning never increases entropy, so
this gain only shrinks as `A` grows (`a` is submodular). Greedy maximisation is
therefore within `1 - 1/e` of the best batch, and a candidate's gain at an earlier
step bounds its gain now, which lets most candidates be skipped ("lazy" greedy).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_al.functional._checks import as_count, check_probs

# Float64 entries of one candidate chunk's (n * C, M) joint table (8 MiB); a few such
# temporaries are alive at once. One candidate's table, C * min(C^(n-1), num_samples)
# entries, is the floor: a chunk never holds less than one candidate.
_CHUNK_ELEMENTS = 2**20
# Values this close (relative) to the best count as tied; the lowest position wins, so float
# rounding in chunked matrix products cannot reorder equal points.
_TIE_RTOL = 1e-12


def _normalised64(probs_n_T_C: Tensor) -> Tensor:
    """``probs`` in float64 with each distribution renormalised to sum to 1 (to rounding)."""
    probs = probs_n_T_C.to(torch.float64)
    return probs / probs.sum(dim=-1, keepdim=True)


def _expected_entropy(probs_N_T_C: Tensor) -> Tensor:
    r"""`\frac{1}{T}\sum_t H[p_t(y \mid x)]` per point, float64 of shape ``(N,)``, computed in chunks."""
    num_points, num_members, num_classes = probs_N_T_C.shape
    chunk = max(1, _CHUNK_ELEMENTS // (num_members * num_classes))
    out_N = torch.empty(num_points, dtype=torch.float64, device=probs_N_T_C.device)
    for start in range(0, num_points, chunk):
        probs = _normalised64(probs_N_T_C[start : start + chunk])
        out_N[start : start + chunk] = -torch.special.xlogy(probs, probs).sum(dim=-1).mean(dim=-1)
    return out_N


def _entropy_totals(factor_T_M: Tensor, probs_n_T_C: Tensor) -> Tensor:
    r"""`-\sum_{m,c} W \log W` per candidate, with `W_{n,c,m} = \sum_t F_{t,m}\, p_t(c \mid x_n)`."""
    num_members, num_classes = probs_n_T_C.shape[1:]
    probs_nC_T = _normalised64(probs_n_T_C).transpose(1, 2).reshape(-1, num_members)
    table_nC_M = probs_nC_T @ factor_T_M
    return -torch.special.xlogy(table_nC_M, table_nC_M).sum(dim=1).view(-1, num_classes).sum(dim=1)


class _JointLabels:
    r"""Per-member probabilities of the chosen points' labels, and the entropy of one more label given them.

    *Exact* while there are at most ``num_samples`` label configurations: ``table_T_M`` holds
    `P_t(y_A) = \prod_{i \in A} p_t(y_i \mid x_i)` for every configuration
    (``M = C^{|A|}``), and `H[y_x \mid y_A] = H[y_A, y_x] - H[y_A]`.

    Then *sampled*: ``S`` configurations `\hat y^s` drawn from the predictive `p(y_A)`, each
    from one member `t_s` (each label from `p_{t_s}`). Importance weighting (the paper's
    appendix) gives

        H[y_A, y_x] \approx -\frac{1}{S} \sum_s \sum_c \frac{p(\hat y^s, c)}{p(\hat y^s)} \log p(\hat y^s, c),

    and with `H[y_A] \approx -\frac{1}{S}\sum_s \log p(\hat y^s)` from the same draws the
    difference is `\frac{1}{S}\sum_s H[p(y_x \mid \hat y^s)]`, where
    `p(c \mid \hat y^s) = \sum_t q_{t,s}\, p_t(c)` with `q_{t,s} \propto P_t(\hat y^s)`
    normalised over members (so long batches cannot underflow).

    ``sampling`` chooses how the draws are made; both give exact draws of the joint, so both
    estimates are unbiased:

    - ``"stratified"`` (the authors' code, batchbald_redux): every member draws the same number
      ``max(1, num_samples // T)`` of configurations (``S = T * max(1, num_samples // T)``), and
      all chosen points' labels are drawn afresh after every pick. Stratifying over members
      removes the variance of which member draws.
    - ``"sequential"``: ``S = num_samples`` draws, each from a member picked uniformly at random;
      a later pick extends the existing draws from the same members (one label per draw and pick).
    """

    def __init__(
        self,
        num_members: int,
        num_samples: int,
        device: torch.device,
        generator: torch.Generator | None,
        sampling: str = "stratified",
    ):
        self.num_members, self.num_samples, self.generator = num_members, num_samples, generator
        self.sampling = sampling
        self.table_T_M: Tensor | None = torch.ones(num_members, 1, dtype=torch.float64, device=device)
        self.table_entropy = 0.0  # H[y_A] while exact
        self.chosen: list[Tensor] = []  # (T, C) float64 probabilities of each chosen point
        self.member_S: Tensor | None = None
        self.labels: list[Tensor] = []  # (S,) sampled labels of each chosen point
        self.posterior_T_S: Tensor | None = None  # q_{t,s}

    @property
    def exact(self) -> bool:
        return self.table_T_M is not None

    @property
    def width(self) -> int:
        """Configurations per candidate: ``M`` (exact) or ``S`` (sampled)."""
        return self.table_T_M.shape[1] if self.table_T_M is not None else self.member_S.numel()

    def conditional_entropies(self, probs_n_T_C: Tensor) -> Tensor:
        r"""`H[y_x \mid y_A]` for each candidate ``x`` in the chunk, float64 ``(n,)``."""
        if self.table_T_M is not None:
            # p(y_A, c) = sum_t (P_t(y_A) / T) p_t(c)
            return _entropy_totals(self.table_T_M / self.num_members, probs_n_T_C) - self.table_entropy
        return _entropy_totals(self.posterior_T_S, probs_n_T_C) / self.member_S.numel()

    def add(self, probs_T_C: Tensor) -> None:
        """Condition on one more chosen point; switch to sampling once the table would exceed ``num_samples``."""
        self.chosen.append(probs_T_C)
        if self.table_T_M is None:
            if self.sampling == "stratified":
                self._draw_all()
            else:
                self._extend_samples(probs_T_C)
            return
        width = self.table_T_M.shape[1] * probs_T_C.shape[1]
        if width > self.num_samples:
            self.table_T_M = None
            self._draw_all()
            return
        self.table_T_M = (self.table_T_M[:, :, None] * probs_T_C[:, None, :]).reshape(self.num_members, width)
        marginal_M = self.table_T_M.mean(dim=0)
        self.table_entropy = float(-torch.special.xlogy(marginal_M, marginal_M).sum())

    def _draw_all(self) -> None:
        """Draw the configurations of every chosen point from scratch."""
        device = self.chosen[0].device
        if self.sampling == "stratified":
            per_member = max(1, self.num_samples // self.num_members)
            self.member_S = torch.arange(self.num_members, device=device).repeat_interleave(per_member)
        else:
            shape = (self.num_samples,)
            self.member_S = torch.randint(self.num_members, shape, generator=self.generator, device=device)
        shape = (self.num_members, self.member_S.numel())
        self.posterior_T_S = torch.full(shape, 1 / self.num_members, dtype=torch.float64, device=device)
        self.labels = []
        for probs_T_C in self.chosen:
            self._extend_samples(probs_T_C)

    def _extend_samples(self, probs_T_C: Tensor) -> None:
        labels_S = torch.multinomial(probs_T_C[self.member_S], 1, generator=self.generator).squeeze(1)
        self.labels.append(labels_S)
        posterior_T_S = self.posterior_T_S * probs_T_C[:, labels_S]
        # The drawing member gave its label positive probability, so the sum is positive barring underflow.
        self.posterior_T_S = posterior_T_S / posterior_T_S.sum(dim=0).clamp_min(torch.finfo(torch.float64).tiny)


SAMPLING_SCHEMES = ("stratified", "sequential")


def check_sampling(sampling: str) -> str:
    """``sampling`` if it names a scheme of `_JointLabels`, else a ValueError naming the argument."""
    if sampling not in SAMPLING_SCHEMES:
        raise ValueError(f"Expected `sampling` to be one of {list(SAMPLING_SCHEMES)}, but got {sampling!r}.")
    return sampling


def batchbald_with_gains(
    probs_N_T_C: Tensor,
    batch_size: int,
    num_samples: int = 10_000,
    generator: torch.Generator | None = None,
    sampling: str = "stratified",
) -> tuple[Tensor, Tensor]:
    r"""Greedy BatchBALD picks and the acquisition value each pick adds.

    Same picks as `batchbald`, and also the marginal gains
    `a(x_{1:n}) - a(x_{1:n-1}) = H[y_n \mid y_{1:n-1}] - \frac{1}{T}\sum_t H[p_t(y_n)]`
    (float64, shape ``(batch_size,)``, nats). The first gain is the first pick's BALD score,
    the gains sum to `a` of the whole batch, and (up to sampling noise) they do not increase.
    The arguments are those of `batchbald`: ``probs_N_T_C`` ``(N, T, C)``, ``batch_size``, ``num_samples``,
    ``generator`` and ``sampling``.

    Returns:
        ``(picks, gains)``: ``LongTensor[batch_size]`` positions in greedy order and their float64 gains.
    """
    check_probs("probs_N_T_C", probs_N_T_C, ndim=3)
    batch_size = as_count("batch_size", batch_size)
    num_points, num_members, num_classes = probs_N_T_C.shape
    if not 1 <= batch_size <= num_points:
        raise ValueError(f"Expected `batch_size` to be in [1, {num_points}] (the pool size), but got {batch_size}.")
    num_samples = as_count("num_samples", num_samples)
    if num_samples < 1:
        raise ValueError(f"Expected `num_samples` to be at least 1, but got {num_samples}.")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"Expected `generator` to be a torch.Generator or None, but got {type(generator).__name__}.")
    check_sampling(sampling)

    device = probs_N_T_C.device
    conditional_N = _expected_entropy(probs_N_T_C)
    joint = _JointLabels(num_members, num_samples, device, generator, sampling)
    # Gains computed exactly at an earlier step bound the gains now (submodularity).
    bound_N = torch.full((num_points,), math.inf, dtype=torch.float64, device=device)
    available_N = torch.ones(num_points, dtype=torch.bool, device=device)
    picks, gains = [], []
    for _ in range(batch_size):
        candidates = available_N.nonzero().flatten()
        candidates = candidates[torch.sort(bound_N[candidates], descending=True, stable=True).indices]
        chunk = max(1, _CHUNK_ELEMENTS // (num_classes * joint.width))
        seen, values, best = [], [], -math.inf
        for start in range(0, candidates.numel(), chunk):
            positions = candidates[start : start + chunk]
            # Every remaining candidate's gain is at most its bound: stop once none can reach the best.
            if float(bound_N[positions[0]]) < best - _TIE_RTOL * max(1.0, abs(best)):
                break
            gain_n = joint.conditional_entropies(probs_N_T_C[positions]) - conditional_N[positions]
            if joint.exact:
                bound_N[positions] = gain_n
            seen.append(positions)
            values.append(gain_n)
            best = max(best, float(gain_n.max()))
        seen_n, value_n = torch.cat(seen), torch.cat(values)
        tied = value_n >= best - _TIE_RTOL * max(1.0, abs(best))
        pick = int(seen_n[tied].min())
        picks.append(pick)
        gains.append(float(value_n[seen_n == pick][0]))
        available_N[pick] = False
        if len(picks) < batch_size:
            joint.add(_normalised64(probs_N_T_C[pick]))
    return torch.tensor(picks, dtype=torch.long, device=device), torch.tensor(gains, dtype=torch.float64, device=device)


def batchbald(
    probs_N_T_C: Tensor,
    batch_size: int,
    num_samples: int = 10_000,
    generator: torch.Generator | None = None,
    sampling: str = "stratified",
) -> Tensor:
    r"""BatchBALD batch acquisition: greedily maximise the joint mutual information of the batch.

    At step `n` pick the candidate `x` maximising

        a(x_1, \dots, x_{n-1}, x) = H[y_1, \dots, y_{n-1}, y_x]
            - \sum_{i \in \{1..n-1, x\}} \frac{1}{T} \sum_t H[p_t(y_i \mid x_i)],

    where `p(y_{1:n}) = \frac{1}{T}\sum_t \prod_i p_t(y_i \mid x_i)`. The joint entropy
    is exact while the chosen points have at most ``num_samples`` label configurations
    (`C^{n-1}`); beyond that it is estimated by importance weighting from about
    ``num_samples`` configurations drawn from the predictive with ``generator`` (``sampling``
    says how; by default as the authors' code, stratified over members and redrawn after every pick). With
    ``batch_size = 1`` this is the argmax of BALD, `H[\bar p] - \frac{1}{T}\sum_t H[p_t]`.

    Candidates are visited in order of their last exactly computed gain, which bounds the
    current one (submodularity), and the step stops once no unvisited bound reaches the best
    value; in the exact regime this returns exactly the greedy picks. In the sampled regime a
    skipped candidate's *true* gain is below the best estimate, though its noisy estimate
    might not have been. Candidates go in chunks of about 8 MiB of float64 per temporary (at
    least one candidate's `C \cdot \min(C^{n-1}, S)` table), accumulating in float64.

    Args:
        probs_N_T_C: softmax outputs of ``T`` stochastic passes or members, shape ``(N, T, C)``.
        batch_size: points to pick, ``1 <= batch_size <= N``.
        num_samples: largest exact configuration table, and the number of sampled configurations
            beyond it. A step costs about ``C * T * min(C^(n-1), num_samples)`` per visited candidate.
        generator: randomness of the sampled estimate (unused while the computation is exact).
        sampling: ``"stratified"`` (the authors': ``max(1, num_samples // T)`` draws per member, all
            redrawn after every pick) or ``"sequential"`` (``num_samples`` draws from random members,
            extended pick by pick); see `_JointLabels`.

    Returns:
        ``LongTensor`` of shape ``(batch_size,)``: distinct positions into the ``N`` axis, in the
        greedy order. Ties (values within a relative ``1e-12``) go to the lower position.

    Reference: Kirsch, van Amersfoort & Gal 2019, "BatchBALD: Efficient and Diverse Batch
    Acquisition for Deep Bayesian Active Learning".

    Example:
        >>> a = torch.tensor([[0.99, 0.01], [0.99, 0.01], [0.01, 0.99], [0.01, 0.99]])  # members split 2/2
        >>> b = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.9, 0.1], [0.1, 0.9]])  # another split, less sure
        >>> batchbald(torch.stack([a, a, b]), 2)  # top-2 BALD would take the duplicated point twice
        tensor([0, 2])
    """
    picks, _ = batchbald_with_gains(
        probs_N_T_C, batch_size, num_samples=num_samples, generator=generator, sampling=sampling
    )
    return picks
