"""The compression workflows above ``train``, ``quant`` and ``lm``: what a command or a study job calls.

* :mod:`losslab.compress.trained_run` — :class:`TrainedRun`: load a trained classifier run with its own data
  settings, calibrate, evaluate, quantize (``quant`` never imports ``train``; this layer joins them);
* :mod:`losslab.compress.quantize_run` — :func:`quantize_run`: every (method, bits) point of a run, packed,
  tabulated and written to JSON (``losslab quantize``);
* :mod:`losslab.compress.evaluate_run` — :func:`evaluate_run`: accuracy of a run, packed file or timm checkpoint
  (``losslab evaluate``; its flags are :class:`EvaluateConfig`'s fields);
* :mod:`losslab.compress.lm_quantize` — :func:`lm_quantize`: a causal LM quantized layer by layer per width (or
  under a budget, :mod:`losslab.compress.lm_budget`), packed and written (``losslab lm quantize``);
* :mod:`losslab.compress.budget` — :func:`quantize_run_budget`: widths chosen per layer under a stored-bits
  budget (``losslab quantize --budget``), with the Pareto figure.
"""
