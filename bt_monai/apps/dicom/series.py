"""One series: every slice decoded and predicted, and its outputs written into the series' temporary folder:
the overlays, the NIfTI mask, the DICOM SEG and the DICOM SR (:func:`process_series`).

The tumor measurements are computed here, once (:func:`series_summary`): ``summary.json`` and the SR report
these values. Moving the folder into place, and reusing an earlier run's, is :mod:`.run`'s and :mod:`.resume`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bt_monai.data.dicom import DicomFrame, DicomSeries, iter_frame_pixels, to_channel_first
from bt_monai.inferers import TumorPredictor
from bt_monai.utils import atomic_write_bytes, error_summary, relative_path
from bt_monai.writers import TumorMeasurements, nifti_bytes, overlay_png, seg_bytes, source_headers, sr_bytes
from bt_monai.writers.derived import SourceHeaders

__all__ = ["NO_HIGHDICOM", "SeriesJob", "SeriesSkipped", "output_failure", "process_series", "series_summary"]

NO_HIGHDICOM = "highdicom is not installed (pip install 'bt_monai[dicom]')"


class SeriesSkipped(Exception):
    """A series that yields no output (e.g. none of its slices decodes); the message is the reason."""


@dataclass
class SeriesJob:
    """One series to predict: where its outputs go, and how its skipped slices are reported."""

    series: DicomSeries
    folder: str  # its folder's name in OUT
    temporary: Path  # where its outputs are written until they are complete
    root: Path  # the input folder, which reported paths are relative to
    skip: Callable[[str, str], None]  # skip(label, reason): record a slice left out
    progress: tqdm
    uids: dict[str, tuple[str, str]]  # "SEG" / "SR": (SeriesInstanceUID, SOPInstanceUID) of the object
    algorithm: tuple[str, str]  # (name, version) the SEG and SR name as their algorithm


def _prediction_row(job: SeriesJob, frame: DicomFrame, prediction, index: int, overlay: str) -> dict:
    """The slice's row of ``predictions.csv`` (:data:`.reports.DICOM_PREDICTION_COLUMNS`), patient cells apart."""
    return {
        "path": relative_path(frame.path, job.root),
        "tumor_probability": f"{prediction.tumor_probability:.6f}",
        "tumor": prediction.tumor,
        "tumor_area_px": prediction.tumor_area_px,
        "SeriesInstanceUID": job.series.uid,
        "SOPInstanceUID": frame.sop_instance_uid,
        "InstanceNumber": "" if frame.instance_number is None else frame.instance_number,
        "frame": "" if frame.frame is None else frame.frame + 1,
        "slice_index": index,
        "series_folder": job.folder,
        "overlay": overlay,
    }


def _predict_series(
    predictor: TumorPredictor, job: SeriesJob, batch_size: int
) -> tuple[list[DicomFrame], list[np.ndarray], list[dict]]:
    """Decode and predict every slice of the series, writing the overlays: (slices done, masks, rows)."""
    frames: dict[str, DicomFrame] = {}
    pending: dict[str, np.ndarray] = {}  # decoded pixels awaiting their prediction (for the overlays)

    def decoded() -> Iterator[tuple[str, np.ndarray]]:
        for index, (frame, pixels) in enumerate(iter_frame_pixels(job.series.frames)):
            job.progress.update()
            if isinstance(pixels, Exception):
                job.skip(frame.label, f"pixel data could not be decoded: {type(pixels).__name__}: {pixels}")
                continue
            key = str(index)
            frames[key], pending[key] = frame, pixels
            yield key, to_channel_first(pixels)

    def failed(key: str, error: Exception) -> None:
        job.skip(frames[key].label, error_summary(error))
        pending.pop(key, None)

    done: list[DicomFrame] = []
    masks: list[np.ndarray] = []
    rows: list[dict] = []
    for prediction in predictor.predict_arrays(decoded(), batch_size, on_error=failed):
        frame, pixels = frames[prediction.path], pending.pop(prediction.path)
        overlay = ""
        if prediction.tumor or prediction.tumor_area_px:
            name = f"overlays/{len(done) + 1:04d}.png"
            atomic_write_bytes(job.temporary / name, overlay_png(pixels, prediction.mask))
            overlay = f"{job.folder}/{name}"
        rows.append(_prediction_row(job, frame, prediction, len(done) + 1, overlay))
        done.append(frame)
        masks.append(prediction.mask)
    return done, masks, rows


def series_summary(predicted: DicomSeries, masks: list[np.ndarray], rows: list[dict]) -> dict:
    """The numbers of a predicted series (``predicted``: the series restricted to the slices done).

    ``masks``: one ``(H, W)`` 0/1 array per slice done; ``rows``: their ``predictions.csv`` rows. Areas are in
    pixels and mm², the volume in mm³ (None where the series has no spacing).
    """
    areas_px = [int(m.sum()) for m in masks]
    tumor_px = sum(areas_px)
    spacing, spacing_note = predicted.slice_spacing()
    pixel_spacing = predicted.pixel_spacing()
    volume = predicted.volume_mm3(tumor_px)
    largest = None if pixel_spacing is None else max(areas_px) * pixel_spacing[0] * pixel_spacing[1]
    return {
        "slices": len(rows),
        "tumor_slices": sum(int(r["tumor"]) for r in rows),
        "segmented_slices": sum(1 for a in areas_px if a),  # slices with tumor pixels
        "max_tumor_probability": round(max(float(r["tumor_probability"]) for r in rows), 6),
        "tumor_area_px": tumor_px,
        "tumor_volume_mm3": None if volume is None else round(volume, 3),
        "largest_tumor_area_mm2": None if largest is None else round(largest, 3),
        "pixel_spacing_mm": None if pixel_spacing is None else list(pixel_spacing),
        "slice_spacing_mm": None if spacing is None else round(spacing, 6),
        "ordered_by": predicted.ordered_by,
        "notes": [n for n in (spacing_note,) if n],
    }


