"""Logistic regression with the logistic or rooted (RLO) loss: an experiment package beside ``gan/`` and ``seq2seq/``.

- :mod:`losslab.logreg.model`: the objective and its solvers (:func:`fit_logistic_regression`).
- :mod:`losslab.logreg.fits`: the fits of ``losslab logreg`` on one split (a table, records, the protocol).
- :mod:`losslab.logreg.config`: :class:`LogregConfig`, the command's typed config (its flags), and ``run_config``.
- :mod:`losslab.logreg.sweep`: the k × λ × data sets × seeds sweep of ``losslab logreg sweep``, written into a run
  folder of the shared runtime (:mod:`losslab.runs`: lock, marker, ``--resume``, ``--overwrite``).

This package was ``losslab.objectives.logistic_regression`` and ``losslab.objectives.logreg_sweep`` before; the
objectives layer holds only losses now (``rooted_logistic`` stays there). Importing the package loads no torch (the
CLI's ``--help`` stays fast); the names below load :mod:`losslab.logreg.model` on first use.
"""

from losslab.lazy import lazy_exports

__getattr__ = lazy_exports(
    __name__, dict.fromkeys(("LogisticFit", "LogisticObjective", "fit_logistic_regression"), "losslab.logreg.model")
)

__all__ = ["LogisticFit", "LogisticObjective", "fit_logistic_regression"]
