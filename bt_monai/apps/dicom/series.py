"""One series: every slice decoded and predicted, and its outputs written into the series' temporary folder:
the overlays, the NIfTI mask, the DICOM SEG and the DICOM SR (:func:`process_series`).

The path a series takes is decided first (:func:`series_plan`, the rule of :mod:`bt_monai.transforms.reformat`):
an axial series (within ``axial_tolerance_deg``) is predicted slice by slice as acquired; a sagittal, coronal
or oblique one is resampled to axial slices, predicted there, and its probabilities mapped back onto its own
images and thresholded there, so every output stays in the source series' geometry and references its
instances. A reformatted image's ``tumor_probability`` (and ``tumor_score``) is the highest tumor probability of its
pixels (those mapped back), and ``tumor`` says whether its mask has a pixel: such an image has no detector
probability of its own.

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
from bt_monai.inferers import PredictorSettings, SlicePrediction, TumorPredictor
from bt_monai.transforms.reformat import AxialPlan, not_reformatted, plan_axial, to_axial, to_source
from bt_monai.utils import atomic_write_bytes, error_summary, relative_path
from bt_monai.writers import TumorMeasurements, nifti_bytes, overlay_png, seg_bytes, source_headers, sr_bytes
from bt_monai.writers.derived import SourceHeaders

__all__ = [
    "NO_HIGHDICOM",
    "SeriesJob",
    "SeriesSkipped",
    "output_failure",
    "process_series",
    "series_plan",
    "series_summary",
]

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
    plan: AxialPlan | None = None  # the path it takes (None: decided by process_series)


def series_plan(series: DicomSeries, settings: PredictorSettings, volume: np.ndarray | None = None) -> AxialPlan:
    """How ``series`` is predicted: as acquired, or reformatted to axial slices (:func:`plan_axial`; ``volume``,
    its decoded ``(C, W, H, D)`` pixels, places the axial slices on the head of a wide series).

    A series without the geometry to resample (no ImageOrientationPatient or ImagePositionPatient, slices
    sharing a position, uneven slice spacing) is predicted as acquired; the plan's reason says why.
    """
    first = series.frames[0]
    if first.orientation is None or any(f.position is None for f in series.frames):
        return not_reformatted(
            "no ImageOrientationPatient / ImagePositionPatient: its plane is unknown, predicted as acquired "
            "(masks are poor if it is not axial)"
        )
    affine, _ = series.affine()
    spacing, note = series.slice_spacing()
    if len(series.frames) > 1 and (spacing is None or (note or "").startswith("uneven")):
        plan = plan_axial(affine, (first.columns, first.rows, len(series.frames)), settings.axial_tolerance_deg)
        if plan.reformat:
            return not_reformatted(
                f"{plan.plane} series, {note}: cannot be resampled, predicted as acquired", plan.plane, plan.angle_deg
            )
        return plan
    return plan_axial(
        affine,
        (first.columns, first.rows, len(series.frames)),
        settings.axial_tolerance_deg,
        settings.reformat_pixel_mm,
        settings.reformat_slice_mm,
        settings.reformat_min_slices,
        volume=volume,
    )


def _prediction_row(job: SeriesJob, frame: DicomFrame, prediction, index: int, overlay: str) -> dict:
    """The slice's row of ``predictions.csv`` (:data:`.reports.DICOM_PREDICTION_COLUMNS`), patient cells apart."""
    return {
        "path": relative_path(frame.path, job.root),
        "tumor_probability": f"{prediction.tumor_probability:.6f}",
        "tumor_score": f"{prediction.tumor_score:.6f}",
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


def _record(
    job: SeriesJob,
    frame: DicomFrame,
    pixels: np.ndarray,
    prediction: SlicePrediction,
    done: list,
    masks: list,
    rows: list,
) -> None:
    """Write a predicted slice's overlay (when it shows tumor) and add it to the slices done."""
    overlay = ""
    if prediction.tumor or prediction.tumor_area_px:
        name = f"overlays/{len(done) + 1:04d}.png"
        atomic_write_bytes(job.temporary / name, overlay_png(pixels, prediction.mask))
        overlay = f"{job.folder}/{name}"
    rows.append(_prediction_row(job, frame, prediction, len(done) + 1, overlay))
    done.append(frame)
    masks.append(prediction.mask)


def _decoded(job: SeriesJob, frames: dict, pending: dict) -> Iterator[tuple[str, np.ndarray]]:
    """Decode the series' slices in order, keeping each frame and its pixels under a key; failures skipped."""
    for index, (frame, pixels) in enumerate(iter_frame_pixels(job.series.frames)):
        job.progress.update()
        if isinstance(pixels, Exception):
            job.skip(frame.label, f"pixel data could not be decoded: {type(pixels).__name__}: {pixels}")
            continue
        key = str(index)
        frames[key], pending[key] = frame, pixels
        yield key, to_channel_first(pixels)


def _predict_as_acquired(
    predictor: TumorPredictor,
    job: SeriesJob,
    batch_size: int,
    decoded: Iterator | None = None,
    frames: dict | None = None,
    pending: dict | None = None,
) -> tuple[list[DicomFrame], list[np.ndarray], list[dict]]:
    """Decode and predict every slice of the series, writing the overlays: (slices done, masks, rows)."""
    frames = {} if frames is None else frames
    pending = {} if pending is None else pending  # decoded pixels awaiting their prediction (for the overlays)
    decoded = _decoded(job, frames, pending) if decoded is None else decoded

    def failed(key: str, error: Exception) -> None:
        job.skip(frames[key].label, error_summary(error))
        pending.pop(key, None)

    done: list[DicomFrame] = []
    masks: list[np.ndarray] = []
    rows: list[dict] = []
    for prediction in predictor.predict_arrays(decoded, batch_size, on_error=failed):
        _record(job, frames[prediction.path], pending.pop(prediction.path), prediction, done, masks, rows)
    return done, masks, rows


def _predict_reformatted(
    predictor: TumorPredictor, job: SeriesJob, batch_size: int
) -> tuple[list[DicomFrame], list[np.ndarray], list[dict]]:
    """Decode the whole series, resample it to axial slices, predict them, map the probabilities back onto the
    series' grid and threshold there: (slices done, masks, rows), as :func:`_predict_as_acquired`."""
    frames: dict[str, DicomFrame] = {}
    pending: dict[str, np.ndarray] = {}
    images = dict(_decoded(job, frames, pending))  # key -> (C, W, H), in slice order
    if not images:
        return [], [], []
    if len(images) < len(job.series.frames):  # slices lost: decide again on those left
        job.plan = series_plan(job.series.with_frames(list(frames.values())), predictor.settings)
        if not job.plan.reformat:
            return _predict_as_acquired(predictor, job, batch_size, iter(images.items()), frames, pending)
    volume = np.stack(list(images.values()), axis=-1)  # (C, W, H, D)
    job.plan = plan = series_plan(job.series.with_frames(list(frames.values())), predictor.settings, volume)
    axial = to_axial(volume, plan)
    del volume
    slices = ((str(k), axial[..., k]) for k in range(axial.shape[-1]))
    maps = [p.probabilities.T for p in predictor.predict_probabilities(slices, batch_size)]  # each (W', H')
    del axial
    probabilities = to_source(np.stack(maps, axis=-1)[None], plan)[0].numpy()  # (W, H, D)
    done: list[DicomFrame] = []
    masks: list[np.ndarray] = []
    rows: list[dict] = []
    for k, key in enumerate(images):
        values = probabilities[..., k]
        mask = np.ascontiguousarray((values >= predictor.threshold).T.astype(np.uint8))
        prediction = SlicePrediction(key, float(values.max()), mask, predictor.threshold)
        _record(job, frames[key], pending.pop(key), prediction, done, masks, rows)
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
        "max_tumor_score": round(max(float(r["tumor_score"]) for r in rows), 6),
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
    if job.plan is None:
        job.plan = series_plan(job.series, predictor.settings)
    predict = _predict_reformatted if job.plan.reformat else _predict_as_acquired
    done, masks, rows = predict(predictor, job, batch_size)
    if not done:
        raise SeriesSkipped("no slice of this series could be decoded (reasons in skipped.csv)")
    predicted = job.series.with_frames(done)
    summary = series_summary(predicted, masks, rows)
    summary["geometry"] = job.plan.as_dict()
    if job.plan.plane is None:
        summary["notes"].append(f"warning: {job.plan.reason}")
    overlays = sum(1 for r in rows if r["overlay"])
    summary["outputs"] = {"overlays": overlays, **_write_volumes(job, predicted, masks, summary, always_seg)}
    return summary, rows
