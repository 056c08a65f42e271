"""``python -m bt_monai infer DICOM_FOLDER`` / ``infer URL --study UID``: both models over the chosen MR series
of a DICOM export or of studies on a DICOMweb server, optionally storing the results back (STOW-RS).

Outputs under OUT (see the README's "DICOM input" and "PACS (DICOMweb)"):

- ``OUT/<series folder>/seg.dcm``: a DICOM SEG (highdicom, binary, one "Tumor" segment) referencing the source
  instances; written when a tumor pixel was found, or always with ``always_seg``;
- ``OUT/<series folder>/sr.dcm``: a DICOM SR (TID 1500 measurement report: tumor volume, slices, largest
  area), always written (no tumor is a finding too), referencing the SEG when there is one;
- ``OUT/<series folder>/mask.nii.gz``: the mask as a ``(W, H, D)`` uint8 NIfTI volume with the series' affine;
- ``OUT/<series folder>/overlays/<slice>.png``: the slice with its tumor in red, for each tumor slice;
- ``OUT/<series folder>/series.json``: what was done for the series (written last: the "done" marker);
- ``OUT/predictions.csv`` (one row per slice), ``OUT/summary.json`` (per series), ``OUT/skipped.csv``;
- DICOMweb input: ``OUT/.dicomweb/studies/<study>/series/<series>/instances/<sop>``, the retrieved instances
  (:mod:`bt_monai.data.dicom.dicomweb`), processed exactly as a folder.

One module per step; they orchestrate: DICOM is read by :mod:`bt_monai.data.dicom`, the formats are written by
:mod:`bt_monai.writers`.

- :mod:`.folder`: :func:`infer_dicom`, the entry point for a folder, a DICOMDIR or one file;
- :mod:`.dicomweb`: :func:`infer_dicomweb`, the entry point for studies on a DICOMweb server (QIDO-RS, WADO-RS);
- :mod:`.run`: what both entry points share: the start and the finish of a run, each series in turn (reused or
  predicted), and :class:`DicomRunSummary`;
- :mod:`.series`: one series: its slices predicted, its outputs written into its temporary folder;
- :mod:`.naming`: series folder names in OUT (:func:`series_folder_name`);
- :mod:`.resume`: resumable output: a series' slices digest, the reuse key, the SEG and SR UIDs derived from
  it (:func:`object_uids`), the ``series.json`` marker;
- :mod:`.reports`: ``predictions.csv``, ``summary.json``, ``skipped.csv`` (:func:`read_predictions`);
- :mod:`.store`: storing the SEG and SR back into their studies (STOW-RS), without duplicates.

The SEG and SR copy their source's patient, study and series attributes through one rule
(:func:`bt_monai.writers.derived.source_headers`: values that break their VR are repaired, dropped or derived,
and ``summary.json`` lists each change); a series whose SEG or SR still cannot be written is a failure of the
run (``status`` "failed", ``skipped.csv``, exit status 1), and a re-run tries it again.

The series processed are chosen by :func:`bt_monai.data.dicom.choose_series` (FLAIR by default). The SEG and SR
get UIDs derived from the source series, its slices and the predictor's fingerprint, so the same inputs,
weights and settings give the same objects, and storing them again creates no duplicate.

Safety: series folder names come from DICOM attributes through :func:`bt_monai.utils.safe_name`, so no
value can leave OUT; a series is written into a temporary folder and renamed into place when complete, so an
interrupted run leaves no half-written output; inputs are never modified nor overwritten (OUT may be INPUT:
this tool's outputs are never read back as inputs); a re-run reuses the series already done with the same
slices and the same predictor (:meth:`bt_monai.inferers.TumorPredictor.fingerprint`).

Importing this package is cheap (names load on first use); :mod:`bt_monai.apps.dicom_input` decides whether an
input is DICOM without loading any of it.
"""

from bt_monai.utils.lazy import lazy_exports

_EXPORTS = {
    "DICOM_PREDICTION_COLUMNS": "bt_monai.apps.dicom.reports",
    "PATIENT_COLUMNS": "bt_monai.apps.dicom.reports",
    "DicomRunSummary": "bt_monai.apps.dicom.run",
    "infer_dicom": "bt_monai.apps.dicom.folder",
    "infer_dicomweb": "bt_monai.apps.dicom.dicomweb",
    "looks_like_dicom_input": "bt_monai.apps.dicom_input",
    "object_uids": "bt_monai.apps.dicom.resume",
    "read_predictions": "bt_monai.apps.dicom.reports",
    "series_folder_name": "bt_monai.apps.dicom.naming",
}

__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
