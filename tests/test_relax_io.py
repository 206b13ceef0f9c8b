"""websd.relax_io: the weights of a build, picked from a model's by the build's names."""

from __future__ import annotations

import numpy as np
import pytest

from websd.relax_io import select_weights


def test_select_weights_in_the_builds_order_with_column_blocks() -> None:
    table = np.arange(24, dtype=np.float32).reshape(4, 6)
    bias = np.ones(3, np.float32)
    names = ["bias", "emb.weight[:, 0:4]", "emb.weight[:, 4:6]"]
    selected = select_weights({"emb.weight": table, "bias": bias}, names)
    assert list(selected) == names
    assert selected["bias"] is bias
    np.testing.assert_array_equal(selected["emb.weight[:, 0:4]"], table[:, 0:4])
    np.testing.assert_array_equal(selected["emb.weight[:, 4:6]"], table[:, 4:6])
    assert selected["emb.weight[:, 4:6]"].flags.c_contiguous  # written to a tensor cache as is


def test_select_weights_names_a_missing_parameter() -> None:
    with pytest.raises(KeyError, match="'other'"):
        select_weights({"emb.weight": np.zeros((2, 2))}, ["other[:, 0:1]"])
