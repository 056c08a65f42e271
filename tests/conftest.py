"""Shared fixtures: the real LGG slices (never skipped in CI), a tiny synthetic dataset, small file writers and
the bundle training command."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
LGG_DIR = Path(os.environ.get("BT_MONAI_LGG_DIR", REPO.parent / "shared" / "data" / "lgg" / "kaggle_3m"))
# Three patients with 20 slices each: enough for discovery, alignment and a few training steps.
SUBSET = ("TCGA_CS_4942_19970222", "TCGA_CS_4943_20000902", "TCGA_CS_5393_19990606")


def _require_real_data() -> Path:
    if LGG_DIR.is_dir():
        return LGG_DIR
    msg = f"real LGG data not found at {LGG_DIR} (set BT_MONAI_LGG_DIR)"
    if os.environ.get("BT_MONAI_REQUIRE_DATA"):
        pytest.fail(msg + "; BT_MONAI_REQUIRE_DATA is set, so this is an error, not a skip")
    pytest.skip(msg)


@pytest.fixture(scope="session", autouse=True)
def torchscript_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``BT_MONAI_CACHE_DIR`` for the whole session: a fresh folder, so the TorchScript exports the bundles make on
    first use (:func:`bt_monai.bundle.torchscript_cache_file`) never go to the user's ``~/.cache``; the child
    processes of the tests inherit it. A test that checks the cache itself sets its own (monkeypatch)."""
    folder = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BT_MONAI_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(scope="session")
def lgg_root() -> Path:
    """The full kaggle_3m folder (62 patients)."""
    return _require_real_data()


@pytest.fixture(scope="session")
def lgg_subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kaggle_3m-style folder linking three real patients."""
    root = _require_real_data()
    subset = tmp_path_factory.mktemp("lgg_subset")
    for patient in SUBSET:
        (subset / patient).symlink_to(root / patient, target_is_directory=True)
    return subset


@pytest.fixture(scope="session")
def pacs_tools() -> dict[str, str]:
    """Orthanc, its DICOMweb plugin and dciodvfy (Debian: orthanc, orthanc-dicomweb, dicom3tools); never skipped
    in CI (BT_MONAI_REQUIRE_PACS=1)."""
    plugins = [Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"), Path("/usr/lib/orthanc/libOrthancDicomWeb.so")]
    tools = {
        "orthanc": shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin"),
        "plugin": next((str(p) for p in plugins if p.is_file()), None),
        "dciodvfy": shutil.which("dciodvfy"),
    }
    missing = [name for name, path in tools.items() if not path]
    if missing:
        msg = f"{', '.join(missing)} not found (apt-get install orthanc orthanc-dicomweb dicom3tools; .ci/run does)"
        if os.environ.get("BT_MONAI_REQUIRE_PACS"):
            pytest.fail(msg + "; BT_MONAI_REQUIRE_PACS is set, so this is an error, not a skip")
        pytest.skip(msg)
    return tools


def write_mr_dicom(path: Path, pixels: np.ndarray, **attributes) -> Path:
    """Write a single-frame MR image (``pixels``: (rows, cols) uint16 or int16) with pydicom."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "MR"
    ds.PatientID = "TEST"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    ds.PixelSpacing = [0.9375, 0.9375]
    ds.ImagePositionPatient = [0.0, 0.0, 0.0]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    for key, value in attributes.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def tumor_slice(root: Path, patient: str = SUBSET[0]) -> tuple[Path, Path]:
    """The real slice of ``patient`` whose tumor centroid lies furthest from the image centre."""
    import tifffile

    best, best_offset = None, -1.0
    for mask in sorted((root / patient).glob("*_mask.tif")):
        m = tifffile.imread(mask)
        if m.any():
            rows, cols = np.nonzero(m)
            offset = float(np.hypot(rows.mean() - m.shape[0] / 2, cols.mean() - m.shape[1] / 2))
            if offset > best_offset:
                best, best_offset = mask, offset
    assert best is not None
    return best.with_name(best.name.replace("_mask", "")), best


@pytest.fixture(scope="session")
def weight_args(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """CLI options giving both networks seeded random weights (no trained weights needed)."""
    from bt_monai.networks import MobileNetV2Classifier, MobileNetV2UNet

    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    torch.save(MobileNetV2UNet().state_dict(), folder / "seg.pt")
    torch.save(MobileNetV2Classifier().state_dict(), folder / "cls.pt")
    return ["--segmentation-weights", str(folder / "seg.pt"), "--detection-weights", str(folder / "cls.pt")]


# A tiny synthetic kaggle_3m dataset for whole training runs: with TINY_SPLIT, 3 training patients (18 slices,
# 5 iterations of batch 4 per epoch), 1 validation and 1 test patient.
TINY_SPLIT = ("--val_fraction", "0.2", "--test_fraction", "0.2")


@pytest.fixture(scope="session")
def tiny_kaggle3m(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 synthetic patients x 6 slices of 64x64 (the dataset of tests/test_bundles.py)."""
    from bt_monai.data import make_synthetic_kaggle3m

    return make_synthetic_kaggle3m(tmp_path_factory.mktemp("tiny") / "kaggle_3m", 5, 6, size=64, seed=1)


def bundle_training_command(root: Path, dataset: Path, *options: str) -> list[str]:
    """``python -m monai.bundle run training`` of the bundle copy at ``root`` on ``dataset``, small and fast.

    64x64 inputs, batch 4, no DataLoader workers, TINY_SPLIT; ``options`` (e.g. ``--max_epochs 3``) come last.
    Logs go to stdout (the bundle's logging.conf), one line per iteration: ``Epoch: e/E, Iter: i/I -- ...``.
    """
    configs = root / "configs"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--bundle_root", str(root)]
    cmd += ["--config_file", str(configs / "train.json"), "--meta_file", str(configs / "metadata.json")]
    cmd += ["--logging_file", str(configs / "logging.conf"), "--dataset_dir", str(dataset)]
    cmd += ["--spatial_size", "[64,64]", "--batch_size", "4", "--num_workers", "0", *TINY_SPLIT]
    return cmd + list(options)


class BrightSegmenter(torch.nn.Module):
    """A stand-in U-Net with a known answer: tumor logits where the input is brighter than 0.6 (no weights)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.mean(1, keepdim=True) - 0.6) * 40


class BrightDetector(torch.nn.Module):
    """A stand-in detector: a tumor when more than 3% of the slice is brighter than 0.6."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.mean(1) > 0.6).float().mean((1, 2)) - 0.03)[:, None] * 400


def subprocess_env(threads: int = 1) -> dict[str, str]:
    """The environment for a child Python: ``threads`` intra-op threads (no oversubscription beside pytest)."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
