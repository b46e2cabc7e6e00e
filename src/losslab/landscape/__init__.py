"""Loss-landscape probes of a trained model: Hessian spectrum, trace, spectral density, per-layer curvature,
sharpness, weight shape and loss-surface pictures (docs/landscape.md).

    from losslab.landscape import HessianOperator, ProbeSettings, run_probes
    op = HessianOperator(model.eval(), loss_fn, batches)     # loss averaged over the whole probe set
    result = run_probes(op, ProbeSettings(probes=("eig", "trace")))

Every probe is a function of (operator = model, loss, batches; seed), so any network can use it. Importing the
package loads no torch (its names load on first use), so ``losslab landscape``'s flags, generated from
:class:`losslab.landscape.options.LandscapeOptions`, are checked before torch is imported.
"""

from losslab.lazy import lazy_exports

_WHERE = {
    **dict.fromkeys(("HessianOperator", "NonFiniteLossError", "select_parameters"), "losslab.landscape.operator"),
    **dict.fromkeys(("PROBES", "ProbeSettings", "parse_probes", "run_probes"), "losslab.landscape.probes"),
    **dict.fromkeys(("sharpness",), "losslab.landscape.sharpness_probe"),
    **dict.fromkeys(("lanczos_eigenvalues", "spectral_density"), "losslab.landscape.spectrum"),
    **dict.fromkeys(("loss_line", "loss_plane"), "losslab.landscape.surface"),
    **dict.fromkeys(("hutch_plus_plus", "hutchinson"), "losslab.landscape.trace"),
}  # fmt: skip
__getattr__ = lazy_exports(__name__, _WHERE)

__all__ = sorted(_WHERE)
