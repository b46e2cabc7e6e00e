"""Linear logistic regression with the logistic or the rooted logistic loss (gan_and_regression spec §4).

The RLO seed's "logistic regression with RLO": a binary linear classifier trained by full-batch deterministic
optimisation, so convergence and the effect of k can be measured exactly::

    from losslab.logreg import fit_logistic_regression

    fit = fit_logistic_regression(X, y, loss="rooted", k=3.0, l2=1e-3, solver="newton", tol=1e-8)
    fit.converged, fit.iterations, fit.history.objective[-1]
    fit.score(X_test, y_test), fit.predict(X_test), fit.predict_proba(X_test)

Objective, with margins t_i = y_i·(w·x_i + b), y_i ∈ {−1, +1} (labels {0, 1} are mapped to {−1, +1})::

    F(w, b) = (1/n) Σ_i ℓ(t_i) + (l2/2)·‖w‖²        (the intercept b is not penalised)
    logistic  ℓ(t)   = softplus(−t) = log(1 + e^{−t})
    rooted    ℓ_k(t) = k·exp(softplus(−t)/k) = k·(1 + e^{−t})^{1/k}       (objectives spec §3b)

ℓ_k is strictly convex for every k > 0 and ℓ_k − k → softplus(−t) as k → ∞, so the rooted optimum tends to the
logistic one. F is convex; it has a unique minimiser when l2 > 0 (or the data are not separable and X has full
column rank). On linearly separable data with l2 = 0 neither loss has a minimiser: ‖w‖ grows without bound. For the
logistic loss, gradient descent's direction w/‖w‖ then tends to the hard-margin SVM direction (Soudry et al.,
JMLR 2018); ℓ_k − k ≈ e^{−t} has the same exponential tail. The RLO paper (Wang et al., AISTATS 2025) states that the
minimisers of its rooted objectives "coincide with those of the minimum norm solution wherever possible"; losslab
tests what it can check (see docs/objectives.md), not that claim.

Solvers (all start from w = 0, b = 0 and stop when ‖∇F‖₂ ≤ ``tol``):

* ``newton``: damped Newton with the closed-form Hessian (1/n)·Zᵀ diag(ℓ''(t)) Z + l2·I_w, Z_i = y_i·(x_i, 1).
* ``lbfgs``: L-BFGS (Nocedal & Wright Alg. 7.4, 10 curvature pairs).
* ``gd``: gradient descent, a fixed step ``lr`` or, with ``lr=None``, Armijo backtracking from twice the last step.
  ℓ_k is not globally smooth (ℓ_k'' ≈ e^{−t/k}/k as t → −∞), so a fixed step that suits the logistic loss can
  diverge with the rooted one.

Newton and L-BFGS use Armijo backtracking too. Near the optimum, where the decrease of F falls below float rounding,
a step is also accepted when F is unchanged to rounding and ‖∇F‖ decreases. With l2 = 0 the spec's plateau rule
also stops a run: training accuracy unchanged for 100 iterations and a relative change of F − F_∞ below 1e-8, where
F_∞ = k for the rooted loss and 0 for the logistic one (the infimum of ℓ).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import Tensor

from losslab.errors import ConfigError, LosslabError, check_range, unknown_name_error
from losslab.objectives.rooted import check_k, rooted_logistic, softplus

LOSSES = ("logistic", "rooted")
SOLVERS = ("lbfgs", "gd", "newton")
DEFAULT_K = 3.0
DEFAULT_MAX_ITER = 10_000
DEFAULT_TOL = 1e-6
PLATEAU_PATIENCE = 100
PLATEAU_RTOL = 1e-8
LBFGS_MEMORY = 10
ARMIJO_C = 1e-4
MAX_BACKTRACKS = 60
_DTYPES = {torch.float32: "float32", torch.float64: "float64"}

ArrayLike = Tensor | np.ndarray | Sequence[Any]


def margin_loss_derivatives(t: Tensor, loss: str, k: float | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(ℓ(t) − ℓ_∞, ℓ'(t), ℓ''(t)) elementwise, closed forms (objectives spec §3b); ℓ_∞ = k (rooted) or 0.

    logistic: softplus(−t), −σ(−t), σ(t)σ(−t).
    rooted:   ℓ_k − k = k(e^{softplus(−t)/k} − 1), −σ(−t)·r, r·σ(−t)·(σ(t) + σ(−t)/k), r = (1 + e^{−t})^{1/k}.
    The value is returned without its constant infimum so that differences of F keep full precision for large k.
    """
    sig_pos, sig_neg = torch.sigmoid(t), torch.sigmoid(-t)  # σ(−t), not 1 − σ(t), which rounds to 0 for t ≫ 0
    if loss == "logistic":
        return softplus(-t), -sig_neg, sig_pos * sig_neg
    assert k is not None
    root = torch.exp(softplus(-t) / k)
    return rooted_logistic(t, k, subtract_k=True), -sig_neg * root, root * sig_neg * (sig_pos + sig_neg / k)


