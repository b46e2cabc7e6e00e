"""Loss-landscape probes of a trained model: Hessian spectrum, trace, spectral density, per-layer curvature,
sharpness, weight shape and loss-surface pictures (docs/landscape.md).

    from losslab.landscape import HessianOperator, ProbeSettings, run_probes
    op = HessianOperator(model.eval(), loss_fn, batches)     # loss averaged over the whole probe set
    result = run_probes(op, ProbeSettings(probes=("eig", "trace")))

Every probe is a function of (operator = model, loss, batches; seed), so any network can use it.
"""

from losslab.landscape.operator import HessianOperator, NonFiniteLossError, select_parameters
from losslab.landscape.probes import PROBES, ProbeSettings, parse_probes, run_probes
from losslab.landscape.sharpness import sharpness
from losslab.landscape.spectrum import lanczos_eigenvalues, spectral_density
from losslab.landscape.surface import loss_line, loss_plane
from losslab.landscape.trace import hutch_plus_plus, hutchinson

__all__ = [
    "PROBES",
    "HessianOperator",
    "NonFiniteLossError",
    "ProbeSettings",
    "hutch_plus_plus",
    "hutchinson",
    "lanczos_eigenvalues",
    "loss_line",
    "loss_plane",
    "parse_probes",
    "run_probes",
    "select_parameters",
    "sharpness",
    "spectral_density",
]
