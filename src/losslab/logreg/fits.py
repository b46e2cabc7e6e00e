"""The fits of ``losslab logreg`` on one split: every (loss, k) with the same options, as a table and records.

split = load_split("breast_cancer", seed=0)
report = run_logreg(split, [("logistic", None), ("rooted", 3.0)], l2=1e-3)
report["table"], report["protocol"], report["runs"]   # text table, one-line protocol, one record per fit
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from losslab.data.binary_tables import BinarySplit
    from losslab.logreg.model import LogisticFit


def fit_split(split: BinarySplit, *, loss: str, k: float | None, **options: Any) -> LogisticFit:
    """:func:`fit_logistic_regression` on the split's training rows."""
    from losslab.logreg.model import fit_logistic_regression

    return fit_logistic_regression(split.X_train, split.y_train, loss=loss, k=k, **options)


def check_runs(runs: list[tuple[str, float | None]], **options: Any) -> None:
    """Raise :class:`ConfigError` if any (loss, k) of ``runs`` with ``options`` is not allowed (no work done)."""
    from losslab.logreg.model import check_options

    settings = {key: options[key] for key in ("l2", "solver", "lr", "max_iter", "tol") if key in options}
    for loss, k in runs:
        check_options(loss=loss, k=k, **settings)


def run_logreg(split: BinarySplit, runs: list[tuple[str, float | None]], **options: Any) -> dict[str, Any]:
    """Fit every (loss, k) of ``runs`` on ``split`` with the same ``options``; returns table, records, protocol.

    All settings are checked before the first fit.
    """
    from losslab.tables import format_table

    check_runs(runs, **options)
    rows, records = [], []
    for loss, k in runs:
        fit = fit_split(split, loss=loss, k=k, **options)
        train_acc, test_acc = fit.score(split.X_train, split.y_train), fit.score(split.X_test, split.y_test)
        weight_norm = float(fit.weights.norm())
        rows.append(
            [
                loss,
                "-" if fit.options.k is None else f"{fit.options.k:g}",
                fit.iterations,
                fit.function_evals,
                "yes" if fit.converged else "no",
                fit.stop_reason,
                f"{fit.objective:.6f}",
                f"{fit.grad_norm:.1e}",
                f"{weight_norm:.3f}",
                100 * train_acc,
                100 * test_acc,
            ]
        )
        records.append(
            {
                "loss": loss,
                "k": fit.options.k,
                "train_accuracy": train_acc,
                "test_accuracy": test_acc,
                "weight_norm": weight_norm,
                **fit.to_dict(),
            }
        )
    headers = ["loss", "k", "iters", "evals", "converged", "stop", "objective", "|grad F|", "|w|", "train %", "test %"]
    info, first = split.describe(), records[0]["options"]
    protocol = (
        f"{info['name']}: {info['n_train']} train / {info['n_test']} test rows, {info['n_features']} features "
        f"standardised on train, positive class {info['positive_class']!r}, stratified split seed {split.seed}; "
        f"solver {first['solver']}, l2 {first['l2']:g}, tol {first['tol']:g} on ||grad F||_2, start w = 0; "
        "objective F includes the rooted loss's constant k"
    )
    table = format_table(headers, rows, align="llrrllrrrrr")
    return {"table": table, "protocol": protocol, "dataset": info, "runs": records}
