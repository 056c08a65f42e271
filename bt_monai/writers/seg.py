"""Masks as a DICOM SEG (highdicom): binary, one "Tumor" segment, referencing the source instances."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bt_monai import __version__
from bt_monai.utils import quiet_loggers
from bt_monai.writers.derived import SourceHeaders, derived_description, derived_series_number, source_headers

if TYPE_CHECKING:
    from bt_monai.data.dicom import DicomFrame, DicomSeries

__all__ = ["ALGORITHM", "seg_bytes"]

ALGORITHM = ("bt_monai MobileNetV2 U-Net", __version__)  # (name, version) when the caller names no bundle


def _pixel_array(
    headers: dict[Path, Any], frames: list[DicomFrame], masks: list[np.ndarray]
) -> tuple[np.ndarray, list]:
    """The SEG's boolean ``(frames, rows, columns)`` array and its source datasets, one per array frame.

    Single-frame sources: one frame per mask. A multi-frame source: one frame per source frame (frames not
    predicted are empty). Raises ``ValueError`` for several multi-frame objects (one SEG references one).
    """
    multiframe = [
        h for h in headers.values() if int(h.get("NumberOfFrames") or 1) > 1 or "PerFrameFunctionalGroupsSequence" in h
    ]
    if multiframe and len(headers) > 1:
        raise ValueError(
            f"the series holds {len(headers)} objects of a multi-frame (enhanced) type: a DICOM SEG can reference "
            "only one such object (the NIfTI mask and the overlays cover the series)"
        )
    if any(f.frame is not None for f in frames):
        (header,) = headers.values()
        array = np.zeros((int(header.NumberOfFrames), frames[0].rows, frames[0].columns), dtype=bool)
        for frame, mask in zip(frames, masks, strict=True):
            array[frame.frame] = mask > 0
        return array, [header]
    return np.stack([m > 0 for m in masks]), [headers[f.path] for f in frames]


def _segment_description(algorithm: tuple[str, str]):
    """Segment 1, "Tumor": a neoplasm, found automatically by the ``algorithm`` (name, version)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Tumor",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=algorithm[0], family=codes.cid7162.ArtificialIntelligence, version=algorithm[1]
        ),
    )


def _segmentation(
    series: DicomSeries,
    headers: SourceHeaders,
    sources: list,
    array: np.ndarray,
    description,
    uids: tuple[str, str],
) -> bytes:
    """The highdicom SEG of ``array`` over ``sources``, numbered beside its source series, as file bytes."""
    import io

    import highdicom as hd

    with quiet_loggers("highdicom", "pydicom", ignore_warnings=False):
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=array,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[description],
            series_instance_uid=uids[0],
            series_number=derived_series_number(series.attributes, "seg"),  # beside its source series in viewers
            sop_instance_uid=uids[1],
            instance_number=1,
            manufacturer="bt_monai",
            manufacturer_model_name="bt_monai brain tumor segmentation",
            software_versions=__version__,
            device_serial_number="none",
            content_label="TUMOR",
            content_description="Tumor segmentation, research use only",
            contributing_equipment=headers.contributing_equipment(),  # what was derived, if anything
        )
        seg.SeriesDescription = derived_description("Tumor SEG", series.attributes, headers)
        buffer = io.BytesIO()
        seg.save_as(buffer)
    return buffer.getvalue()


def seg_bytes(
    series: DicomSeries,
    frames: list[DicomFrame],
    masks: list[np.ndarray],
    uids: tuple[str, str] | None = None,
    algorithm: tuple[str, str] = ALGORITHM,
    headers: SourceHeaders | None = None,
) -> bytes:
    """A DICOM SEG (binary, segment 1 "Tumor") of ``masks`` (``(H, W)`` 0/1, one per frame) over their sources.

    ``uids``: its (SeriesInstanceUID, SOPInstanceUID), new random ones by default; ``algorithm``: the
    (name, version) the segment names as its algorithm; ``headers``: the frames' source headers, made fit to
    be copied (:func:`~bt_monai.writers.derived.source_headers`, read here by default).

    Single-frame sources: one referenced instance per predicted slice. A multi-frame source: one frame per
    source frame (frames not predicted are empty). Empty frames are omitted (highdicom keeps them all when
    every frame is empty). Raises ``ValueError`` with the reason when no SEG can be made for this series, and
    ``ImportError`` when highdicom is not installed.
    """
    import highdicom as hd  # first: without it, say so before reading any file

    headers = headers or source_headers(frames)
    array, sources = _pixel_array(headers.datasets, frames, masks)
    uids = uids or (hd.UID(), hd.UID())
    return _segmentation(series, headers, sources, array, _segment_description(algorithm), uids)
