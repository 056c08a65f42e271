"""The streaming inference path: MONAI-free, yet the values of the bundles' MONAI transforms and eager networks."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from conftest import SUBSET, subprocess_env
from PIL import Image

from bt_monai.bundle import copy_bundle, load_bundle_network, locate_bundle, torchscript_cache_file
from bt_monai.data.pixels import read_slice_pixels
from bt_monai.data.readers import SliceLoader
from bt_monai.inferers import TumorPredictor
from bt_monai.transforms import slice_preprocessing
from bt_monai.transforms.functional import percentiles, preprocess_slices


@pytest.fixture(scope="module")
def real_slices(lgg_root):
    """Eight real LGG slices of one patient, tumor and tumor-free."""
    return sorted(p for p in (lgg_root / SUBSET[2]).glob("*.tif") if not p.name.endswith("_mask.tif"))[6:14]


@pytest.fixture(scope="module")
def odd_slices(tmp_path_factory):
    """Files of every pixel layout the readers accept, at different sizes, and a constant slice."""
    folder, rng = tmp_path_factory.mktemp("odd"), np.random.default_rng(0)
    tifffile.imwrite(folder / "rgb16.tif", rng.integers(0, 4000, (100, 120, 3), np.uint16))
    tifffile.imwrite(folder / "gray16.tif", rng.integers(0, 4000, (256, 256), np.uint16))
    tifffile.imwrite(folder / "float.tif", rng.normal(100, 30, (64, 80)).astype(np.float32))
    tifffile.imwrite(folder / "gray_sample_axis.tif", rng.integers(0, 4000, (70, 50, 1), np.uint16))  # (H, W, 1)
    Image.fromarray(rng.integers(0, 255, (90, 70), np.uint8)).save(folder / "gray.png")
    Image.fromarray(rng.integers(0, 255, (90, 70, 4), np.uint8)).save(folder / "rgba.png")
    Image.fromarray(rng.integers(0, 255, (90, 70, 2), np.uint8)[..., 0], mode="L").convert("LA").save(folder / "la.png")
    Image.fromarray(rng.integers(0, 255, (50, 60, 3), np.uint8)).save(folder / "rgb.jpg", quality=90)
    Image.fromarray(np.full((40, 40), 7, np.uint8)).save(folder / "constant.png")
    return sorted(folder.iterdir())


def monai_preprocessing(paths, input_mode="all"):
    from monai.transforms import Compose

    transforms = Compose(slice_preprocessing("image", input_mode=input_mode))
    return torch.stack([transforms({"image": str(p)})["image"].as_tensor() for p in paths])


def test_pixels_are_read_as_monai_loadimage_reads_them(odd_slices, real_slices):
    loader = SliceLoader()
    for path in [*odd_slices, *real_slices]:
        np.testing.assert_array_equal(read_slice_pixels(path), loader(path).numpy(), err_msg=str(path))


def test_a_tiff_that_is_not_a_slice_is_refused_by_both_readers_naming_the_file(tmp_path):
    path = tmp_path / "volume.tif"
    tifffile.imwrite(path, np.zeros((4, 30, 20, 3), np.uint8))
    for read in (read_slice_pixels, SliceLoader()):
        with pytest.raises(
            ValueError, match=re.escape(f"{path}: expected a 2D slice, got an image of shape (4, 30, 20, 3)")
        ):
            read(path)


def test_percentiles_equal_torch_quantile_exactly():
    values = torch.rand(6, 50176) ** 8 * 255
    for q in (0.0, 1.0, 50.0, 99.9, 100.0):
        torch.testing.assert_close(
            percentiles(values, q), torch.quantile(values, torch.tensor(q / 100), dim=1), rtol=0, atol=0
        )


@pytest.mark.parametrize("input_mode", ["all", "flair"])
def test_batch_preprocessing_equals_the_bundles_monai_transforms_on_real_slices(real_slices, input_mode):
    batch = preprocess_slices([read_slice_pixels(p) for p in real_slices], input_mode)
    torch.testing.assert_close(batch, monai_preprocessing(real_slices, input_mode), rtol=0, atol=0)


def test_batch_preprocessing_equals_the_monai_transforms_for_every_layout(odd_slices):
    batch = preprocess_slices([read_slice_pixels(p) for p in odd_slices])
    torch.testing.assert_close(batch, monai_preprocessing(odd_slices), rtol=0, atol=0)


def test_the_segmentation_bundles_inference_workflow_gives_the_predictors_masks_on_real_slices(real_slices, tmp_path):
    """``monai.bundle run`` of configs/inference.json (its preprocessing and postprocessing, through SaveImaged's
    PNGs) and the predictor: the same masks, pixel for pixel, cleaning included. Plain float32 on both sides
    (bf16 autocast rounds differently in the two execution paths), every slice through the U-Net."""
    from monai.bundle import ConfigWorkflow

    folder = tmp_path / "slices"
    folder.mkdir()
    for path in real_slices:
        (folder / path.name).symlink_to(path)
    root = locate_bundle(None, "segmentation")
    workflow = ConfigWorkflow(
        config_file=str(root / "configs" / "inference.json"),
        workflow_type=None,
        bundle_root=str(root),
        dataset_dir=str(folder),
        output_dir=str(tmp_path / "bundle"),
        num_workers=0,
        amp=False,
        min_component_px=300,  # removes components of these slices: the cleaning is compared too
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    predictor = TumorPredictor.from_bundles(amp=False, fold_batch_norm=False, segment_gate=0.0, min_component_px=300)
    masks = {Path(p.path).stem: p.mask for p in predictor.predict_paths(real_slices)}
    assert 0 < sum(int(m.any()) for m in masks.values()) < len(masks)  # tumor and tumor-free slices
    for stem, mask in masks.items():
        written = np.asarray(Image.open(tmp_path / "bundle" / f"{stem}_seg.png"))
        np.testing.assert_array_equal(written > 0, mask.astype(bool), err_msg=stem)


@pytest.fixture(scope="module")
def unexported(tmp_path_factory) -> dict[str, Path]:
    """Copies of both bundles without a ``models/model.ts`` (as a fresh clone has them), by name."""
    folder = tmp_path_factory.mktemp("bundles")
    roots = {name: copy_bundle(locate_bundle(None, name), folder / name) for name in ("segmentation", "detection")}
    for root in roots.values():
        (root / "models" / "model.ts").unlink(missing_ok=True)  # a checkout may hold a ckpt_export
    return roots


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty ``BT_MONAI_CACHE_DIR`` of this test's own."""
    monkeypatch.setenv("BT_MONAI_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


# The tests write and read TorchScript files themselves, as MONAI's ckpt_export does.
JIT_FILES_DEPRECATED = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.(load|save)` is deprecated")


def exported_network_def(path: Path):
    """The ``network_def`` a TorchScript file stores (MONAI's ``ckpt_export`` way: the extra file inference.json)."""
    extra = {"inference.json": ""}
    torch.jit.load(str(path), _extra_files=extra)
    return json.loads(extra["inference.json"])["network_def"]


@JIT_FILES_DEPRECATED
def test_the_first_use_scripts_the_network_into_the_cache_and_the_next_loads_it_without_monai(
    unexported, cache, monkeypatch
):
    from monai.bundle import ConfigParser

    root = unexported["detection"]
    config = json.loads((root / "configs" / "inference.json").read_text())
    path = torchscript_cache_file(config["network_def"])
    assert path.parent == cache / "torchscript"
    network, _ = load_bundle_network(root, name="detection")
    assert isinstance(network, torch.jit.ScriptModule)
    assert exported_network_def(path) == config["network_def"]
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind
    written = path.stat().st_mtime_ns

    def no_monai(*args, **kwargs):
        raise AssertionError("MONAI built the network although the cache holds its export")

    monkeypatch.setattr(ConfigParser, "get_parsed_content", no_monai)
    again, _ = load_bundle_network(root, name="detection")
    assert isinstance(again, torch.jit.ScriptModule) and path.stat().st_mtime_ns == written
    for key, value in again.state_dict().items():
        torch.testing.assert_close(value, network.state_dict()[key], rtol=0, atol=0)


def test_the_scripted_and_the_eager_networks_give_the_same_predictions_on_real_slices(real_slices, unexported):
    scripted = TumorPredictor.from_bundles(unexported["segmentation"], unexported["detection"], fold_batch_norm=False)
    assert isinstance(scripted.segmenter, torch.jit.ScriptModule)
    eager_seg, _ = load_bundle_network(None, name="segmentation", scripted=False)
    eager_cls, _ = load_bundle_network(None, name="detection", scripted=False)
    assert not isinstance(eager_seg, torch.jit.ScriptModule)
    eager = TumorPredictor(eager_seg, eager_cls)
    for a, b in zip(scripted.predict_paths(real_slices), eager.predict_paths(real_slices), strict=True):
        assert a.tumor_probability == b.tumor_probability
        np.testing.assert_array_equal(a.mask, b.mask)


def test_an_unwritable_cache_warns_once_naming_the_folder_and_runs_the_eager_networks(
    real_slices, unexported, tmp_path, monkeypatch
):
    bundles = (unexported["segmentation"], unexported["detection"])
    scripted = TumorPredictor.from_bundles(*bundles, fold_batch_norm=False)  # the session's cache
    (tmp_path / "not_a_folder").write_text("")
    monkeypatch.setenv("BT_MONAI_CACHE_DIR", str(tmp_path / "not_a_folder"))  # a file: no folder can be made in it
    with pytest.warns(RuntimeWarning) as warned:
        eager = TumorPredictor.from_bundles(*bundles, fold_batch_norm=False)
    messages = [str(w.message) for w in warned if "TorchScript" in str(w.message)]
    assert len(messages) == 1, messages  # once, for both networks
    assert str(tmp_path / "not_a_folder" / "torchscript") in messages[0] and "BT_MONAI_CACHE_DIR" in messages[0]
    assert not isinstance(eager.segmenter, torch.jit.ScriptModule)
    assert not isinstance(eager.detector, torch.jit.ScriptModule)
    for a, b in zip(scripted.predict_paths(real_slices), eager.predict_paths(real_slices), strict=True):
        assert a.tumor_probability == b.tumor_probability
        np.testing.assert_array_equal(a.mask, b.mask)


@JIT_FILES_DEPRECATED
@pytest.mark.parametrize("export", ["bundle", "cache"])
def test_the_weights_come_from_model_pt_even_when_the_export_holds_others(export, cache, tmp_path):
    """A ``ckpt_export`` model.ts in the bundle (used first) or a cached export, holding other weights."""
    root = copy_bundle(locate_bundle(None, "detection"), tmp_path / "detection")
    (root / "models" / "model.ts").unlink(missing_ok=True)
    config = json.loads((root / "configs" / "inference.json").read_text())
    eager, _ = load_bundle_network(root, name="detection", scripted=False)
    expected = {key: value.clone() for key, value in eager.state_dict().items()}
    torch.manual_seed(0)
    stale = torch.jit.script(copy.deepcopy(eager))
    with torch.no_grad():
        for value in stale.parameters():
            value.add_(torch.randn_like(value))  # an old training run's weights
    path = root / "models" / "model.ts" if export == "bundle" else torchscript_cache_file(config["network_def"])
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(stale, str(path), _extra_files={"inference.json": json.dumps(config)})
    network, _ = load_bundle_network(root, name="detection")
    assert isinstance(network, torch.jit.ScriptModule)
    assert not (cache / "torchscript").exists() or export == "cache"  # the bundle's model.ts was used first
    for key, value in network.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0)


@JIT_FILES_DEPRECATED
def test_an_export_of_another_network_definition_or_a_broken_one_is_not_used(cache, tmp_path):
    root = copy_bundle(locate_bundle(None, "detection"), tmp_path / "detection")
    (root / "models" / "model.ts").unlink(missing_ok=True)
    config = json.loads((root / "configs" / "inference.json").read_text())
    load_bundle_network(root, name="detection")
    old = torchscript_cache_file(config["network_def"])
    (root / "models" / "model.ts").write_bytes(old.read_bytes())  # as ckpt_export of this definition writes it
    config["network_def"]["dropout"] = 0.3  # the definition changed after the exports
    (root / "configs" / "inference.json").write_text(json.dumps(config))
    new = torchscript_cache_file(config["network_def"])
    assert new != old
    # A file at the new definition's place that holds the old definition is never used, nor a truncated one.
    for stored in (old.read_bytes(), old.read_bytes()[:5000]):
        new.write_bytes(stored)
        network, _ = load_bundle_network(root, name="detection")
        assert isinstance(network, torch.jit.ScriptModule) and network.head[1].p == 0.3
        assert exported_network_def(new) == config["network_def"]  # rebuilt in its place


def test_without_scripted_the_network_is_built_with_monai_and_nothing_is_cached(cache):
    network, settings = load_bundle_network(None, name="segmentation", scripted=False, keys=("input_mode",))
    assert not isinstance(network, torch.jit.ScriptModule) and settings["input_mode"] == "all"
    assert not cache.exists()


class CountingNetwork(torch.nn.Module):
    """Wraps a network and records the batch sizes it was called with."""

    def __init__(self, network):
        super().__init__()
        self.network, self.calls = network, []

    def forward(self, x):
        self.calls.append(x.shape[0])
        return self.network(x)


def test_the_gate_skips_the_unet_on_unlikely_slices_and_leaves_the_others_as_they_were(real_slices):
    # not folded: the counting wrapper below is not TorchScript, so it would run unfolded
    ungated = list(TumorPredictor.from_bundles(fold_batch_norm=False).predict_paths(real_slices, batch_size=8))
    probabilities = sorted(p.tumor_probability for p in ungated)
    gate = (probabilities[2] + probabilities[3]) / 2  # three slices below the gate
    predictor = TumorPredictor.from_bundles(segment_gate=gate, fold_batch_norm=False)
    predictor.segmenter = CountingNetwork(predictor.segmenter)
    gated = list(predictor.predict_paths(real_slices, batch_size=8))
    assert predictor.segmenter.calls == [5]
    for a, b in zip(ungated, gated, strict=True):
        assert a.tumor_probability == b.tumor_probability
        if a.tumor_probability < gate:
            assert b.tumor_area_px == 0
        else:
            np.testing.assert_array_equal(a.mask, b.mask)


def test_a_gate_below_the_detection_threshold_changes_nothing_when_masks_are_gated(real_slices):
    masks_gated = TumorPredictor.from_bundles(gate_masks=True)
    both = TumorPredictor.from_bundles(gate_masks=True, segment_gate=masks_gated.detection_threshold)
    for a, b in zip(masks_gated.predict_paths(real_slices), both.predict_paths(real_slices), strict=True):
        np.testing.assert_array_equal(a.mask, b.mask)


def test_decoding_threads_keep_the_order_and_report_unreadable_files_in_place(real_slices, tmp_path):
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"not a tiff")
    paths = [*real_slices[:3], broken, *real_slices[3:]]
    results = {}
    for workers in (0, 2):
        events: list[tuple] = []
        predictor = TumorPredictor.from_bundles(decode_workers=workers)
        for p in predictor.predict_paths(paths, batch_size=3, on_error=lambda path, e, seen=events: seen.append(path)):
            events.append((p.path, p.tumor_probability))
        results[workers] = events
    assert results[0] == results[2]
    assert [e if isinstance(e, str) else e[0] for e in results[0]] == [str(p) for p in paths]


def test_a_caller_that_stops_early_leaves_no_decoding_thread_behind(real_slices):
    import threading
    import time

    predictor = TumorPredictor.from_bundles()
    arrays = ((str(p), read_slice_pixels(p)) for p in real_slices[:2])
    predictions = predictor.predict_arrays(arrays, batch_size=1)
    next(predictions)
    time.sleep(0.5)  # the producer has read every slice and waits to hand over the end of the iterable
    predictions.close()
    deadline = time.monotonic() + 5
    while any(t.name == "bt_monai-arrays" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name == "bt_monai-arrays" for t in threading.enumerate())


def test_inference_over_a_tiff_folder_with_a_warm_cache_never_imports_monai(real_slices, tmp_path):
    folder = tmp_path / "slices"
    folder.mkdir()
    for path in real_slices[:2]:
        shutil.copy(path, folder)
    for name in ("segmentation", "detection"):  # the first start scripts the networks into the session's cache
        load_bundle_network(None, name=name)
    code = (
        "import sys\nfrom bt_monai.__main__ import main\n"
        f"assert main(['infer', {str(folder)!r}, '--output', {str(tmp_path / 'out')!r}]) == 0\n"
        "print(sorted(m for m in ('monai', 'ignite', 'torchvision', 'scipy', 'pydicom') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(2))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert len(list((tmp_path / "out" / "masks").glob("*.png"))) == 2


def test_folding_batch_norms_changes_only_the_rounding_and_leaves_the_network_as_it_was(real_slices):
    exact = TumorPredictor.from_bundles(fold_batch_norm=False)
    folded = TumorPredictor.from_bundles(fold_batch_norm=True)
    weights = {k: v.clone() for k, v in folded.segmenter.state_dict().items()}
    for a, b in zip(exact.predict_paths(real_slices), folded.predict_paths(real_slices), strict=True):
        # bf16 rounding, not another function (0.053 seen near p = 0.5, where a probability is most sensitive)
        assert abs(a.tumor_probability - b.tumor_probability) < 0.1
        assert (a.mask == b.mask).mean() > 0.999
    assert folded.fingerprint() != exact.fingerprint()  # a resumed run never mixes the two
    for key, value in folded.segmenter.state_dict().items():  # the frozen copy runs; the network is untouched
        torch.testing.assert_close(value, weights[key], rtol=0, atol=0)
