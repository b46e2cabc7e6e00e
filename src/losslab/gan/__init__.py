"""GAN training with the logistic or rooted non-saturating loss, its metrics and the StyleGAN2-ADA loss drop-in.

    from losslab.gan import GanConfig, train_gan
    result = train_gan(GanConfig(data="ring", loss="rooted", k=2.0, epochs=10, out_dir="gan_runs"))
    result.metrics   # ring: hq_rate, modes_covered, mmd2; digits: digits_fd, precision, recall, ...

CLI: ``losslab gan train`` / ``losslab gan sweep``; docs/gan.md. Modules: ``config`` (GanConfig), ``data``
(mixtures, image tensors, the shuffled batches), ``models`` (DCGAN and MLP pairs), ``train`` (the GAN task of the
plain loop, run folder, resume), ``metrics``, ``sweep`` (loss × k × seeds), ``stylegan2`` (a StyleGAN2Loss-shaped
class with the rooted terms).
"""

from losslab.gan.config import GanConfig
from losslab.lazy import lazy_exports

__getattr__ = lazy_exports(__name__, dict.fromkeys(("GanResult", "GanTask", "train_gan"), "losslab.gan.train"))

__all__ = ["GanConfig", "GanResult", "GanTask", "train_gan"]
