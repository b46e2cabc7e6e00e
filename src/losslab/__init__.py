"""losslab: which training choices make a network survive compression, and what is the best way to compress it.

Subpackages: ``objectives`` (loss zoo), ``regularizers``, ``layers`` (factorized layers), ``models``, ``data``,
``train``, ``quant`` (post-training quantization), ``lm`` (causal language models), ``study``, ``report``, ``cli``.
"""

__version__ = "0.1.0"
