"""Out-of-range class ids are refused with a message naming the range, by every objective (CPU: every call;
modules: also their first batch wherever it lives, instead of a device-side assert)."""

from __future__ import annotations

import pytest
import torch

from losslab.errors import LosslabError
from losslab.objectives import create, list_objectives
from losslab.objectives.logit_rows import check_targets


@pytest.mark.parametrize("name", list_objectives())
@pytest.mark.parametrize("bad", [5, -1])
def test_every_objective_refuses_out_of_range_targets(name: str, bad: int) -> None:
    loss = create(name)
    with pytest.raises(LosslabError, match=r"class ids in \[0, 5\)"):
        loss(torch.randn(4, 5), torch.tensor([0, 1, bad, 2]))


@pytest.mark.parametrize("name", list_objectives())
def test_ignore_index_and_valid_ids_pass(name: str) -> None:
    value = create(name)(torch.randn(4, 5), torch.tensor([0, 4, -100, 2]))
    assert torch.isfinite(value)


def test_module_checks_only_its_first_batch() -> None:
    loss = create("ce")
    assert not loss.targets_checked
    loss(torch.randn(2, 3), torch.tensor([0, 2]))
    assert loss.targets_checked  # later batches skip the check (no host sync per step on a GPU)


def test_check_targets_names_the_values() -> None:
    with pytest.raises(LosslabError, match="from 0 to 12"):
        check_targets(torch.tensor([0, 12]), 10, -100)