@dataclass(frozen=True)
class LogisticOptions:
    """The validated settings of one :func:`fit_logistic_regression` call (``k`` is None for the logistic loss)."""

    loss: str = "logistic"
    k: float | None = None
    l2: float = 0.0
    fit_intercept: bool = True
    solver: str = "lbfgs"
    lr: float | None = None
    max_iter: int = DEFAULT_MAX_ITER
    tol: float = DEFAULT_TOL
    dtype: str = "float64"
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of the settings."""
        return asdict(self)


def check_options(
    *,
    loss: str = "logistic",
    k: float | None = None,
    l2: float = 0.0,
    solver: str = "lbfgs",
    lr: float | None = None,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
) -> float | None:
    """Raise :class:`ConfigError` for a bad setting, before any work; returns the k to use (None for logistic)."""
    if loss not in LOSSES:
        raise unknown_name_error("loss", loss, LOSSES)
    if solver not in SOLVERS:
        raise unknown_name_error("solver", solver, SOLVERS)
    if loss == "logistic" and k is not None:
        raise ConfigError(f"k={k!r} applies only to loss='rooted'; drop k or pass loss='rooted'")
    if loss == "rooted":
        k = DEFAULT_K if k is None else float(k)
        check_k(k)
    check_range("l2", l2, low=0.0)
    check_range("tol", tol, low=0.0)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ConfigError(f"max_iter={max_iter!r} is not allowed: pass an integer >= 1, e.g. {DEFAULT_MAX_ITER}")
    if lr is not None:
        if solver != "gd":
            raise ConfigError(f"lr={lr!r} applies only to solver='gd' (newton and lbfgs choose their own steps)")
        check_range("lr", lr, low=0.0, low_inclusive=False)
    return k


def as_features(X: ArrayLike, dtype: torch.dtype = torch.float64, device: str | torch.device | None = None) -> Tensor:
    """``X`` as an [n, d] floating tensor; raises :class:`LosslabError` for other shapes or non-finite values."""
    if dtype not in _DTYPES:
        raise ConfigError(f"dtype={dtype!r} is not allowed: use torch.float64 (default) or torch.float32")
    features = torch.as_tensor(np.asarray(X) if not isinstance(X, Tensor) else X, device=device).to(dtype)
    if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] == 0:
        raise LosslabError(
            f"X must be a non-empty 2-D array [n_samples, n_features]; got shape {tuple(features.shape)}"
        )
    if not torch.isfinite(features).all():
        raise LosslabError("X contains NaN or infinite values; drop or impute those rows first")
    return features


def binary_labels(y: ArrayLike, n: int, device: str | torch.device | None = None) -> tuple[Tensor, tuple[int, int]]:
    """(signs ±1 as int8 [n], the label encoding (negative, positive)): y must hold values in {0, 1} or {−1, +1}.

    Both classes must be present.
    """
    labels = torch.as_tensor(np.asarray(y) if not isinstance(y, Tensor) else y, device=device)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise LosslabError(f"y must be 1-D with one label per row of X ({n}); got shape {tuple(labels.shape)}")
    values = sorted({float(v) for v in labels.unique().tolist()})
    if not (set(values) <= {0.0, 1.0} or set(values) <= {-1.0, 1.0}):
        raise LosslabError(
            f"y holds the values {values[:6]}; binary labels must be in {{0, 1}} or {{-1, +1}}: "
            "map your two classes to these (e.g. y = (labels == positive_class))"
        )
    if len(values) != 2:
        raise LosslabError(f"y holds only the class {values[0]:g}; logistic regression needs both classes")
    encoding = (int(values[0]), 1)
    return torch.where(labels.to(torch.float64) > 0, 1, -1).to(torch.int8), encoding


def _augment(features: Tensor, fit_intercept: bool) -> Tensor:
    """(x, 1) rows when fitting an intercept, else x itself: [n, d + fit_intercept]."""
    if not fit_intercept:
        return features
    return torch.cat([features, features.new_ones(features.shape[0], 1)], dim=1)


@dataclass(frozen=True)
class Point:
    """One evaluation of F: parameters θ = (w, b), decision values f = Xw + b, F − ℓ_∞ and ∇F."""

    theta: Tensor
    decision: Tensor
    value: Tensor
    grad: Tensor

    @property
    def grad_norm(self) -> float:
        return float(torch.linalg.vector_norm(self.grad))


class LogisticObjective:
    """F(θ) = (1/n) Σ ℓ(y_i·(w·x_i + b)) + (l2/2)‖w‖² over θ = (w, b) ([d + 1], or [d] without an intercept).

    ``features`` [n, d]; ``signs`` [n] in {−1, +1}. :meth:`value` is the plain autograd-differentiable F;
    :meth:`evaluate` and :meth:`hessian` use the closed-form ℓ', ℓ'' of :func:`margin_loss_derivatives`.
    """

    def __init__(
        self, features: Tensor, signs: Tensor, *, loss: str, k: float | None, l2: float, fit_intercept: bool
    ) -> None:
        self.inputs = _augment(features, fit_intercept)
        self.signs = signs.to(features.dtype)
        self.rows = self.signs[:, None] * self.inputs  # Z_i = y_i·(x_i, 1)
        self.loss, self.k, self.l2 = loss, k, l2
        self.penalized = torch.ones(self.inputs.shape[1], dtype=features.dtype, device=features.device)
        if fit_intercept:
            self.penalized[-1] = 0.0
        self.offset = k if loss == "rooted" else 0.0

    @property
    def num_params(self) -> int:
        return self.inputs.shape[1]

    def _penalty(self, theta: Tensor) -> Tensor:
        return 0.5 * self.l2 * (self.penalized * theta * theta).sum()

    def value(self, theta: Tensor) -> Tensor:
        """F(θ) itself (including the constant k of the rooted loss), written so that autograd can check it."""
        t = self.rows @ theta
        per_row = rooted_logistic(t, self.k) if self.loss == "rooted" else softplus(-t)
        return per_row.mean() + self._penalty(theta)

    def evaluate(self, theta: Tensor) -> Point:
        """F(θ) − ℓ_∞ and ∇F(θ) = (1/n) Zᵀ ℓ'(Zθ) + l2·(w, 0) in one pass."""
        decision = self.inputs @ theta
        value, d1, _ = margin_loss_derivatives(self.signs * decision, self.loss, self.k)
        grad = self.rows.T @ d1 / len(d1) + self.l2 * self.penalized * theta
        return Point(theta, decision, value.mean() + self._penalty(theta), grad)

    def hessian(self, theta: Tensor) -> Tensor:
        """∇²F(θ) = (1/n) Zᵀ diag(ℓ''(Zθ)) Z + l2·diag(1, …, 1, 0): [p, p]."""
        _, _, d2 = margin_loss_derivatives(self.rows @ theta, self.loss, self.k)
        return (self.rows.T * (d2 / len(d2))) @ self.rows + torch.diag(self.l2 * self.penalized)

    def accuracy(self, point: Point) -> float:
        """Fraction of rows classified correctly; positive class where w·x + b > 0."""
        return float(((point.decision > 0) == (self.signs > 0)).to(torch.float64).mean())


