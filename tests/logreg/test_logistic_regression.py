"""Logistic regression with the logistic / rooted loss (gan_and_regression spec §4) and ``losslab logreg``."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sklearn.svm import SVC

from losslab.cli import cli, main
from losslab.data.binary_tables import BinarySplit, load_split, synthetic_separable
from losslab.errors import LosslabError
from losslab.logreg import LogisticFit, LogisticObjective, fit_logistic_regression
from losslab.logreg.model import margin_loss_derivatives

LOSSES = [("logistic", None), ("rooted", 3.0), ("rooted", 0.5)]


@pytest.fixture(scope="module")
def breast_cancer() -> BinarySplit:
    return load_split("breast_cancer", seed=0)


def theta_of(fit: LogisticFit) -> torch.Tensor:
    """(w, b) of a fit as one vector, on the fit's device."""
    intercept = torch.tensor([fit.intercept], dtype=fit.weights.dtype, device=fit.weights.device)
    return torch.cat([fit.weights, intercept])


def test_rooted_derivatives_match_spec_oracle() -> None:
    """objectives spec §6, rooted_logistic with k = 3 at t = 0, −5, 5, to half a unit of each printed digit."""
    oracle = {  # t: (ℓ, ℓ', ℓ'')
        0.0: ("3.7797631", "-0.6299605", "0.4199737"),
        -5.0: ("15.919064", "-5.270840", "1.780465"),
        5.0: ("3.0067229", "-0.0067078", "0.0066779"),
    }
    t = torch.tensor(list(oracle), dtype=torch.float64)
    value, d1, d2 = margin_loss_derivatives(t, "rooted", 3.0)
    for i, expected in enumerate(oracle.values()):
        for got, text in zip((value[i] + 3.0, d1[i], d2[i]), expected):
            assert abs(float(got) - float(text)) <= 0.5 * 10.0 ** -len(text.split(".")[1]), (float(t[i]), text)


@pytest.mark.parametrize(("loss", "k"), LOSSES)
def test_margin_derivatives_match_autograd(loss: str, k: float | None) -> None:
    t = torch.linspace(-40.0, 40.0, 161, dtype=torch.float64, requires_grad=True)
    value, d1, d2 = margin_loss_derivatives(t, loss, k)
    (g1,) = torch.autograd.grad(value.sum(), t, create_graph=True)
    (g2,) = torch.autograd.grad(g1.sum(), t)
    torch.testing.assert_close(d1, g1, rtol=1e-12, atol=1e-300)
    torch.testing.assert_close(d2, g2, rtol=1e-10, atol=1e-300)
    assert (d2 > 0).all()  # strictly convex on the whole range


