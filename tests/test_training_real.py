"""A few optimisation steps on real slices lower the loss of both networks (BCE, the original design's)."""

from __future__ import annotations

import pytest
import torch
from monai.data import Dataset, list_data_collate
from monai.transforms import Compose

from bt_monai.data import discover_kaggle3m
from bt_monai.networks import MobileNetV2Classifier, MobileNetV2UNet
from bt_monai.transforms import slice_preprocessing


@pytest.fixture(scope="module")
def real_batch(lgg_subset):
    records = discover_kaggle3m(lgg_subset)
    tumor = [r for r in records if r.tumor][:4]
    clear = [r for r in records if not r.tumor][:4]
    data = [{"image": r.image, "label": r.mask, "tumor": float(r.tumor)} for r in tumor + clear]
    batch = list_data_collate(list(Dataset(data, Compose(slice_preprocessing("image", "label")))))
    return batch["image"].as_tensor(), batch["label"].as_tensor(), batch["tumor"].float()[:, None]


def fit(net: torch.nn.Module, inputs: torch.Tensor, target: torch.Tensor, steps: int) -> list[float]:
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    losses = []
    net.train()
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_fn(net(inputs), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.real_data
def test_segmentation_loss_falls_on_real_slices(real_batch):
    images, masks, _ = real_batch
    torch.manual_seed(0)
    losses = fit(MobileNetV2UNet(), images, masks, steps=8)
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.real_data
def test_detection_loss_falls_on_real_slices(real_batch):
    images, _, tumor = real_batch
    torch.manual_seed(0)
    losses = fit(MobileNetV2Classifier(), images, tumor, steps=8)
    assert losses[-1] < 0.7 * losses[0], losses