@dataclass
class LogisticHistory:
    """Per-iteration records, entry 0 at the start point θ = 0 (so each list has ``iterations + 1`` entries)."""

    objective: list[float] = field(default_factory=list)
    """F(θ_t), including the rooted loss's constant k"""
    grad_norm: list[float] = field(default_factory=list)
    """‖∇F(θ_t)‖₂"""
    train_accuracy: list[float] = field(default_factory=list)
    """fraction of training rows classified correctly"""

    def record(self, objective: LogisticObjective, point: Point) -> None:
        self.objective.append(float(point.value) + objective.offset)
        self.grad_norm.append(point.grad_norm)
        self.train_accuracy.append(objective.accuracy(point))


@dataclass
class LogisticFit:
    """Result of :func:`fit_logistic_regression`.

    ``weights`` [d] and ``intercept`` (0.0 without one) define f(x) = w·x + b. ``stop_reason`` is ``gradient``
    (‖∇F‖ ≤ tol), ``plateau`` (l2 = 0 rule), ``max_iter``, ``line_search`` (no decrease found: the rounding
    floor) or ``diverged`` (F not finite after a fixed ``lr`` step); ``converged`` is True for the first two.
    ``labels`` is the (negative, positive) label encoding of the training y, used by :meth:`predict`.
    """

    weights: Tensor
    intercept: float
    history: LogisticHistory
    converged: bool
    stop_reason: str
    iterations: int
    function_evals: int
    labels: tuple[int, int]
    options: LogisticOptions

    def decision_function(self, X: ArrayLike) -> Tensor:
        """f(x) = w·x + b for each row of ``X`` [n, d]: [n]."""
        features = as_features(X, self.weights.dtype, self.weights.device)
        if features.shape[1] != self.weights.shape[0]:
            raise LosslabError(f"X has {features.shape[1]} features; this model was fitted on {self.weights.shape[0]}")
        return features @ self.weights + self.intercept

    def predict_proba(self, X: ArrayLike) -> Tensor:
        """P(positive class | x) = σ(w·x + b): [n].

        For both losses the model's probability is the logistic link σ(t). The rooted loss ℓ_k = k·exp(NLL/k) is a
        monotone transform of the logistic negative log-likelihood NLL = softplus(−t) per row, so it fits the same
        link with hard rows weighted up; its probabilities are not maximum-likelihood estimates (calibration may
        differ from logistic regression's).
        """
        return torch.sigmoid(self.decision_function(X))

    def predict(self, X: ArrayLike) -> Tensor:
        """Labels in the training encoding ({0, 1} or {−1, +1}): positive where w·x + b > 0. [n] int64."""
        negative, positive = self.labels
        return torch.where(self.decision_function(X) > 0, positive, negative)

    def score(self, X: ArrayLike, y: ArrayLike) -> float:
        """Accuracy on (X, y) in [0, 1]; y in {0, 1} or {−1, +1}."""
        signs, _ = binary_labels(y, len(np.asarray(X)) if not isinstance(X, Tensor) else X.shape[0])
        predicted = self.decision_function(X) > 0
        return float((predicted.cpu() == (signs > 0)).to(torch.float64).mean())

    @property
    def objective(self) -> float:
        """Final F."""
        return self.history.objective[-1]

    @property
    def grad_norm(self) -> float:
        """Final ‖∇F‖₂."""
        return self.history.grad_norm[-1]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: weights, intercept, the full history, stop information and options."""
        return {
            "weights": self.weights.tolist(),
            "intercept": self.intercept,
            "converged": self.converged,
            "stop_reason": self.stop_reason,
            "iterations": self.iterations,
            "function_evals": self.function_evals,
            "objective": self.objective,
            "grad_norm": self.grad_norm,
            "labels": list(self.labels),
            "options": self.options.to_dict(),
            "history": asdict(self.history),
        }


class _Counter:
    """Counts evaluations of F and ∇F."""

    def __init__(self, objective: LogisticObjective) -> None:
        self.objective = objective
        self.evals = 0

    def __call__(self, theta: Tensor) -> Point:
        self.evals += 1
        return self.objective.evaluate(theta)


def armijo_step(evaluate: _Counter, point: Point, direction: Tensor, step: float) -> tuple[Point, float] | None:
    """Backtracking line search: halve ``step`` until F(θ + s·d) ≤ F(θ) + 1e-4·s·∇Fᵀd. Returns (point, s) or None.

    At the rounding floor (F unchanged to a few ulps) a step that reduces ‖∇F‖ is accepted instead.
    """
    slope = float(point.grad @ direction)
    if not slope < 0:
        return None
    value = float(point.value)
    rounding = 8 * torch.finfo(point.value.dtype).eps * abs(value)
    for _ in range(MAX_BACKTRACKS):
        trial = evaluate(point.theta + step * direction)
        new_value = float(trial.value)
        if new_value <= value + ARMIJO_C * step * slope:
            return trial, step
        if abs(new_value - value) <= rounding and trial.grad_norm < point.grad_norm:
            return trial, step
        step *= 0.5
    return None


class _Solver(Protocol):
    def step(self, point: Point) -> Point | None: ...


class _GradientDescent:
    """θ ← θ − s·∇F with a fixed s = lr, or Armijo backtracking from twice the previous step (from 1)."""

    def __init__(self, evaluate: _Counter, lr: float | None) -> None:
        self.evaluate, self.lr, self.last_step = evaluate, lr, 0.5

    def step(self, point: Point) -> Point | None:
        if self.lr is not None:
            return self.evaluate(point.theta - self.lr * point.grad)
        found = armijo_step(self.evaluate, point, -point.grad, 2 * self.last_step)
        if found is None:
            return None
        new, self.last_step = found
        return new


class _Newton:
    """θ ← θ + s·d with H d = −∇F (Cholesky; a tiny ridge is added only if H is numerically singular)."""

    def __init__(self, evaluate: _Counter) -> None:
        self.evaluate = evaluate

    def step(self, point: Point) -> Point | None:
        hessian = self.evaluate.objective.hessian(point.theta)
        eye = torch.eye(len(hessian), dtype=hessian.dtype, device=hessian.device)
        ridge = 0.0
        scale = float(hessian.diagonal().abs().max()) or 1.0
        for _ in range(20):
            factor, info = torch.linalg.cholesky_ex(hessian + ridge * eye)
            if int(info) == 0:
                break
            ridge = max(10 * ridge, 1e-12 * scale)
        else:
            return None
        direction = torch.cholesky_solve(-point.grad[:, None], factor)[:, 0]
        found = armijo_step(self.evaluate, point, direction, 1.0)
        return None if found is None else found[0]


class _LBFGS:
    """L-BFGS two-loop recursion (Nocedal & Wright Alg. 7.4) with H₀ = (sᵀy / yᵀy)·I and Armijo steps from 1.

    The first step starts at 1/‖∇F‖₂. Pairs with sᵀy ≤ 1e-10·‖s‖‖y‖ are skipped (F is convex, so sᵀy ≥ 0).
    """

    def __init__(self, evaluate: _Counter, memory: int = LBFGS_MEMORY) -> None:
        self.evaluate, self.memory = evaluate, memory
        self.pairs: list[tuple[Tensor, Tensor, float]] = []

    def _direction(self, grad: Tensor) -> Tensor:
        q = -grad
        alphas = []
        for s, y, rho in reversed(self.pairs):
            alpha = rho * float(s @ q)
            q = q - alpha * y
            alphas.append(alpha)
        s, y, _ = self.pairs[-1]
        q = q * (float(s @ y) / float(y @ y))
        for (s, y, rho), alpha in zip(self.pairs, reversed(alphas)):
            q = q + (alpha - rho * float(y @ q)) * s
        return q

    def step(self, point: Point) -> Point | None:
        if self.pairs:
            found = armijo_step(self.evaluate, point, self._direction(point.grad), 1.0)
        else:
            found = armijo_step(self.evaluate, point, -point.grad, 1.0 / max(point.grad_norm, 1e-300))
        if found is None:
            return None
        new = found[0]
        s, y = new.theta - point.theta, new.grad - point.grad
        sy = float(s @ y)
        if sy > 1e-10 * float(torch.linalg.vector_norm(s) * torch.linalg.vector_norm(y)):
            self.pairs = [*self.pairs[-(self.memory - 1) :], (s, y, 1.0 / sy)]
        return new


def _make_solver(evaluate: _Counter, options: LogisticOptions) -> _Solver:
    if options.solver == "gd":
        return _GradientDescent(evaluate, options.lr)
    if options.solver == "newton":
        return _Newton(evaluate)
    return _LBFGS(evaluate)


def _plateau(history: LogisticHistory, previous: Point, current: Point) -> bool:
    """Spec §4 rule for l2 = 0: accuracy unchanged for 100 iterations and |ΔF| < 1e-8·|F − ℓ_∞|.

    ``previous`` and ``current`` hold F − ℓ_∞ at full precision (the history's F includes the rooted loss's k).
    """
    if len(history.objective) <= PLATEAU_PATIENCE:
        return False
    recent = history.train_accuracy[-PLATEAU_PATIENCE - 1 :]
    change = abs(float(current.value) - float(previous.value))
    return min(recent) == max(recent) and change < PLATEAU_RTOL * abs(float(previous.value))


def fit_logistic_regression(
    X: ArrayLike,
    y: ArrayLike,
    *,
    loss: Literal["logistic", "rooted"] | str = "logistic",
    k: float | None = None,
    l2: float = 0.0,
    fit_intercept: bool = True,
    solver: Literal["lbfgs", "gd", "newton"] | str = "lbfgs",
    lr: float | None = None,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device | None = None,
) -> LogisticFit:
    """Minimise F(w, b) = (1/n) Σ ℓ(y_i·(w·x_i + b)) + (l2/2)‖w‖² from w = 0, b = 0 (see the module docstring).

    ``X`` [n, d] features (array or tensor); ``y`` [n] labels in {0, 1} or {−1, +1}. ``loss`` ``logistic``
    (softplus(−t)) or ``rooted`` (ℓ_k, ``k`` > 0, default 3; ``k`` is refused for ``logistic``). ``solver``
    ``lbfgs``, ``newton`` or ``gd`` (``lr``: fixed step for ``gd``; None = Armijo backtracking). Stops when
    ‖∇F‖₂ ≤ ``tol``, after ``max_iter`` iterations, or by the plateau rule when l2 = 0. Every setting is checked
    before any work; bad values raise :class:`~losslab.errors.ConfigError` / :class:`~losslab.errors.LosslabError`.
    """
    k = check_options(loss=loss, k=k, l2=l2, solver=solver, lr=lr, max_iter=max_iter, tol=tol)
    features = as_features(X, dtype, device)
    signs, labels = binary_labels(y, features.shape[0], features.device)
    options = LogisticOptions(
        loss=loss,
        k=k,
        l2=float(l2),
        fit_intercept=fit_intercept,
        solver=solver,
        lr=lr,
        max_iter=max_iter,
        tol=float(tol),
        dtype=_DTYPES[dtype],
        device=str(features.device),
    )
    objective = LogisticObjective(features, signs, loss=loss, k=k, l2=l2, fit_intercept=fit_intercept)
    evaluate = _Counter(objective)
    solver_impl = _make_solver(evaluate, options)
    point = evaluate(features.new_zeros(objective.num_params))
    history = LogisticHistory()
    history.record(objective, point)
    stop_reason, iterations, previous = "max_iter", 0, point
    while True:
        if point.grad_norm <= tol:
            stop_reason = "gradient"
            break
        if l2 == 0 and _plateau(history, previous, point):
            stop_reason = "plateau"
            break
        if iterations == max_iter:
            break
        new = solver_impl.step(point)
        if new is None:
            stop_reason = "line_search"
            break
        iterations += 1
        previous, point = point, new
        history.record(objective, point)
        if not math.isfinite(history.objective[-1]) or not math.isfinite(point.grad_norm):
            stop_reason = "diverged"
            break
    weights = point.theta[:-1] if fit_intercept else point.theta
    return LogisticFit(
        weights=weights.clone(),
        intercept=float(point.theta[-1]) if fit_intercept else 0.0,
        history=history,
        converged=stop_reason in ("gradient", "plateau"),
        stop_reason=stop_reason,
        iterations=iterations,
        function_evals=evaluate.evals,
        labels=labels,
        options=options,
    )
