"""Method configs: validation at construction, registry names, labels."""

from __future__ import annotations

import pytest
import torch

from losslab.errors import ConfigError, LosslabError
from losslab.quant.gpfq import GPFQStats
from losslab.quant.gptq import HessianStats
from losslab.quant.methods import GPFQ, GPTQ, LDLQ, PWLQ, QUANT_METHODS, RTN, Identity16, method_from_name


@pytest.mark.parametrize(
    ("factory", "field"),
    [
        (lambda: RTN(bits=9), "bits"),
        (lambda: RTN(bits=1), "bits"),
        (lambda: RTN(bits=4.0), "bits"),
        (lambda: RTN(bits=4, grid="log"), "grid"),
        (lambda: RTN(bits=4, group_size=0), "group_size"),
        (lambda: RTN(bits=4, clip="none"), "clip"),
        (lambda: PWLQ(bits=4, breakpoint="cauchy"), "breakpoint"),
        (lambda: GPFQ(bits=4, scalar=0.0), "scalar"),
        (lambda: GPTQ(bits=4, percdamp=-0.1), "percdamp"),
        (lambda: GPTQ(bits=4, blocksize=0), "blocksize"),
        (lambda: GPTQ(bits=4, incoherence="dct"), "incoherence"),
        (lambda: LDLQ(bits=3, npasses=-1), "npasses"),
        (lambda: LDLQ(bits=3, order="random"), "order"),
        (lambda: GPTQ(bits=3, grid="quip", group_size=8), "group_size"),
        (lambda: PWLQ(bits=4, breakpoint=0.7), "breakpoint"),
        (lambda: Identity16(bits=8), "bits"),
    ],
)
def test_bad_values_name_the_field(factory, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        factory()


def test_stats_kinds() -> None:
    assert not RTN(bits=4).needs_data and not PWLQ(bits=4).needs_data
    assert RTN(bits=4).new_stats(3, torch.device("cpu")) is None
    for m in (GPTQ(bits=4), LDLQ(bits=4)):  # H from the partly quantized network only
        assert (m.reads_float, m.reads_quantized) == (False, True)
        assert isinstance(m.new_stats(3, torch.device("cpu")).finalize(), HessianStats)
    assert (GPFQ(bits=4).reads_float, GPFQ(bits=4).reads_quantized) == (True, True)
    assert isinstance(GPFQ(bits=4).new_stats(3, torch.device("cpu")).finalize(), GPFQStats)
    assert GPFQ(bits=4, legacy_unfold=True, fresh_batch_per_layer=True).legacy_unfold


def test_registry_and_labels() -> None:
    assert set(QUANT_METHODS.names()) == {"rtn", "pwlq", "gpfq", "gptq", "ldlq"}  # what users are offered
    assert method_from_name("identity16").name == "identity16"  # the internal reference still builds by name
    with pytest.raises(LosslabError) as err:
        method_from_name("nope")
    assert "identity16" not in str(err.value) and "gptq" in str(err.value)
    method = method_from_name("GPTQ", bits=3, act_order=True)
    assert method == GPTQ(bits=3, act_order=True)
    assert method.describe() == "GPTQ(bits=3, act_order=True)"
    assert method_from_name("optq", bits=4) == GPTQ(bits=4)
    with pytest.raises(LosslabError, match="choose one of"):
        method_from_name("awq", bits=4)
    with pytest.raises(ConfigError, match="bad option"):
        method_from_name("rtn", bits=4, nonsense=1)
