"""AutocastInferer: float32 outputs close to plain float32 inference, metadata kept."""

from __future__ import annotations

import torch
from monai.data import MetaTensor

from bt_monai.inferers import AutocastInferer
from bt_monai.networks import MobileNetV2UNet


def test_autocast_output_is_float32_close_to_fp32_and_keeps_metadata():
    torch.manual_seed(0)
    net = MobileNetV2UNet().eval()
    x = MetaTensor(torch.rand(2, 3, 64, 64), meta={"filename_or_obj": "a.tif"})
    with torch.no_grad():
        reference = AutocastInferer(enabled=False, channels_last=False)(x, net)
        fast = AutocastInferer(enabled=True, dtype=torch.bfloat16, channels_last=True)(
            x, net.to(memory_format=torch.channels_last)
        )
    assert fast.dtype == torch.float32 and fast.shape == (2, 1, 64, 64)
    assert isinstance(fast, MetaTensor) and fast.meta["filename_or_obj"] == "a.tif"
    probability_gap = (torch.sigmoid(fast) - torch.sigmoid(reference)).abs().max()
    assert probability_gap < 0.05


def test_disabled_autocast_is_exact_float32():
    torch.manual_seed(0)
    net = MobileNetV2UNet().eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(AutocastInferer(enabled=False, channels_last=False)(x, net), net(x))
    assert AutocastInferer(enabled=False).autocast_dtype("cpu") is None