def _write_volumes(
    job: SeriesJob, predicted: DicomSeries, masks: list[np.ndarray], summary: dict, always_seg: bool
) -> dict:
    """Write the NIfTI mask and the DICOM SEG of a predicted series; return what was written (notes added)."""
    outputs: dict = {}
    affine, affine_note = predicted.affine()
    if predicted.slice_spacing()[0] is None and len(masks) > 1:
        outputs["nifti"] = None
        summary["notes"].append("no NIfTI volume: the slices do not form one volume")
    else:
        atomic_write_bytes(job.temporary / "mask.nii.gz", nifti_bytes(masks, affine))
        outputs["nifti"] = f"{job.folder}/mask.nii.gz"
        if affine_note:
            summary["notes"].append(affine_note)
    headers = _source_headers(predicted)
    summary["header_repairs"] = [r.as_dict() for r in headers.repairs] if headers else []
    outputs["seg"] = None
    seg = None
    if summary["tumor_area_px"] or always_seg:
        try:
            seg = seg_bytes(job.series, predicted.frames, masks, job.uids["SEG"], job.algorithm, headers)
        except ImportError:
            outputs["seg_error"] = NO_HIGHDICOM
        except OSError:  # the disk or a permission, not the series: the run stops and says what to do
            raise
        except Exception as e:  # a source the SEG standard cannot reference (no slice geometry, ...)
            outputs["seg_error"] = error_summary(e)
        else:
            atomic_write_bytes(job.temporary / "seg.dcm", seg)
            outputs["seg"] = f"{job.folder}/seg.dcm"
    else:
        summary["notes"].append("no DICOM SEG: no tumor pixel found (--always-seg writes an empty one)")
    outputs.update(_write_sr(job, predicted, summary, seg, headers))
    return outputs


def _source_headers(predicted: DicomSeries) -> SourceHeaders | None:
    """The series' source headers as the SEG and SR copy them (read once for both), or None when they cannot
    be read: then each writer reads them itself and reports why it failed."""
    try:
        return source_headers(predicted.frames)
    except OSError:
        raise
    except Exception:  # ImportError (no highdicom) included: the writers name it
        return None


def _write_sr(
    job: SeriesJob, predicted: DicomSeries, summary: dict, seg: bytes | None, headers: SourceHeaders | None
) -> dict:
    """Write the series' measurement report (the numbers of ``summary``); return its output entries."""
    values = TumorMeasurements(
        summary["tumor_volume_mm3"], summary["segmented_slices"], summary["largest_tumor_area_mm2"]
    )
    try:
        report = sr_bytes(job.series, predicted.frames, values, seg, job.uids["SR"], job.algorithm, headers)
    except ImportError:
        return {"sr": None, "sr_error": NO_HIGHDICOM}
    except OSError:
        raise
    except Exception as e:  # a source the SR cannot reference
        return {"sr": None, "sr_error": error_summary(e)}
    atomic_write_bytes(job.temporary / "sr.dcm", report)
    return {"sr": f"{job.folder}/sr.dcm"}


def output_failure(outputs: dict) -> str | None:
    """Why a series processed failed (its SEG or SR could not be written), or None.

    Not a failure: no SEG because no tumor pixel was found (a finding), nor because highdicom is not installed
    (an optional extra, said in a warning).
    """
    for kind, key in (("DICOM SEG", "seg_error"), ("DICOM SR", "sr_error")):
        if outputs.get(key) and outputs[key] != NO_HIGHDICOM:
            return f"no {kind}: {outputs[key]}"
    return None


def process_series(
    predictor: TumorPredictor, job: SeriesJob, batch_size: int, always_seg: bool
) -> tuple[dict, list[dict]]:
    """Predict every slice of the series and write its outputs into ``job.temporary``: (summary, rows).

    The summary is the series' entry of ``summary.json`` (:func:`series_summary`, plus its ``outputs``); rows
    are its rows of ``predictions.csv``. Raises :class:`SeriesSkipped` when no slice could be decoded.
    """
    done, masks, rows = _predict_series(predictor, job, batch_size)
    if not done:
        raise SeriesSkipped("no slice of this series could be decoded (reasons in skipped.csv)")
    predicted = job.series.with_frames(done)
    summary = series_summary(predicted, masks, rows)
    overlays = sum(1 for r in rows if r["overlay"])
    summary["outputs"] = {"overlays": overlays, **_write_volumes(job, predicted, masks, summary, always_seg)}
    return summary, rows