@pytest.mark.parametrize(("loss", "k"), LOSSES)
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_objective_gradient_and_hessian_match_autograd_and_finite_differences(
    loss: str, k: float | None, fit_intercept: bool
) -> None:
    features = torch.randn(40, 5, dtype=torch.float64) * 2
    signs = torch.where(torch.rand(40) < 0.5, 1, -1)
    objective = LogisticObjective(features, signs, loss=loss, k=k, l2=0.3, fit_intercept=fit_intercept)
    theta = torch.randn(objective.num_params, dtype=torch.float64, requires_grad=True)
    point = objective.evaluate(theta.detach())
    value = objective.value(theta)
    (autograd,) = torch.autograd.grad(value, theta)
    torch.testing.assert_close(point.value + objective.offset, value.detach(), rtol=1e-14, atol=0)
    torch.testing.assert_close(point.grad, autograd, rtol=1e-12, atol=1e-15)
    h = 1e-6
    eye = torch.eye(objective.num_params, dtype=torch.float64)
    with torch.no_grad():
        central = torch.stack(
            [(objective.value(theta + h * e) - objective.value(theta - h * e)) / (2 * h) for e in eye]
        )
    torch.testing.assert_close(central, point.grad, rtol=1e-7, atol=1e-8)
    hessian = torch.autograd.functional.hessian(objective.value, theta.detach())
    torch.testing.assert_close(objective.hessian(theta.detach()), hessian, rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize(("loss", "k"), [("logistic", None), ("rooted", 3.0)])
@pytest.mark.parametrize("l2", [1e-2, 1e-3])
def test_solvers_reach_the_same_optimum(breast_cancer: BinarySplit, loss: str, k: float | None, l2: float) -> None:
    """l2 > 0: unique minimiser; each solver stops within tol/μ of it (μ = smallest Hessian eigenvalue there)."""
    tol = 1e-9
    fits = {
        solver: fit_logistic_regression(
            breast_cancer.X_train, breast_cancer.y_train, loss=loss, k=k, l2=l2, solver=solver, tol=tol
        )
        for solver in ("newton", "lbfgs", "gd")
    }
    assert all(f.converged and f.stop_reason == "gradient" for f in fits.values())
    reference = fits["newton"]
    objective = LogisticObjective(
        torch.as_tensor(breast_cancer.X_train),
        torch.as_tensor(2 * breast_cancer.y_train - 1),
        loss=loss,
        k=k,
        l2=l2,
        fit_intercept=True,
    )
    mu = float(torch.linalg.eigvalsh(objective.hessian(theta_of(reference))).min())
    assert mu > 0
    for solver, fit in fits.items():
        assert float(torch.linalg.vector_norm(theta_of(fit) - theta_of(reference))) <= 2 * tol / mu, solver
        assert abs(fit.objective - reference.objective) <= 1e-12 * max(reference.objective, 1.0)
    assert fits["newton"].iterations < fits["lbfgs"].iterations < fits["gd"].iterations


@pytest.mark.parametrize(("loss", "k"), [("logistic", None), ("rooted", 3.0)])
def test_first_order_condition_at_the_l2_optimum(breast_cancer: BinarySplit, loss: str, k: float | None) -> None:
    fit = fit_logistic_regression(
        breast_cancer.X_train, breast_cancer.y_train, loss=loss, k=k, l2=1e-3, solver="newton", tol=1e-10
    )
    objective = LogisticObjective(
        torch.as_tensor(breast_cancer.X_train),
        torch.as_tensor(2 * breast_cancer.y_train - 1),
        loss=loss,
        k=k,
        l2=1e-3,
        fit_intercept=True,
    )
    theta = theta_of(fit).requires_grad_()
    (grad,) = torch.autograd.grad(objective.value(theta), theta)  # independent of the closed form the solver used
    assert float(torch.linalg.vector_norm(grad)) <= 1e-8
    assert fit.history.grad_norm[-1] <= 1e-10 and len(fit.history.objective) == fit.iterations + 1
    assert all(b <= a + 1e-15 for a, b in zip(fit.history.objective, fit.history.objective[1:]))  # monotone descent


def test_rooted_optimum_tends_to_the_logistic_one_like_one_over_k(breast_cancer: BinarySplit) -> None:
    """ℓ_k − k = s + s²/(2k) + O(1/k²) with s = softplus(−t), so ‖θ_k − θ_logistic‖ shrinks like c/k."""
    X, y = breast_cancer.X_train, breast_cancer.y_train
    logistic = theta_of(fit_logistic_regression(X, y, l2=1e-2, solver="newton", tol=1e-11))
    ks = [1.0, 3.0, 10.0, 100.0, 1000.0]
    distances = [
        float(
            torch.linalg.vector_norm(
                theta_of(fit_logistic_regression(X, y, loss="rooted", k=k, l2=1e-2, solver="newton", tol=1e-11))
                - logistic
            )
        )
        for k in ks
    ]
    assert all(b < a for a, b in itertools.pairwise(distances))
    assert 0.9 < (1000 * distances[-1]) / (100 * distances[-2]) < 1.1  # k·distance settles to a constant


def _max_margin_direction(A: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """Hard-margin SVM direction through the origin: SVC with a huge C on the set and its mirror (−x, −y).

    The mirrored set is symmetric, so SVC's (unpenalised) intercept is 0 and its w solves min ‖w‖ s.t.
    y_i w·x_i ≥ 1 on the original rows: the limit direction of gradient descent in Soudry et al. (2018).
    """
    svc = SVC(kernel="linear", C=1e6, tol=1e-8).fit(np.vstack([A, -A]), np.concatenate([signs, -signs]))
    w = svc.coef_[0]
    assert abs(svc.intercept_[0]) < 1e-4 and (signs * (A @ w)).min() > 1 - 1e-3  # separable, margin constraints met
    return w / np.linalg.norm(w)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(("loss", "k"), [("logistic", None), ("rooted", 3.0)])
def test_gradient_descent_direction_tends_to_max_margin(seed: int, loss: str, k: float | None) -> None:
    """Separable data, l2 = 0, Armijo GD from 0: w/‖w‖ → the hard-margin SVM direction while ‖w‖ grows.

    Measured on seeds 0-4 (d = 10, n = 60): the cosine passes 0.99 by iteration 300 (0.9925 at worst), is ≥ 0.998
    at 1,000 and ≥ 0.9997 at 3,000, the same for the rooted loss (k = 3) as for the logistic loss; the first step's
    direction (the class-mean difference) has cosine 0.56-0.88. Soudry et al. prove it for the logistic loss with
    a fixed step; for ℓ_k (same e^{−t} tail) it is a measurement. Fixed steps 1/L converge far slower (1/log t).
    """
    task = synthetic_separable(n_samples=60, n_features=10, seed=seed)
    signs = 2.0 * task.y - 1
    svm = _max_margin_direction(task.X, signs)
    first_step = (signs[:, None] * task.X).mean(0)
    assert first_step @ svm / np.linalg.norm(first_step) < 0.9
    fits = [
        fit_logistic_regression(task.X, task.y, loss=loss, k=k, solver="gd", fit_intercept=False, tol=0, max_iter=it)
        for it in (100, 1000)
    ]
    assert all(f.stop_reason == "max_iter" and f.history.train_accuracy[-1] == 1.0 for f in fits)
    norms = [float(f.weights.norm()) for f in fits]
    assert norms[1] > 2 * norms[0]  # no minimiser: the weights keep growing
    w = fits[1].weights.numpy()
    assert w @ svm / np.linalg.norm(w) > 0.99


def test_labels_in_either_encoding_give_the_same_model(breast_cancer: BinarySplit) -> None:
    X, y01 = breast_cancer.X_test, breast_cancer.y_test
    a = fit_logistic_regression(X, y01, loss="rooted", k=2.0, l2=1e-2, tol=1e-10)
    b = fit_logistic_regression(X, 2 * y01 - 1, loss="rooted", k=2.0, l2=1e-2, tol=1e-10)
    torch.testing.assert_close(a.weights, b.weights, rtol=0, atol=0)
    assert set(a.predict(X).tolist()) == {0, 1} and set(b.predict(X).tolist()) == {-1, 1}
    decision = torch.as_tensor(X) @ a.weights + a.intercept
    torch.testing.assert_close(a.predict_proba(X), torch.sigmoid(decision))
    assert torch.equal(a.predict(X), (decision > 0).long())
    assert a.score(X, y01) == float((a.predict(X).numpy() == y01).mean()) == b.score(X, 2 * y01 - 1)
    assert a.score(X, y01) > 0.95


def test_plateau_and_divergence_stops() -> None:
    task = synthetic_separable(n_samples=40, n_features=3, seed=2)
    tiny = fit_logistic_regression(task.X, task.y, solver="gd", lr=1e-12, tol=0)
    # θ_0 = 0 predicts every row negative; from θ_1 on the accuracy is constant, so after θ_101 it has been unchanged
    # for 100 iterations while F moves by ~1e-12 relative: the spec's plateau rule (l2 = 0 only)
    assert (tiny.stop_reason, tiny.converged, tiny.iterations) == ("plateau", True, 101)
    assert tiny.history.train_accuracy[0] != tiny.history.train_accuracy[1] == tiny.history.train_accuracy[-1]
    penalized = fit_logistic_regression(task.X, task.y, solver="gd", lr=1e-12, tol=0, l2=1e-3, max_iter=150)
    assert (penalized.stop_reason, penalized.iterations) == ("max_iter", 150)
    noisy = torch.randint(0, 2, (40,))  # not separable: a huge fixed step sends some margins to −∞
    blown = fit_logistic_regression(task.X, noisy, loss="rooted", k=0.1, solver="gd", lr=1e6, tol=0)
    assert (blown.stop_reason, blown.converged) == ("diverged", False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 0.0, "loss": "rooted"}, "k=0.0 is out of range: allowed k > 0"),
        ({"k": 3.0}, "k=3.0 applies only to loss='rooted'"),
        ({"loss": "hinge"}, "unknown loss 'hinge'; choose one of: logistic, rooted"),
        ({"solver": "sgd"}, "unknown solver 'sgd'; choose one of: gd, lbfgs, newton"),
        ({"solver": "newton", "lr": 0.1}, "lr=0.1 applies only to solver='gd'"),
        ({"max_iter": 0}, "max_iter=0 is not allowed"),
        ({"l2": -1.0}, "l2=-1.0 is out of range"),
        ({"dtype": torch.float16}, "dtype=torch.float16 is not allowed"),
    ],
)
def test_bad_options_raise_before_work(kwargs: dict, message: str) -> None:
    with pytest.raises(LosslabError, match=re.escape(message)):
        fit_logistic_regression(np.zeros((4, 2)), [0, 1, 0, 1], **kwargs)


