"""Tumor measurements as a DICOM Structured Report (highdicom): TID 1500 Measurement Report, Comprehensive 3D SR.

One measurement group per series, with the tumor volume (mm³), the number of slices with tumor pixels and the
largest tumor area of one slice (mm², SNOMED CT "Area" with derivation "Maximum"), made by the named algorithm
(the segmentation bundle). With a SEG, the group is a TID 1411 volumetric ROI group referencing segment 1 of
the SEG and, through it, the source images; without one (no tumor found: a finding too), a TID 1501 group
with the measurements 0 referencing the source images. The report's evidence lists the source instances
(and the SEG), and it keeps their patient and study modules, as the standard requires.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bt_monai import __version__
from bt_monai.utils import derived_uid, quiet_loggers
from bt_monai.writers.derived import SourceHeaders, derived_description, derived_series_number, source_headers
from bt_monai.writers.seg import ALGORITHM

if TYPE_CHECKING:
    from bt_monai.data.dicom import DicomFrame, DicomSeries

__all__ = ["TumorMeasurements", "sr_bytes"]

# No standard concept for "number of slices with tumor": a private code ("99" schemes are private by definition).
_PRIVATE_SCHEME = "99BTMONAI"


def _private_scheme():
    """The Coding Scheme Identification item of :data:`_PRIVATE_SCHEME`."""
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodingSchemeDesignator = _PRIVATE_SCHEME
    item.CodingSchemeName = "bt_monai private codes"
    item.CodingSchemeResponsibleOrganization = "bt_monai"
    return item


@dataclass(frozen=True)
class TumorMeasurements:
    """The numbers an SR reports for one series (the same as its ``summary.json`` entry).

    ``volume_mm3``: tumor volume (None when the spacing is unknown: then not reported); ``tumor_slices``:
    slices with at least one tumor pixel; ``largest_area_mm2``: the tumor area of the slice with the most.
    """

    volume_mm3: float | None
    tumor_slices: int
    largest_area_mm2: float | None


def _measurements(values: TumorMeasurements, algorithm_id) -> list:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    slices_concept = hd.sr.CodedConcept("TUMORSLICES", _PRIVATE_SCHEME, "Number of slices with tumor")
    slices_unit = hd.sr.CodedConcept("{slices}", "UCUM", "slices")
    found = [
        hd.sr.Measurement(codes.SCT.Volume, values.volume_mm3, codes.UCUM.CubicMillimeter, algorithm_id=algorithm_id)
        if values.volume_mm3 is not None
        else None,
        hd.sr.Measurement(slices_concept, values.tumor_slices, slices_unit, algorithm_id=algorithm_id),
        hd.sr.Measurement(
            codes.SCT.Area,
            values.largest_area_mm2,
            codes.UCUM.SquareMillimeter,
            derivation=codes.SCT.Maximum,
            algorithm_id=algorithm_id,
        )
        if values.largest_area_mm2 is not None
        else None,
    ]
    return [m for m in found if m is not None]


def _group(values: TumorMeasurements, sources: list, seg, uids: tuple[str, str], algorithm_id):
    """The TID 1411 group (with a SEG) or TID 1501 group (without one) of the series' measurements."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    tracking = hd.sr.TrackingIdentifier(uid=derived_uid(uids[1], "tracking"), identifier="Tumor")
    measurements = _measurements(values, algorithm_id)
    common = {
        "tracking_identifier": tracking,
        "finding_type": codes.SCT.Neoplasm,
        "finding_category": codes.SCT.MorphologicallyAbnormalStructure,
        "algorithm_id": algorithm_id,
        "measurements": measurements,
    }
    if seg is None:
        images = [hd.sr.SourceImageForMeasurementGroup(s.SOPClassUID, s.SOPInstanceUID) for s in sources]
        return hd.sr.MeasurementsAndQualitativeEvaluations(source_images=images, **common)
    segment = hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID,
        sop_instance_uid=seg.SOPInstanceUID,
        segment_number=1,
        source_images=[hd.sr.SourceImageForSegmentation(s.SOPClassUID, s.SOPInstanceUID) for s in sources],
    )
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(referenced_segment=segment, **common)


def sr_bytes(
    series: DicomSeries,
    frames: list[DicomFrame],
    values: TumorMeasurements,
    seg: bytes | None,
    uids: tuple[str, str] | None = None,
    algorithm: tuple[str, str] = ALGORITHM,
    headers: SourceHeaders | None = None,
) -> bytes:
    """A Comprehensive 3D SR (TID 1500) of ``values`` for the series' predicted ``frames``, as file bytes.

    ``seg``: the series' DICOM SEG (file bytes) when one was written, referenced by the measurements;
    ``uids``: the report's (SeriesInstanceUID, SOPInstanceUID), new random ones by default; ``algorithm``:
    (name, version) of what made the measurements; ``headers``: the frames' source headers, made fit to be
    copied (:func:`~bt_monai.writers.derived.source_headers`, read here by default). Raises ``ImportError``
    without highdicom.
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    uids = uids or (hd.UID(), hd.UID())
    headers = headers or source_headers(frames)
    sources = list(headers.datasets.values())
    seg_ds = None if seg is None else pydicom.dcmread(io.BytesIO(seg), stop_before_pixels=True)
    algorithm_id = hd.sr.AlgorithmIdentification(name=algorithm[0], version=algorithm[1])
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=derived_uid("bt_monai device", algorithm[0], algorithm[1]),
        name=algorithm[0],
        manufacturer_name="bt_monai",
        model_name=f"bt_monai {__version__}",
    )
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(codes.DCM.Device, device),
    )
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=[_group(values, sources, seg_ds, uids, algorithm_id)],
        title=codes.DCM.ImagingMeasurementReport,
    )
    with quiet_loggers("highdicom", "pydicom", ignore_warnings=False):
        sr = hd.sr.Comprehensive3DSR(
            evidence=sources + ([seg_ds] if seg_ds is not None else []),
            content=report,
            series_instance_uid=uids[0],
            series_number=derived_series_number(series.attributes, "sr"),  # beside its source (and its SEG)
            sop_instance_uid=uids[1],
            instance_number=1,
            manufacturer="bt_monai",
            is_complete=True,
            contributing_equipment=headers.contributing_equipment(("StudyInstanceUID",)),  # the SR has no FoR
        )
        sr.CodingSchemeIdentificationSequence = [_private_scheme()]  # a "99" scheme is declared where it is used
        sr.SeriesDescription = derived_description("Tumor measurements", series.attributes, headers)
        buffer = io.BytesIO()
        sr.save_as(buffer)
    return buffer.getvalue()
