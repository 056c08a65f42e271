"""Networks: the MobileNetV2 encoder's stages, the U-Net, the classifier, pretrained weights, freezing, export."""

from __future__ import annotations

from urllib.error import URLError

import pytest
import torch
import torchvision
from monai.networks.nets import FlexibleUNet
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE

from bt_monai.networks import (
    MobileNetV2Classifier,
    MobileNetV2Encoder,
    MobileNetV2UNet,
    PretrainedWeightsError,
    hub_cache_file,
)


@pytest.fixture(scope="module")
def imagenet_like_state(tmp_path_factory):
    """A torchvision mobilenet_v2 state dict written by the test (stands in for ImageNet weights)."""
    torch.manual_seed(123)
    model = torchvision.models.mobilenet_v2(weights=None)
    path = tmp_path_factory.mktemp("weights") / "mobilenet_v2.pth"
    torch.save(model.state_dict(), path)
    return path, model.state_dict()


@pytest.mark.parametrize("size", [224, 256])
def test_encoder_stages_have_the_documented_channels_and_strides(size):
    outputs = MobileNetV2Encoder()(torch.zeros(1, 3, size, size))
    assert [o.shape[1] for o in outputs] == [16, 24, 32, 96, 1280]
    assert [size // o.shape[-1] for o in outputs] == [2, 4, 8, 16, 32]


def test_encoder_is_registered_as_a_monai_flexible_unet_backbone():
    assert FLEXUNET_BACKBONE.register_dict["mobilenet_v2"]["feature_channel"] == (16, 24, 32, 96, 1280)
    net = FlexibleUNet(in_channels=3, out_channels=1, backbone="mobilenet_v2")
    assert net(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 64, 64)


@pytest.mark.parametrize("size", [(224, 224), (200, 176)])
def test_unet_returns_one_logit_map_of_the_input_size(size):
    assert MobileNetV2UNet().eval()(torch.zeros(2, 3, *size)).shape == (2, 1, *size)


def test_classifier_returns_one_logit_per_image():
    assert MobileNetV2Classifier().eval()(torch.zeros(2, 3, 224, 224)).shape == (2, 1)


@pytest.mark.parametrize("cls", [MobileNetV2UNet, MobileNetV2Classifier])
def test_pretrained_from_a_local_file_loads_the_encoder(cls, imagenet_like_state):
    path, state = imagenet_like_state
    net = cls(pretrained=str(path))
    for key, value in net.encoder.features.state_dict().items():
        assert torch.equal(value, state[f"features.{key}"]), key


def test_pretrained_true_reads_torchvisions_hub_cache(imagenet_like_state, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path, state = imagenet_like_state
    cached = hub_cache_file(torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1)
    assert str(cached).startswith(str(tmp_path))
    cached.parent.mkdir(parents=True)
    cached.write_bytes(path.read_bytes())
    net = MobileNetV2UNet(pretrained=True)
    assert torch.equal(net.encoder.features[0][0].weight, state["features.0.0.weight"])


def test_pretrained_offline_names_the_file_to_place_and_how_to_turn_it_off(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(PretrainedWeightsError) as err:
        MobileNetV2Classifier(pretrained=True)
    message = str(err.value)
    assert str(tmp_path / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth") in message
    assert "pretrained=False" in message


def test_pretrained_missing_local_file_is_a_clear_error(tmp_path):
    with pytest.raises(PretrainedWeightsError, match="not found.*pretrained=False"):
        MobileNetV2UNet(pretrained=str(tmp_path / "missing.pth"))


def test_trained_classifier_weights_initialise_the_unet_encoder(tmp_path):
    classifier = MobileNetV2Classifier()
    torch.save(classifier.state_dict(), tmp_path / "detector.pt")
    unet = MobileNetV2UNet(pretrained=str(tmp_path / "detector.pt"))
    assert torch.equal(unet.encoder.features[5].conv[0][0].weight, classifier.encoder.features[5].conv[0][0].weight)


@pytest.mark.parametrize("cls", [MobileNetV2UNet, MobileNetV2Classifier])
def test_frozen_encoder_gets_no_updates_and_keeps_its_batchnorm_statistics(cls):
    net = cls(freeze_encoder=True).train()
    before = {k: v.clone() for k, v in net.encoder.state_dict().items()}
    net(torch.rand(2, 3, 64, 64)).mean().backward()
    assert all(p.grad is None for p in net.encoder.parameters())
    assert any(p.grad is not None for n, p in net.named_parameters() if not n.startswith("encoder."))
    assert all(torch.equal(v, net.encoder.state_dict()[k]) for k, v in before.items())
    assert not net.encoder.training and net.training


@pytest.mark.parametrize("cls", [MobileNetV2UNet, MobileNetV2Classifier])
def test_torchscript_export_matches_eager(cls):
    torch.manual_seed(0)
    net, x = cls().eval(), torch.rand(2, 3, 224, 224)
    scripted = torch.jit.script(net)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))


@pytest.mark.parametrize("cls", [MobileNetV2UNet, MobileNetV2Classifier])
def test_torch_export_matches_eager(cls):
    torch.manual_seed(0)
    net, x = cls().eval(), torch.rand(2, 3, 224, 224)
    exported = torch.export.export(net, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), net(x))


@pytest.mark.parametrize("cls", [MobileNetV2UNet, MobileNetV2Classifier])
def test_freeze_encoder_given_as_text_is_refused_not_read_as_true(cls):
    # `monai.bundle run ... --freeze_encoder false` arrives as the string "false".
    with pytest.raises(TypeError, match="freeze_encoder must be True or False, got 'false'"):
        cls(freeze_encoder="false")
