"""A volume written as a DICOM MR series with its geometry, in any plane: how the tests and benchmarks build the
sagittal, coronal, oblique and thin-slice series of one real patient (:func:`write_volume_series`,
:func:`reslice`).

Volumes are MONAI's ``(W, H, D)`` (first axis = image column) with a 4x4 RAS affine, as
:meth:`bt_monai.data.dicom.DicomSeries.affine` reads them back.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

__all__ = ["axial_affine", "reslice", "write_volume_series"]


def axial_affine(pixel_mm: float = 0.9375, slice_mm: float = 5.0, size: int = 256) -> np.ndarray:
    """The RAS affine of an axial ``(size, size, D)`` volume as our DICOM exports hold one: ImageOrientationPatient
    ``1\\0\\0\\0\\1\\0``, the first pixel at LPS ``(-120, -120, 0)`` for 256 pixels of 0.9375 mm."""
    half = (size - 1) * pixel_mm / 2 + pixel_mm / 2
    lps = np.array([[pixel_mm, 0, 0, -half], [0, pixel_mm, 0, -half], [0, 0, slice_mm, 0], [0, 0, 0, 1.0]])
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _rotation_x(degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])


def reslice(
    volume: np.ndarray, affine: np.ndarray, plane: str, degrees: float = 20.0, slice_mm: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The voxels of an axial ``(W, H, D)`` volume in another plane: ``(volume, affine)``.

    ``plane``: ``sagittal`` (one image per column: rows head to foot, columns anterior to posterior) or
    ``coronal`` (one image per row: rows head to foot, columns right to left), the same voxels exactly;
    ``oblique`` (axial slices tilted ``degrees`` about the left-right axis, through the volume's centre) and
    ``thin`` (axial, ``slice_mm`` apart, default 1 mm), resampled trilinearly (MONAI).
    """
    volume = np.asarray(volume)
    w, h, d = volume.shape
    if plane == "sagittal":  # S[c, r, s] = A[s, c, D-1-r]
        permute = np.array([[0, 0, 1, 0], [1, 0, 0, 0], [0, -1, 0, d - 1], [0, 0, 0, 1.0]])
        return np.ascontiguousarray(volume.transpose(1, 2, 0)[:, ::-1, :]), affine @ permute
    if plane == "coronal":  # C[c, r, s] = A[c, s, D-1-r]
        permute = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, d - 1], [0, 0, 0, 1.0]])
        return np.ascontiguousarray(volume.transpose(0, 2, 1)[:, ::-1, :]), affine @ permute
    from bt_monai.transforms.reformat import resample_volume

    target = np.array(affine, float)
    shape = (w, h, d)
    if plane == "oblique":
        centre = affine @ np.array([(w - 1) / 2, (h - 1) / 2, (d - 1) / 2, 1.0])
        target[:3, :3] = _rotation_x(degrees) @ affine[:3, :3]
        target[:3, 3] = centre[:3] - target[:3, :3] @ np.array([(w - 1) / 2, (h - 1) / 2, (d - 1) / 2])
    elif plane == "thin":
        step = slice_mm or 1.0
        ratio = float(np.linalg.norm(affine[:3, 2])) / step
        target[:3, 2] = affine[:3, 2] / ratio
        shape = (w, h, int(math.floor((d - 1) * ratio + 1e-6)) + 1)
    else:
        raise ValueError(f"plane must be sagittal, coronal, oblique or thin, got {plane!r}")
    out = resample_volume(volume[None].astype(np.float32), affine, target, shape, "bilinear", "zeros")[0].numpy()
    return out, target


def write_volume_series(folder: str | os.PathLike, volume: np.ndarray, affine: np.ndarray, **attributes) -> dict:
    """Write a ``(W, H, D)`` volume (uint16 or int16, or values rounded to uint16) as one MR series, one image
    per index along D, with ImageOrientationPatient, ImagePositionPatient and PixelSpacing from the RAS
    ``affine``. ``attributes`` set or override header values (e.g. StudyInstanceUID, SeriesDescription).

    Returns the series' UIDs and its images' SOPInstanceUIDs and paths, in D order.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    volume = np.asarray(volume)
    if volume.dtype.kind == "f":
        volume = np.clip(np.rint(volume), 0, 65535).astype(np.uint16)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, float)
    column_step, row_step = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    orientation = [*(lps[:3, 0] / column_step), *(lps[:3, 1] / row_step)]
    series = {
        "StudyInstanceUID": attributes.pop("StudyInstanceUID", None) or generate_uid(),
        "SeriesInstanceUID": attributes.pop("SeriesInstanceUID", None) or generate_uid(),
        "FrameOfReferenceUID": attributes.pop("FrameOfReferenceUID", None) or generate_uid(),
    }
    uids, paths = [], []
    for k in range(volume.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"IM{k + 1:04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID, ds.PatientName = "MR", "LGG-TEST", "Test^Patient"
        ds.PatientBirthDate, ds.PatientSex, ds.StudyDate, ds.StudyTime = "", "O", "20000101", "120000"
        ds.ReferringPhysicianName, ds.AccessionNumber, ds.StudyID = "", "", "1"
        ds.Manufacturer, ds.SeriesNumber, ds.SeriesDescription = "bt_monai test export", 1, "FLAIR"
        for key, value in series.items():
            setattr(ds, key, value)
        pixels = np.ascontiguousarray(volume[:, :, k].T)  # (rows, columns)
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 8 * pixels.dtype.itemsize
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = int(pixels.dtype.kind == "i")
        ds.PixelSpacing = [round(float(row_step), 6), round(float(column_step), 6)]
        ds.SliceThickness = round(float(np.linalg.norm(lps[:3, 2])), 6)
        ds.ImageOrientationPatient = [round(float(v), 8) for v in orientation]
        ds.ImagePositionPatient = [round(float(v), 6) for v in (lps @ np.array([0, 0, k, 1.0]))[:3]]
        ds.InstanceNumber = k + 1
        for key, value in attributes.items():
            setattr(ds, key, value)
        ds.PixelData = pixels.tobytes()
        ds.save_as(str(path), enforce_file_format=True)
        uids.append(ds.SOPInstanceUID)
        paths.append(path)
    return {**series, "sop_uids": uids, "paths": paths}