@pytest.mark.parametrize(
    ("X", "y", "message"),
    [
        (np.zeros((4, 2)), [0, 1, 2, 1], "binary labels must be in {0, 1} or {-1, +1}"),
        (np.zeros((4, 2)), [0, -1, 0, 1], "binary labels must be in"),
        (np.zeros((4, 2)), [1, 1, 1, 1], "only the class 1; logistic regression needs both classes"),
        (np.zeros((4, 2)), [0, 1, 0], "one label per row of X"),
        (np.array([[0.0, np.nan], [1.0, 1.0]]), [0, 1], "NaN or infinite"),
        (np.zeros(4), [0, 1, 0, 1], "2-D array"),
    ],
)
def test_bad_data_raise(X: np.ndarray, y: list[int], message: str) -> None:
    with pytest.raises(LosslabError, match=re.escape(message)):
        fit_logistic_regression(X, y)


def test_cli_compare_table_and_json_match_the_python_api(tmp_path: Path) -> None:
    out = tmp_path / "logreg.json"
    args = ["logreg", "--dataset", "breast_cancer", "--compare", "--k", "3", "--k", "10", "--l2", "1e-2"]
    result = CliRunner().invoke(cli, [*args, "--seed", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:3] == ["loss", "k", "iters"]
    assert [line.split()[:2] for line in lines[2:5]] == [["logistic", "-"], ["rooted", "3"], ["rooted", "10"]]
    assert "398 train / 171 test" in result.output and "seed 1" in result.output
    report = json.loads(out.read_text())
    assert [(r["loss"], r["k"]) for r in report["runs"]] == [("logistic", None), ("rooted", 3.0), ("rooted", 10.0)]
    split = load_split("breast_cancer", seed=1)
    for record in report["runs"]:
        fit = fit_logistic_regression(split.X_train, split.y_train, loss=record["loss"], k=record["k"], l2=1e-2)
        assert record["weights"] == fit.weights.tolist() and record["intercept"] == fit.intercept
        assert record["iterations"] == fit.iterations and record["history"]["objective"] == fit.history.objective
        assert record["test_accuracy"] == fit.score(split.X_test, split.y_test)
        assert record["converged"] and record["options"]["solver"] == "lbfgs"


def test_cli_csv_with_text_labels(tmp_path: Path) -> None:
    split = load_split("iris_binary", seed=0)
    rows = ["sepal_l,label,petal_w"] + [
        f"{x[0]},{'virginica' if label else 'versicolor'},{x[3]}" for x, label in zip(split.X_train, split.y_train)
    ]
    path = tmp_path / "iris.csv"
    path.write_text("\n".join(rows) + "\n")
    out = tmp_path / "r.json"
    args = ["logreg", "--csv", str(path), "--target", "label", "--solver", "newton", "--l2", "1e-3", "--json", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["dataset"]["positive_class"] == "virginica" and report["dataset"]["n_features"] == 2
    assert report["runs"][0]["loss"] == "rooted" and report["runs"][0]["k"] == 3.0
    assert report["runs"][0]["train_accuracy"] > 0.85


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--k", "0"], "Invalid value for '--k': 0.0 is not in the range 0<x"),
        (["--compare", "--k", "3", "--k", "-1"], "Invalid value for '--k': -1.0 is not in the range 0<x"),
        (["--dataset", "mnist"], "unknown dataset 'mnist'; choose one of: breast_cancer, digits_binary"),
        (["--csv", "CSV", "--target", "kind"], "--target 'kind' is not a column of"),
        (["--csv", "CSV", "--target", "label"], "--target 'label' has 3 distinct value(s) (a, b, c)"),
        (["--csv", "CSV", "--target", "x"], "column 'label': 'a' is not a finite number"),
        (["--csv", "CSV"], "--csv needs --target COLUMN"),
        (["--dataset", "iris_binary", "--csv", "CSV", "--target", "x"], "exactly one data source"),
        (["--compare", "--loss", "rooted"], "--compare fits both losses; drop --loss"),
        (["--k", "3", "--k", "10"], "add --compare to fit several"),
        (["--loss", "logistic", "--k", "3"], "applies only to loss='rooted'"),
        (["--solver", "newton", "--lr", "0.1"], "applies only to solver='gd'"),
        (["--test-fraction", "1.5"], "Invalid value for '--test-fraction': 1.5 is not in the range 0<x<1"),
    ],
)
def test_cli_bad_input_errors(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "three.csv"
    path.write_text("x,label\n" + "".join(f"{i},{'abc'[i % 3]}\n" for i in range(9)))
    with pytest.raises(SystemExit) as info:
        main(["logreg", *[str(path) if a == "CSV" else a for a in args]])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.gpu
def test_cuda_fit_matches_cpu(breast_cancer: BinarySplit) -> None:
    kwargs = {"loss": "rooted", "k": 3.0, "l2": 1e-3, "solver": "newton", "tol": 1e-10}
    cpu = fit_logistic_regression(breast_cancer.X_train, breast_cancer.y_train, **kwargs)
    gpu = fit_logistic_regression(breast_cancer.X_train, breast_cancer.y_train, device="cuda", **kwargs)
    assert gpu.weights.device.type == "cuda" and gpu.converged
    torch.testing.assert_close(theta_of(gpu).cpu(), theta_of(cpu), rtol=0, atol=1e-8)
    assert gpu.score(breast_cancer.X_test, breast_cancer.y_test) == cpu.score(
        breast_cancer.X_test, breast_cancer.y_test
    )
