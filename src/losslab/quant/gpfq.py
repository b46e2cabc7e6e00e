"""GPFQ (Zhang, Zhou & Saab 2023, arXiv:2201.11113; Lybrand & Saab 2021): greedy path-following quantization
(quantization spec §5).

X ``[m, in]`` holds the layer inputs in the float network, X̃ the inputs of the same layer in the partly quantized
network. All rows run in parallel; columns t = 1…d run in sequence:

    u_0 = 0,   q_t = 𝒬(⟨X̃_t, u_{t−1} + w_t·X_t⟩ / ‖X̃_t‖²)   (0 if ‖X̃_t‖ = 0),   u_t = u_{t−1} + w_t·X_t − q_t·X̃_t

on the alphabet δ·{−K, …, K}, K = 2^(b−1), δ = C·rad/K (**2^b + 1 levels**: "b-bit GPFQ (2^b+1 levels)",
b + 1 storage bits), 𝒬(x) = δ·clamp(⌊x/δ + ½⌋, −K, K).

Default implementation is the Gram form (§5.3): with G = X̃ᵀX and H̃ = X̃ᵀX̃ the argument of step t equals
(Σ_{s≤t} G_ts·w_s − Σ_{s<t} H̃_ts·q_s)/H̃_tt, so

    P = W·tril(G)ᵀ;  per block of columns: Q[:, t] = 𝒬(P[:, t]/H̃_tt), P[:, t+1:i2] −= Q[:, t] ⊗ H̃[t+1:i2, t];
    after the block P[:, i2:] −= Q[:, i1:i2]·H̃[i2:, i1:i2]ᵀ

— O(d²) memory, the loop independent of m, U never stored; statistics stream batch by batch (:class:`GPFQStats`).
The per-row residual is ‖u_d‖² = wᵀ(XᵀX)w − 2qᵀGw + qᵀH̃q. :func:`gpfq_weight_sample_form` is the original
sample-space loop (vectorised over neurons), kept as the reference.

Sparsity-promoting variants (the paper's sparse GPFQ; the authors' ``_soft_thresholding_msq`` and
``_hard_thresholding_msq``): ``sparsity="l1"`` or ``"l0"`` with threshold ``lam`` = λ ≥ 0 in weight units replace 𝒬
by the :class:`SparseAlphabet` quantizers; both forms share them, so the Gram form still equals the sample form.

>>> import torch
>>> x = torch.randn(500, 50, dtype=torch.float64)
>>> w = torch.randn(64, 50, dtype=torch.float64)
>>> gram, sample = gpfq_weight(w, x, bits=3), gpfq_weight_sample_form(w, x, bits=3)
>>> bool(torch.equal(gram.codes, sample.codes)), gram.levels, gram.storage_bits
(True, 9, 4)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from losslab.errors import ConfigError, LosslabError, check_range, unknown_name_error
from losslab.quant.blocked_solve import (
    DEFAULT_INNER,
    blocked_feedback,
    check_finite,
    check_gram_diagonal,
    check_rows_input,
    check_solver,
    check_weight_matrix,
)
from losslab.quant.grids import (
    CLIP_METHODS,
    RANGE_GRIDS,
    LevelGrid,
    UniformGrid,
    check_bits,
    check_group_size,
    fit_grid,
    fit_weight_grid,
    gpfq_radius,
    make_weight_quant,
    transposed_grid,
)
from losslab.quant.weight_quant import WeightQuant

__all__ = [
    "GPFQ_GRIDS",
    "SPARSITY_MODES",
    "GPFQGram",
    "GPFQStats",
    "RangeAlphabet",
    "SparseAlphabet",
    "add_pair_gram",
    "check_gpfq_grid",
    "check_sparsity",
    "gpfq_alphabet",
    "gpfq_gram_codes",
    "gpfq_sample_codes",
    "gpfq_weight",
    "gpfq_weight_from_stats",
    "gpfq_weight_sample_form",
    "pair_block",
    "stacked_transposes",
]

SPARSITY_MODES = ("l1", "l0")
GPFQ_GRIDS = (*RANGE_GRIDS, "gpfq")
SEED_GRID = "gpfq"


@dataclass(frozen=True)
class SparseAlphabet:
    """GPFQ's sparsity-promoting quantizers 𝒬_L1 and 𝒬_L0 (spec §5.1 "Options"), K = 2^(b−1), threshold λ ≥ 0.

    With s_λ(x) = sign(x)·max(|x| − λ, 0) (soft threshold) and r(y) = clamp(⌊y/δ + ½⌋, −K, K) (plain 𝒬 in codes):

    - ``l1``: δ = C·rad/K, alphabet δ·{−K, …, K} (2^b + 1 levels, as plain GPFQ), q = 𝒬(s_λ(x)) = δ·r(s_λ(x)).
      Up to ties this is argmin_{p ∈ alphabet} ½(p − x)² + λ|p|, i.e. the greedy step with the penalty λ‖X̃_t‖²|p|
      added to ½‖u_{t−1} + w_tX_t − pX̃_t‖².
    - ``l0``: δ = (C·rad − λ)/K, alphabet {0} ∪ ±(λ + jδ), j = 0…K (**2^b + 3 levels**; the largest is C·rad),
      q = 0 if |x| ≤ λ, else sign(x)·(λ + δ·|r(s_λ(x))|): hard threshold at λ, then the distance beyond λ is
      rounded half up on the step δ and clipped at K steps. Every nonzero level has |q| ≥ λ. For 0 < λ < δ/2 this
      zeroes *fewer* weights than plain GPFQ (zero region |x| ≤ λ instead of |x| < δ/2); λ = 0 is plain GPFQ.

    ``l1`` codes are the signed integers r (packed like the plain alphabet, scale δ); ``l0`` codes index the sorted
    level table ``values`` (zero at index K + 1). ``delta`` is a 0-dim tensor shared by all rows.

    >>> a = SparseAlphabet.build(torch.tensor(1.0, dtype=torch.float64), bits=2, lam=0.4, mode="l0")
    >>> a.values.tolist(), a.decode(a.encode(torch.tensor([0.3, -0.5, 0.75, 2.0], dtype=torch.float64))).tolist()
    ([-1.0, -0.7, -0.4, 0.0, 0.4, 0.7, 1.0], [0.0, -0.4, 0.7, 1.0])
    """

    delta: Tensor
    k: int
    lam: float
    mode: str
    values: Tensor

    @classmethod
    def build(cls, radius: Tensor, bits: int, lam: float, mode: str) -> SparseAlphabet:
        """From the clipping radius C·rad (0-dim tensor; its dtype is the arithmetic dtype)."""
        k = 2 ** (bits - 1)
        j = torch.arange(k + 1, dtype=radius.dtype, device=radius.device)
        if mode == "l1":
            delta = radius / k
            pos = (j * delta)[1:]
        else:
            delta = (radius - lam) / k
            pos = j * delta + lam
        zero = torch.zeros(1, dtype=radius.dtype, device=radius.device)
        return cls(delta, k, lam, mode, torch.cat([-pos.flip(0), zero, pos]))

    def encode(self, arg: Tensor) -> Tensor:
        """Codes (in ``arg``'s float dtype) of 𝒬_L1(arg) or 𝒬_L0(arg), elementwise."""
        shrunk = torch.sign(arg) * (arg.abs() - self.lam).clamp_min(0)
        r = torch.floor(shrunk / self.delta + 0.5).clamp_(-self.k, self.k)
        if self.mode == "l1":
            return r
        signed = torch.where(arg.abs() > self.lam, torch.sign(arg) * (r.abs() + 1), torch.zeros_like(r))
        return signed + (self.k + 1)

    def decode(self, codes: Tensor) -> Tensor:
        """Level values of ``codes``: δ·c (``l1``) or ``values[c]`` (``l0``)."""
        return self.delta * codes if self.mode == "l1" else self.values[codes.long()]

    @property
    def levels(self) -> int:
        """2^b + 1 (``l1``) or 2^b + 3 (``l0``)."""
        return self.values.numel()

    def packing_grid(self, rows: int) -> UniformGrid | LevelGrid:
        """The grid used to store the codes: the plain GPFQ grid (scale δ per row) or the ``l0`` level table."""
        if self.mode == "l1":
            return UniformGrid(self.delta.expand(rows, 1).clone(), None, -self.k, self.k, half_up=True)
        return LevelGrid(self.values)


@dataclass(frozen=True)
class RangeAlphabet:
    """GPFQ on a range grid (``asym``, ``sym``, ``narrow``; quantization spec §2): 2^b (narrow 2^b − 1) levels per
    row or per group of ``group_size`` consecutive columns, fitted on the original W (min/max, percentile or MSE
    clip) before the column loop, so a b-bit layer stores b bits per weight plus its scales (and zero points).

    𝒬 of column t is round-to-nearest (half to even) on the grid of t's row/group, clamped to the code range;
    ``lam`` > 0 soft-thresholds the argument first (the L1 variant: q = 𝒬(sign(x)·max(|x| − λ, 0)); 0 is a level of
    every range grid, so this is the penalized greedy step of :class:`SparseAlphabet` ``l1`` on this grid).
    ``grid`` holds params ``[out, n_groups]``; ``group_index`` ``[in]`` maps columns to groups (``None``: one).
    """

    grid: UniformGrid
    group_index: Tensor | None
    name: str
    lam: float = 0.0
    alpha: Tensor | None = None

    def full(self) -> UniformGrid:
        """The grid with per-column params ``[out, in]`` (``[out, 1]`` without groups)."""
        return self.grid if self.group_index is None else self.grid.columns(self.group_index)

    def encode(self, arg: Tensor) -> Tensor:
        """Codes of ``arg`` ``[out, in]`` (all columns at once; for tests and the RTN comparison)."""
        return self.full().encode(_soft_threshold(arg, self.lam))

    def decode(self, codes: Tensor) -> Tensor:
        """Level values of ``codes`` ``[out, in]``."""
        return self.full().decode(codes)

    @property
    def levels(self) -> int:
        """2^b (``narrow``: 2^b − 1)."""
        return self.grid.levels


Alphabet = UniformGrid | LevelGrid | SparseAlphabet | RangeAlphabet


def _soft_threshold(x: Tensor, lam: float) -> Tensor:
    """s_λ(x) = sign(x)·max(|x| − λ, 0) (``x`` itself for λ = 0)."""
    return x if lam == 0 else torch.sign(x) * (x.abs() - lam).clamp_min(0)


def _column_alphabets(alphabet: Alphabet, transpose: bool) -> Callable[[int], Alphabet]:
    """``t`` → the alphabet of column t: params ``[out, 1]``, or ``[1, out]`` with ``transpose`` (the Gram loop runs
    on Pᵀ). Every alphabet but a grouped range grid is shared by all columns."""
    if isinstance(alphabet, RangeAlphabet):
        grid = alphabet.grid
        if alphabet.group_index is None:
            shared = transposed_grid(grid) if transpose else grid
            return lambda t: shared
        groups = [grid.column(k) for k in range(grid.scale.shape[1])]
        if transpose:
            groups = [transposed_grid(g) for g in groups]
        index = alphabet.group_index.tolist()
        return lambda t: groups[index[t]]
    shared_alpha = transposed_grid(alphabet) if transpose and isinstance(alphabet, UniformGrid) else alphabet
    return lambda t: shared_alpha


def _rounding_rows(alphabet: Alphabet, n_in: int) -> list[UniformGrid] | None:
    """Column t's grid with params ``[out]`` (row views made once per grid) where 𝒬 is plain nearest rounding on a
    uniform grid (a range grid without the L1 threshold, or the seed's uniform alphabet); ``None`` otherwise."""
    if isinstance(alphabet, RangeAlphabet):
        grid, index = alphabet.grid, alphabet.group_index
    elif isinstance(alphabet, UniformGrid):
        grid, index = alphabet, None
    else:
        return None
    zero = grid.zero.T if isinstance(grid.zero, Tensor) else None
    scales = grid.scale.T.contiguous().unbind(0)  # one [out] row per group (or per grid)
    zeros = zero.contiguous().unbind(0) if zero is not None else [grid.zero] * len(scales)
    rows = [grid.with_params(sc, z) for sc, z in zip(scales, zeros, strict=True)]
    groups = index.tolist() if index is not None else [0] * n_in
    return [rows[k] for k in groups]


@dataclass(frozen=True)
class GPFQGram:
    """Finalized GPFQ statistics: G = X̃ᵀX, H̃ = X̃ᵀX̃, XᵀX (all ``[in, in]``; XᵀX ``None`` when not tracked) and the
    number of rows m."""

    g: Tensor
    h_tilde: Tensor
    xx: Tensor | None
    count: int


#: Columns per block of :func:`add_pair_gram` grow with d in steps of this width (the CPU GEMM kernels' width: a
#: block of 16·j columns runs near full speed, one of 36 columns at half of it).
PAIR_ALIGN = 16
#: Up to this d, blocks of 16, 32 or 48 columns (one per 96 of d): the fastest widths measured on the ResNet shapes
#: d = 27…1024 (BENCHMARKS.md); above it, about ``PAIR_BLOCKS`` blocks (their diagonal squares cost d/k of the d²
#: ideal, and wider blocks keep the GEMMs at full speed when few rows remain per batch).
PAIR_NARROW_UP_TO = 1024
PAIR_BLOCKS = 8
#: The fast statistics check a CPU batch of m rows by one pass over them when m < this·d (cheaper than a [2d, d]
#: scratch product, its diagonal check and its addition), else from the scratch product's diagonals.
ROW_CHECK_RATIO = 3


def stacked_transposes(x_tilde: Tensor, x: Tensor) -> Tensor:
    """[X̃ᵀ; Xᵀ] ``[2·in, m]`` from paired rows ``[m, in]``: a view when X̃ᵀ and Xᵀ are adjacent contiguous blocks of
    one buffer (as :func:`losslab.quant.unfold.unfold_conv_pair` lays out a conv's two streams), else a copy."""
    m, d = x.shape
    adjacent = (
        x_tilde.T.is_contiguous()
        and x.T.is_contiguous()
        and x.dtype == x_tilde.dtype
        and x.untyped_storage().data_ptr() == x_tilde.untyped_storage().data_ptr()
        and x.storage_offset() == x_tilde.storage_offset() + d * m
    )
    return x_tilde.as_strided((2 * d, m), (m, 1)) if adjacent else torch.cat([x_tilde.T, x.T])


def pair_block(d: int) -> int:
    """Columns per block of :func:`add_pair_gram`, a multiple of ``PAIR_ALIGN``: 16·min(3, ⌈d/96⌉) up to
    ``PAIR_NARROW_UP_TO``, else the multiple nearest above d/``PAIR_BLOCKS``."""
    if d <= PAIR_NARROW_UP_TO:
        return PAIR_ALIGN * min(3, -(-d // 96))
    return PAIR_ALIGN * -(-d // (PAIR_ALIGN * PAIR_BLOCKS))


def add_pair_gram(acc: Tensor, pair: Tensor, d: int, beta: float = 1.0) -> None:
    """Both GPFQ products in k = ⌈d/b⌉ GEMMs at (d + b)/2d of their flops (b = :func:`pair_block`):
    ``pair`` = [Aᵀ; Bᵀ] ``[2d, m]`` (or ``[d, m]``, Aᵀ alone) and, for column blocks I = [i0, i1) of ``acc``
    ``[2d, d]`` (or ``[d, d]``),

        acc[i0 : d + i1, I] += [Aᵀ[i0:]; Bᵀ[:i1]]·Aᵀ[I]ᵀ,

    so acc[:d] holds AᵀA on and below the block diagonal and acc[d:] holds BᵀA on and above it (its transpose: AᵀB
    on and below). Column block I reads the window [i0, d + i1) of ``pair``, one contiguous slice, as the GEMM's
    tall operand and its own b rows as the narrow one (the shape that keeps the CPU kernels at full speed for
    b = 16·j). ``beta=0`` overwrites the blocks instead (whatever they held, NaN included). The entries outside both
    block triangles stay untouched."""
    rows = min(pair.shape[0], acc.shape[0])
    block = pair_block(d)
    for i0 in range(0, d, block):
        i1 = min(i0 + block, d)
        stop = min(d + i1, rows)
        acc[i0:stop, i0:i1].addmm_(pair[i0:stop], pair[i0:i1].T, beta=beta)


@dataclass
class GPFQStats:
    """Streams G = X̃ᵀX, H̃ = X̃ᵀX̃ and XᵀX over batches of paired rows (float64 by default; float32 optional).

    ``solve_only=True`` accumulates only what the column solve reads (the fast path of the range grids): the lower
    triangles of G and H̃ (P = W·tril(G)ᵀ and the feedback H̃[t+1:, t]), both from one ``[2d, d]`` accumulator
    filled by :func:`add_pair_gram` (``h_tilde`` and ``g``ᵀ are views of its halves), and no XᵀX, which only
    serves the residual report ‖u_d‖² (and ‖U‖_F/‖XWᵀ‖_F), so no residual is reported: (d + b)/2d of two GEMMs per
    batch instead of three. CPU batches with NaN/inf are refused at ``update`` (the fast path reads the batch's Gram
    diagonals, :func:`losslab.quant.blocked_solve.check_gram_diagonal`, instead of a pass over the rows); on an
    accelerator :func:`gpfq_weight_from_stats` refuses the accumulated statistics instead (no per-batch sync).

    >>> stats = GPFQStats(16)
    >>> stats.update(torch.randn(40, 16), torch.randn(40, 16))
    >>> stats.finalize().g.shape
    torch.Size([16, 16])
    """

    dim: int
    dtype: torch.dtype = torch.float64
    device: torch.device | str | None = None
    solve_only: bool = False
    g: Tensor = field(init=False)
    h_tilde: Tensor = field(init=False)
    xx: Tensor | None = field(init=False)
    count: int = field(init=False, default=0)
    _scratch: Tensor | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        def zeros(cols: int) -> Tensor:
            return torch.zeros(self.dim, cols, dtype=self.dtype, device=self.device)

        if self.solve_only:
            self._pair = torch.zeros(
                2 * self.dim, self.dim, dtype=self.dtype, device=self.device
            )  # [H̃ lower; Gᵀ upper]
            self.g, self.h_tilde, self.xx = self._pair[self.dim :].T, self._pair[: self.dim], None
        else:
            self.g, self.h_tilde, self.xx = zeros(self.dim), zeros(self.dim), zeros(self.dim)

    def update(self, x: Tensor, x_tilde: Tensor | None = None) -> None:
        """Add a batch: ``x`` float-network inputs ``[rows, in]``, ``x_tilde`` quantized-network inputs (same rows;
        ``None`` or the same tensor means X̃ = X, computed with one GEMM)."""
        fast = self.solve_only  # checked from the batch's Gram diagonals (check_gram_diagonal), not by a pass over x
        check_rows_input("GPFQStats.update: x", x, self.dim, finite=False if fast else None)
        same = x_tilde is None or x_tilde is x
        if not same:
            if x_tilde.shape != x.shape:  # type: ignore[union-attr]
                raise LosslabError(f"x_tilde must have the shape of x {tuple(x.shape)}, got {tuple(x_tilde.shape)}")  # type: ignore[union-attr]
            check_rows_input("GPFQStats.update: x_tilde", x_tilde, self.dim, finite=False if fast else None)  # type: ignore[arg-type]
        if fast and same:
            lower = torch.zeros(self.dim, self.dim, dtype=self.dtype, device=self.g.device)
            add_pair_gram(lower, x.T.to(self.dtype), self.dim)
            check_gram_diagonal("GPFQStats.update: x", x, torch.diagonal(lower))
            self.h_tilde.add_(lower)
            self.g.add_(lower)
        elif fast:
            self._add_pair(x, x_tilde)  # type: ignore[arg-type]
        else:
            xs = x.to(self.dtype)
            if same:
                xx = xs.T @ xs
                for acc in (self.g, self.h_tilde, self.xx):
                    acc.add_(xx)  # type: ignore[union-attr]
            else:
                xt = x_tilde.to(self.dtype)  # type: ignore[union-attr]
                self.g.addmm_(xt.T, xs)
                self.h_tilde.addmm_(xt.T, xt)
                self.xx.addmm_(xs.T, xs)  # type: ignore[union-attr]
        self.count += x.shape[0]

    def _add_pair(self, x: Tensor, x_tilde: Tensor) -> None:
        """The fast path's product for a batch of two streams. Few rows (m < ``ROW_CHECK_RATIO``·d) on the CPU: one
        finiteness pass over the rows, then the blocks go straight into the accumulator; many rows: the blocks go
        into a scratch ``[2d, d]`` (kept: its entries outside the blocks stay 0), whose diagonals are checked before
        it is added, so a refused batch leaves the accumulator as it was either way. On an accelerator the blocks
        always go straight in (no per-batch check: the accumulated statistics are checked before solving)."""
        pair = stacked_transposes(x_tilde, x).to(self.dtype)
        if x.device.type != "cpu" or x.shape[0] < ROW_CHECK_RATIO * self.dim:
            check_rows_input("GPFQStats.update: x", x)
            check_rows_input("GPFQStats.update: x_tilde", x_tilde)
            add_pair_gram(self._pair, pair, self.dim)
            return
        if self._scratch is None:
            self._scratch = torch.zeros_like(self._pair)
        add_pair_gram(self._scratch, pair, self.dim, beta=0.0)
        check_gram_diagonal("GPFQStats.update: x_tilde", x_tilde, torch.diagonal(self._scratch))
        check_gram_diagonal("GPFQStats.update: x", x, torch.diagonal(self._scratch[self.dim :]))
        self._pair.add_(self._scratch)

    def finalize(self) -> GPFQGram:
        """The accumulated statistics (contiguous copies)."""
        g, h, xx = (
            None if t is None else t.clone(memory_format=torch.contiguous_format)
            for t in (self.g, self.h_tilde, self.xx)
        )
        return GPFQGram(g, h, xx, self.count)  # type: ignore[arg-type]


def check_sparsity(
    sparsity: str | None, lam: float, stochastic: bool = False, legacy_alphabet: bool = False, grid: str = SEED_GRID
) -> None:
    """Raise :class:`ConfigError` for a bad sparsity option (checks that do not need the weight)."""
    if sparsity is not None and sparsity not in SPARSITY_MODES:
        raise ConfigError(str(unknown_name_error("sparsity", sparsity, ("None", *SPARSITY_MODES))))
    check_range("lam", lam, low=0)
    if sparsity is None and lam != 0:
        raise ConfigError(f"lam={lam!r} has no effect without sparsity: set sparsity='l1' or 'l0', or drop lam")
    if sparsity is not None and (stochastic or legacy_alphabet):
        raise ConfigError(
            f"sparsity={sparsity!r} needs the deterministic uniform GPFQ alphabet: "
            "set stochastic=False and legacy_alphabet=False"
        )
    if sparsity == "l0" and grid != SEED_GRID:
        raise ConfigError(
            f"sparsity='l0' is defined on the seed alphabet only (levels {{0}} ∪ ±(lam + jδ)), not on grid={grid!r}: "
            "set grid='gpfq', or use sparsity='l1', which works on every grid"
        )


def check_gpfq_grid(
    grid: str,
    group_size: int | None = None,
    clip: str = "max",
    *,
    scalar: float = 1.16,
    quantile: float = 1.0,
    legacy_alphabet: bool = False,
) -> None:
    """Raise :class:`ConfigError` for a grid option GPFQ cannot honour: an unknown grid, groups or a clip on the
    seed alphabet, or the seed alphabet's own options (``scalar``, ``quantile``, ``legacy_alphabet``) on a range
    grid, where they would silently do nothing."""
    if grid not in GPFQ_GRIDS:
        raise ConfigError(str(unknown_name_error("grid", grid, GPFQ_GRIDS)))
    check_group_size(group_size)
    if clip not in CLIP_METHODS:
        raise ConfigError(str(unknown_name_error("clip", clip, CLIP_METHODS)))
    if grid == SEED_GRID:
        if group_size is not None or clip != "max":
            raise ConfigError(
                f"grid='gpfq' (the seed alphabet) has one scale per layer: group_size={group_size!r} and "
                f"clip={clip!r} need a range grid ({', '.join(RANGE_GRIDS)}); drop them or pick one of those grids"
            )
        return
    if legacy_alphabet:
        raise ConfigError("legacy_alphabet=True is the seed's alphabet: set grid='gpfq' with it")
    if scalar != 1.16 or quantile != 1.0:
        raise ConfigError(
            f"scalar/quantile set the radius of the seed alphabet (grid='gpfq') and do nothing on grid={grid!r}: "
            "drop them, or set grid='gpfq'"
        )


def gpfq_alphabet(
    weight: Tensor,
    bits: int,
    scalar: float = 1.16,
    quantile: float = 1.0,
    legacy_alphabet: bool = False,
    *,
    sparsity: str | None = None,
    lam: float = 0.0,
    grid: str = SEED_GRID,
    group_size: int | None = None,
    clip: str = "max",
) -> Alphabet:
    """The GPFQ alphabet for ``weight`` (params broadcast over its rows).

    ``grid="gpfq"`` (the seed's alphabet, one scale per layer): δ·{−K..K}, δ = scalar·rad/K,
    rad = mean_rows(quantile_j|W_ij|). ``legacy_alphabet``: the sorted levels linspace(−1, 1, 2^b)·scalar·rad plus 0
    (the alphabet behind the published ImageNet numbers). Both 2^b + 1 levels. ``sparsity`` (``"l1"`` / ``"l0"``,
    threshold ``lam`` ≥ 0 in weight units): a :class:`SparseAlphabet` on the radius C·rad = scalar·rad; ``l0`` needs
    lam < C·rad. ``grid`` ``asym`` / ``sym`` / ``narrow``: a :class:`RangeAlphabet` per row or per ``group_size``
    columns with range choice ``clip`` (``sparsity="l1"`` soft-thresholds by ``lam`` on it).
    """
    check_bits(bits)
    check_range("scalar", scalar, low=0, low_inclusive=False)
    check_range("quantile", quantile, low=0, high=1, low_inclusive=False)
    check_gpfq_grid(grid, group_size, clip, scalar=scalar, quantile=quantile, legacy_alphabet=legacy_alphabet)
    check_sparsity(sparsity, lam, legacy_alphabet=legacy_alphabet, grid=grid)
    if grid != SEED_GRID:
        fitted = fit_weight_grid(weight, bits, grid, group_size=group_size, clip=clip)
        n_groups = fitted.grid.scale.shape[1]
        index = None
        if n_groups > 1:
            index = torch.arange(weight.shape[1], device=weight.device) // group_size  # type: ignore[operator]
        return RangeAlphabet(fitted.grid, index, grid, lam if sparsity == "l1" else 0.0, fitted.alpha)
    if sparsity is not None:
        rad = gpfq_radius(weight, quantile)
        radius = scalar * rad if rad > 0 else torch.ones((), dtype=weight.dtype, device=weight.device)
        if sparsity == "l0" and not lam < radius:
            raise ConfigError(
                f"lam={lam!r} is too large for sparsity='l0': it must be below the radius C·rad = {radius.item():.6g} "
                f"(scalar={scalar!r} × rad={rad.item():.6g}) so that δ = (C·rad − lam)/K > 0; lower lam or raise scalar"
            )
        return SparseAlphabet.build(radius, bits, lam, sparsity)
    if not legacy_alphabet:
        return fit_grid(weight, bits, "gpfq", scalar=scalar, quantile=quantile).grid
    rad = scalar * gpfq_radius(weight, quantile)
    values = torch.cat(
        [
            torch.linspace(-1, 1, 2**bits, dtype=weight.dtype, device=weight.device) * rad,
            torch.zeros(1, dtype=weight.dtype, device=weight.device),
        ]
    )
    return LevelGrid(torch.sort(values).values)


def _encode(
    alphabet: Alphabet, arg: Tensor, stochastic: bool, generator: torch.Generator | None, lam: float = 0.0
) -> Tensor:
    """𝒬 in code units: nearest level (after the L1 soft threshold ``lam`` of a range grid), or stochastic rounding
    (down with probability 1 − frac(y), y = arg/δ plus the zero point)."""
    if not stochastic:
        return alphabet.encode(_soft_threshold(arg, lam))
    assert isinstance(alphabet, UniformGrid)
    y = alphabet.continuous(arg)
    low = torch.floor(y)
    up = torch.rand(y.shape, generator=generator, dtype=y.dtype, device=y.device) < (y - low)
    return (low + up).clamp_(alphabet.qmin, alphabet.qmax)


def gpfq_gram_codes(
    weight: Tensor,
    gram: GPFQGram,
    alphabet: Alphabet,
    blocksize: int = 128,
    stochastic: bool = False,
    generator: torch.Generator | None = None,
    forced_codes: Tensor | None = None,
    *,
    solver: str = "auto",
    inner: int = DEFAULT_INNER,
) -> tuple[Tensor, Tensor]:
    """Gram-form GPFQ loop (§5.3) in the dtype of ``gram``. Returns (codes, arguments), both ``[out, in]``.

    ``forced_codes`` (teacher forcing) feeds given codes into the recursion instead of 𝒬's choice, so the arguments
    can be compared with another implementation's step by step. ``solver``: ``auto``/``blocked`` (the two-level
    blocked feedback of :mod:`losslab.quant.blocked_solve`, ``inner`` columns per inner block; ``compiled`` runs
    it too: GPFQ's alphabets have no compiled block) or ``loop`` (the per-column reference loop); the same codes in
    float64.
    """
    dtype = gram.g.dtype
    w = weight.to(dtype)
    n_in = w.shape[1]
    h = gram.h_tilde
    column = _column_alphabets(alphabet, transpose=True)
    lam = alphabet.lam if isinstance(alphabet, RangeAlphabet) else 0.0
    pt = torch.tril(gram.g) @ w.T  # Pᵀ [in, out]
    codes = torch.empty_like(pt)
    qt = torch.empty_like(pt)
    args = torch.zeros_like(pt)
    hdiag = torch.diagonal(h).tolist()

    def quantize(t: int, p: Tensor) -> Tensor:  # p = P[:, t] [out] → writes codes[t], args[t]; returns q_t [out]
        if hdiag[t] != 0:
            torch.div(p, hdiag[t], out=args[t])
        alpha = column(t)
        c = _encode(alpha, args[t : t + 1], stochastic, generator, lam)
        if forced_codes is not None:
            c = forced_codes[:, t][None].to(dtype)
        codes[t : t + 1] = c
        return alpha.decode(c)[0]

    rounding = None if stochastic or forced_codes is not None or lam else _rounding_rows(alphabet, n_in)
    if solver != "loop" and rounding is not None:
        c_rows, a_rows = codes.unbind(0), args.unbind(0)  # row views, made once

        def step(t: int, p: Tensor, f: Tensor) -> None:  # the arithmetic of quantize(), in preallocated rows
            if hdiag[t] != 0:
                torch.div(p, hdiag[t], out=a_rows[t])
            g = rounding[t]
            g.decode(g.encode(a_rows[t], out=c_rows[t]), out=f).neg_()  # feedback −q_t through C = H̃ᵀ

        blocked_feedback(pt, h.T, step, blocksize=blocksize, inner=inner)
        return codes.T, args.T
    if solver != "loop":

        def step(t: int, p: Tensor, f: Tensor) -> None:
            torch.neg(quantize(t, p), out=f)  # feedback −q_t through C = H̃ᵀ

        blocked_feedback(pt, h.T, step, blocksize=blocksize, inner=inner)
        return codes.T, args.T
    for i1 in range(0, n_in, blocksize):
        i2 = min(i1 + blocksize, n_in)
        for t in range(i1, i2):
            qt[t] = quantize(t, pt[t])
            pt[t + 1 : i2].sub_(h[t + 1 : i2, t, None] * qt[t : t + 1])
        if i2 < n_in:
            pt[i2:].addmm_(h[i2:, i1:i2], qt[i1:i2], alpha=-1)
    return codes.T, args.T


def gpfq_sample_codes(
    weight: Tensor,
    x: Tensor,
    x_tilde: Tensor | None = None,
    alphabet: Alphabet | None = None,
    stochastic: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Sample-space GPFQ loop (the original rule, vectorised over rows) in ``x``'s dtype.

    Returns (codes ``[out, in]``, arguments ``[out, in]``, final residual U = u_d ``[out, m]``). O(out·m) memory.
    """
    if alphabet is None:
        raise LosslabError("gpfq_sample_codes needs an alphabet (see gpfq_alphabet)")
    xt = x if x_tilde is None else x_tilde
    dtype = x.dtype
    w = weight.to(dtype)
    n_out, n_in = w.shape
    column = _column_alphabets(alphabet, transpose=False)
    lam = alphabet.lam if isinstance(alphabet, RangeAlphabet) else 0.0
    u = torch.zeros(n_out, x.shape[0], dtype=dtype, device=x.device)
    codes = torch.empty(n_out, n_in, dtype=dtype, device=x.device)
    args = torch.zeros(n_out, n_in, dtype=dtype, device=x.device)
    for t in range(n_in):
        col, col_t = x[:, t], xt[:, t]
        norm2 = col_t @ col_t
        if norm2 != 0:
            args[:, t] = (u @ col_t + w[:, t] * (col @ col_t)) / norm2
        alpha = column(t)
        c = _encode(alpha, args[:, t : t + 1], stochastic, generator, lam)
        codes[:, t : t + 1] = c
        q = alpha.decode(c)[:, 0]
        u.addr_(w[:, t], col).addr_(q, col_t, alpha=-1)
    return codes, args, u


def _residual_extras(w: Tensor, q: Tensor, gram: GPFQGram) -> dict[str, object]:
    """Per-row ‖u_d‖² = wᵀ(XᵀX)w − 2qᵀGw + qᵀH̃q, ‖U‖_F and ‖U‖_F/‖XWᵀ‖_F (none without XᵀX)."""
    if gram.xx is None:
        return {}
    signal = ((w @ gram.xx) * w).sum(1)
    res = signal - 2 * ((q @ gram.g) * w).sum(1) + ((q @ gram.h_tilde) * q).sum(1)
    res = res.clamp_min(0)
    total = signal.sum().clamp_min(torch.finfo(signal.dtype).tiny)
    return {
        "residual_sq": res,
        "residual_norm": res.sum().sqrt().item(),
        "relative_error": (res.sum() / total).sqrt().item(),
    }


def _check_common(
    weight: Tensor,
    bits: int,
    blocksize: int,
    stochastic: bool,
    legacy_alphabet: bool,
    sparsity: str | None = None,
    lam: float = 0.0,
    solver: str = "auto",
    inner: int = DEFAULT_INNER,
    grid: str = SEED_GRID,
) -> None:
    check_bits(bits)
    check_range("blocksize", blocksize, low=1)
    check_solver(solver, inner)
    check_weight_matrix(weight)
    if stochastic and legacy_alphabet:
        raise ConfigError("stochastic=True needs the uniform GPFQ alphabet: set legacy_alphabet=False")
    check_sparsity(sparsity, lam, stochastic, legacy_alphabet, grid)


def _package(
    weight: Tensor, codes: Tensor, alphabet: Alphabet, bits: int, legacy: bool, extras: dict[str, object]
) -> WeightQuant:
    q = alphabet.decode(codes)
    if isinstance(alphabet, RangeAlphabet):
        sparse = f"-L1 λ={alphabet.lam:g}" if alphabet.lam else ""
        label = f"{bits}-bit GPFQ{sparse} {alphabet.name} ({alphabet.levels} levels)"
        extras = {**extras, "label": label}
        if alphabet.lam:
            extras["lam"] = alphabet.lam
        if alphabet.alpha is not None:
            extras["clip_alpha"] = alphabet.alpha
        grid = alphabet.grid
        return make_weight_quant(weight, codes, q, grid, alphabet.name, bits, alphabet.group_index, extras)
    if isinstance(alphabet, SparseAlphabet):
        name = f"gpfq_{alphabet.mode}"
        label = f"{bits}-bit GPFQ-{alphabet.mode.upper()} λ={alphabet.lam:g} ({alphabet.levels} levels)"
        extras = {**extras, "label": label, "delta": alphabet.delta.item(), "lam": alphabet.lam}
        return make_weight_quant(weight, codes, q, alphabet.packing_grid(weight.shape[0]), name, bits, None, extras)
    name = "gpfq_legacy" if legacy else "gpfq"
    extras = {**extras, "label": f"{bits}-bit GPFQ ({2**bits + 1} levels)"}
    if isinstance(alphabet, UniformGrid):
        extras["delta"] = alphabet.scale[0, 0].item()
    return make_weight_quant(weight, codes, q, alphabet, name, bits, None, extras)


def gpfq_weight_from_stats(
    weight: Tensor,
    stats: GPFQStats | GPFQGram,
    bits: int = 4,
    scalar: float = 1.16,
    blocksize: int = 128,
    stochastic: bool = False,
    generator: torch.Generator | None = None,
    *,
    quantile: float = 1.0,
    legacy_alphabet: bool = False,
    sparsity: str | None = None,
    lam: float = 0.0,
    grid: str = SEED_GRID,
    group_size: int | None = None,
    clip: str = "max",
    solver: str = "auto",
    inner: int = DEFAULT_INNER,
) -> WeightQuant:
    """GPFQ-quantize ``weight`` ``[out, in]`` from streamed statistics (Gram form, in the statistics' dtype).

    ``sparsity``/``lam``: the L1 or L0 quantizer of :class:`SparseAlphabet` (λ = ``lam`` in weight units).
    ``extras``: ``residual_sq`` (‖u_d‖² per row), ``residual_norm`` (‖U‖_F), ``relative_error``
    (‖U‖_F/‖XWᵀ‖_F), ``delta``, ``label`` (and ``lam`` with sparsity).
    """
    _check_common(weight, bits, blocksize, stochastic, legacy_alphabet, sparsity, lam, solver, inner, grid)
    gram = stats.finalize() if isinstance(stats, GPFQStats) else stats
    if gram.g.shape != (weight.shape[1], weight.shape[1]):
        raise LosslabError(f"statistics are {tuple(gram.g.shape)} but the weight has {weight.shape[1]} columns")
    calib = "the calibration data (and the model's activations on it)"
    for name, t in (("G = X̃ᵀX", gram.g), ("H̃ = X̃ᵀX̃", gram.h_tilde), ("XᵀX", gram.xx)):
        if t is not None:
            check_finite(f"the GPFQ statistic {name}", t, calib)
    w = weight.to(gram.g.dtype)
    alphabet = gpfq_alphabet(
        w,
        bits,
        scalar,
        quantile,
        legacy_alphabet,
        sparsity=sparsity,
        lam=lam,
        grid=grid,
        group_size=group_size,
        clip=clip,
    )
    codes, _ = gpfq_gram_codes(w, gram, alphabet, blocksize, stochastic, generator, solver=solver, inner=inner)
    wq = _package(weight, codes, alphabet, bits, legacy_alphabet, {})
    wq.extras.update(_residual_extras(w, alphabet.decode(codes), gram))
    return wq


def gpfq_weight(
    weight: Tensor,
    x: Tensor,
    x_tilde: Tensor | None = None,
    bits: int = 4,
    scalar: float = 1.16,
    blocksize: int = 128,
    stochastic: bool = False,
    generator: torch.Generator | None = None,
    *,
    quantile: float = 1.0,
    legacy_alphabet: bool = False,
    sparsity: str | None = None,
    lam: float = 0.0,
    grid: str = SEED_GRID,
    group_size: int | None = None,
    clip: str = "max",
    stats_dtype: torch.dtype = torch.float64,
    solver: str = "auto",
    inner: int = DEFAULT_INNER,
) -> WeightQuant:
    """GPFQ in the Gram form from inputs ``x`` ``[m, in]`` (float network) and ``x_tilde`` (quantized network,
    default ``x``). Statistics are accumulated in ``stats_dtype`` (float64 default, float32 optional).
    ``solver``/``inner``: the column solver (see :func:`gpfq_gram_codes`)."""
    _check_common(weight, bits, blocksize, stochastic, legacy_alphabet, sparsity, lam, solver, inner, grid)
    stats = GPFQStats(weight.shape[1], dtype=stats_dtype, device=weight.device)
    stats.update(x, x_tilde)
    return gpfq_weight_from_stats(
        weight,
        stats,
        bits,
        scalar,
        blocksize,
        stochastic,
        generator,
        quantile=quantile,
        legacy_alphabet=legacy_alphabet,
        sparsity=sparsity,
        lam=lam,
        grid=grid,
        group_size=group_size,
        clip=clip,
        solver=solver,
        inner=inner,
    )


def gpfq_weight_sample_form(
    weight: Tensor,
    x: Tensor,
    x_tilde: Tensor | None = None,
    bits: int = 4,
    scalar: float = 1.16,
    stochastic: bool = False,
    generator: torch.Generator | None = None,
    *,
    quantile: float = 1.0,
    legacy_alphabet: bool = False,
    sparsity: str | None = None,
    lam: float = 0.0,
    grid: str = SEED_GRID,
    group_size: int | None = None,
    clip: str = "max",
) -> WeightQuant:
    """Reference: the original sample-space GPFQ loop (runs in ``x``'s dtype, O(out·m) memory).

    ``extras`` holds the same residual fields as the Gram form, computed from the stored U.
    """
    _check_common(weight, bits, 1, stochastic, legacy_alphabet, sparsity, lam, grid=grid)
    check_rows_input("x", x, weight.shape[1], finite=True)
    if x_tilde is not None and x_tilde is not x:
        check_rows_input("x_tilde", x_tilde, weight.shape[1], finite=True)
    w = weight.to(x.dtype)
    alphabet = gpfq_alphabet(
        w,
        bits,
        scalar,
        quantile,
        legacy_alphabet,
        sparsity=sparsity,
        lam=lam,
        grid=grid,
        group_size=group_size,
        clip=clip,
    )
    codes, _, u = gpfq_sample_codes(w, x, x_tilde, alphabet, stochastic, generator)
    res = u.pow(2).sum(1)
    signal = (x @ w.T).pow(2).sum()
    extras = {
        "residual_sq": res,
        "residual_norm": res.sum().sqrt().item(),
        "relative_error": (res.sum() / signal).sqrt().item() if signal > 0 else 0.0,
    }
    return _package(weight, codes, alphabet, bits, legacy_alphabet, extras)
