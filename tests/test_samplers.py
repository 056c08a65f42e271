"""Tumor-slice over-sampling for training epochs."""

from __future__ import annotations

import pytest
import torch

from bt_monai.data import TumorSliceSampler, tumor_slice_weights

ENTRIES = [{"tumor": int(i < 30)} for i in range(100)]  # 30% tumor slices


def test_weights_make_tumor_slices_the_asked_share_of_draws():
    weights = tumor_slice_weights(ENTRIES, 0.6)
    tumor = torch.tensor([e["tumor"] for e in ENTRIES], dtype=torch.bool)
    assert float(weights[tumor].sum() / weights.sum()) == pytest.approx(0.6)
    assert torch.all(weights[~tumor] == 1)


@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.3])
def test_a_share_the_data_already_have_leaves_sampling_uniform(fraction):
    assert torch.equal(tumor_slice_weights(ENTRIES, fraction), torch.ones(100, dtype=torch.double))


def test_the_sampler_draws_an_epoch_of_the_dataset_size_with_that_share():
    torch.manual_seed(0)
    drawn = list(TumorSliceSampler(ENTRIES * 20, tumor_fraction=0.5))
    assert len(drawn) == 2000
    share = sum(ENTRIES[i % 100]["tumor"] for i in drawn) / len(drawn)
    assert 0.46 < share < 0.54


def test_entries_without_the_tumor_flag_are_named():
    with pytest.raises(KeyError, match="datalist entry 1 has no 'tumor'"):
        tumor_slice_weights([{"tumor": 1}, {"image": "x.tif"}], 0.5)


def test_a_fraction_of_one_is_refused():
    with pytest.raises(ValueError, match=r"tumor_fraction must be in \[0, 1\)"):
        tumor_slice_weights(ENTRIES, 1.0)
