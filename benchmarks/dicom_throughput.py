"""End-to-end DICOM folder inference against the bare models, measured side by side in one run.

A synthetic MR series is written to a temporary folder from real LGG slices (the FLAIR channel as 16-bit
MONOCHROME2, with PixelSpacing, ImagePositionPatient, ...; optionally compressed), then timed:

- bare models: both networks (the predictor's U-Net and detector) called directly on the series' preprocessed
  tensors, same batch size, precision and memory format: the ceiling;
- end to end: ``bt_monai.apps.dicom.infer_dicom`` on the folder (scan, decode, preprocess, both models, masks,
  DICOM SEG, NIfTI, PNG overlays, reports), as ``python -m bt_monai infer`` runs it;
- and, to see where the rest goes, the scan alone, the decoding alone and decoding + preprocessing.

``--weights shipped`` (the default) runs the shipped models, as ``bt-monai infer`` does: the detector gates the
U-Net (``segment_gate``) and only tumor slices get overlays and SEG frames. ``--weights random``: a random U-Net
marks tumor on every slice and a random detector gates nothing, so every slice gets an overlay and the SEG holds
every frame (the writing cost at its worst). The bare models run both networks on every slice either way.
Goal: end to end at least 85% of the bare models.
Run: ``.venv/bin/python benchmarks/dicom_throughput.py [--slices 64] [--compress rle] [--weights random]``.
Numbers depend on the machine and its load: compare the ratio measured in one run, on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from bt_monai.apps.dicom import infer_dicom
from bt_monai.data import discover_kaggle3m, make_synthetic_kaggle3m
from bt_monai.data.dicom import iter_frame_pixels, scan_dicom_folder, to_channel_first
from bt_monai.inferers import TumorPredictor, cpu_supports_bf16, run_network
from bt_monai.networks import MobileNetV2Classifier, MobileNetV2UNet

REPO = Path(__file__).resolve().parents[1]
SYNTAXES = {"none": None, "rle": "RLELossless", "jpeg2000": "JPEG2000Lossless", "jpeg-ls": "JPEGLSLossless"}


def write_series(folder: Path, images: list[np.ndarray], compression: str | None) -> None:
    """One MR series of ``images`` ((rows, cols) uint16), 5 mm apart, with pydicom."""
    import pydicom.uid
    from pydicom.dataset import FileDataset, FileMetaDataset

    folder.mkdir(parents=True)
    series, study, frame_of_reference = (pydicom.uid.generate_uid() for _ in range(3))
    for k, pixels in enumerate(images):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = pydicom.uid.MRImageStorage
        meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"IM{k:05d}"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_reference
        ds.Modality, ds.PatientID, ds.PatientName, ds.SeriesNumber, ds.InstanceNumber = "MR", "BENCH", "", 1, k + 1
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelSpacing, ds.SliceThickness = [0.9375, 0.9375], 5.0
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [-120.0, -120.0, 5.0 * k], [1, 0, 0, 0, 1, 0]
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        if compression:
            ds.compress(getattr(pydicom.uid, compression))
        ds.save_as(folder / f"IM{k:05d}", enforce_file_format=True)


def flair_slices(data: Path, n: int, size: int) -> list[np.ndarray]:
    """``n`` real FLAIR channels (uint8 -> uint16 x 257), resized to ``size`` when it is not 256."""
    import tifffile
    from PIL import Image

    if not data.is_dir():
        data = make_synthetic_kaggle3m(Path(tempfile.mkdtemp()) / "kaggle_3m", max(1, n // 16 + 1), 16, size=256)
    images = []
    for record in discover_kaggle3m(data)[:n]:
        flair = tifffile.imread(record.image)[..., 1]
        if flair.shape != (size, size):
            flair = np.asarray(Image.fromarray(flair).resize((size, size), Image.BILINEAR))
        images.append(flair.astype(np.uint16) * 257)
    return images


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "lgg" / "kaggle_3m"))
    parser.add_argument("--slices", type=int, default=64, help="slices in the series (64)")
    parser.add_argument("--size", type=int, default=256, help="rows = columns of each slice (256)")
    parser.add_argument("--compress", choices=sorted(SYNTAXES), default="none", help="transfer syntax of the files")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7, help="timed runs of each row (7)")
    parser.add_argument("--weights", choices=("shipped", "random"), default="shipped")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=r"Divide by zero \(a_min == a_max\)")  # blank slices, as the CLI does

    torch.manual_seed(0)
    dtype = torch.bfloat16 if cpu_supports_bf16() else None
    if args.weights == "shipped":
        predictor = TumorPredictor.from_bundles(amp=dtype is not None)
    else:
        predictor = TumorPredictor(MobileNetV2UNet(), MobileNetV2Classifier(), amp=dtype is not None)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "series"
        write_series(src, flair_slices(Path(args.data), args.slices, args.size), SYNTAXES[args.compress])
        n = len(list(src.iterdir()))

        def scan():
            return scan_dicom_folder(src)

        def decode():
            return [pixels for _, pixels in iter_frame_pixels(scan().series[0].frames)]

        def preprocess():
            return predictor.inputs([predictor.prepare(to_channel_first(p)) for p in decode()])

        tensors = preprocess()
        networks = [predictor.segmenter, predictor.detector]

        @torch.no_grad()
        def bare():
            with torch.jit.optimized_execution(False):  # as the predictor runs a TorchScript export
                for start in range(0, n, args.batch_size):
                    for network in networks:
                        run_network(network, tensors[start : start + args.batch_size], dtype, channels_last=True)

        def end_to_end():
            infer_dicom(predictor, src, Path(tmp) / "out", overwrite=True, batch_size=args.batch_size)

        bare()  # warm-up
        end_to_end()
        rows = [
            ("scan (headers only)", n / median_time(scan, args.repeats)),
            ("scan + decode", n / median_time(decode, args.repeats)),
            ("scan + decode + preprocess", n / median_time(preprocess, args.repeats)),
        ]
        # Alternating pairs: a drift in the machine's speed hits both sides of each ratio alike.
        pairs = [(median_time(bare, 1), median_time(end_to_end, 1)) for _ in range(args.repeats)]
        rows += [
            ("bare models (both networks, preprocessed tensors)", n / statistics.median(b for b, _ in pairs)),
            ("end to end: infer_dicom (all outputs written)", n / statistics.median(e for _, e in pairs)),
        ]
        ratios = sorted(b / e for b, e in pairs)
    precision = "bf16 autocast + channels-last" if dtype else "fp32 + channels-last"
    setup = f"{precision}, batch {args.batch_size}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs"
    print(f"\nbt_monai DICOM throughput: {n} slices of {args.size}x{args.size}, compression {args.compress}, {setup}")
    print(f"{'what':<56}{'slices/s':>10}")
    for name, rate in rows:
        print(f"{name:<56}{rate:>10.1f}")
    spread = f"{ratios[0]:.2f}-{ratios[-1]:.2f}"
    print(
        f"weights: {args.weights}; end to end / bare models: {statistics.median(ratios):.2f} "
        f"(median of {len(ratios)} alternating pairs, {spread}; goal: at least 0.85)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
