"""docs/models_and_data.md states the fake data set's split sizes; they are the sizes create_dataset returns."""

from __future__ import annotations

import re
from pathlib import Path

from losslab.data import create_dataset
from losslab.data.spec import FAKE_OPTIONS

DOC = Path(__file__).resolve().parents[2] / "docs" / "models_and_data.md"


def test_the_documented_fake_split_sizes_are_the_real_ones() -> None:
    (row,) = [line for line in DOC.read_text().splitlines() if line.startswith("| `fake` |")]
    match = re.search(r"split (\d+) train \+ (\d+) val at `val_fraction` 0\.1, and `num_samples` \((\d+)\) test", row)
    assert match, row
    train, val, test = map(int, match.groups())
    assert (train, val, test) == tuple(len(create_dataset("fake", split)) for split in ("train", "val", "test"))
    assert train + val == FAKE_OPTIONS["num_samples"] == test
