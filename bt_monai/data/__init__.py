"""Data layer: slice readers, dataset discovery, the patient-level datalist, samplers and DICOM (``dicom/``)."""

from bt_monai.data.datalist import (
    SPLITS,
    check_split_sizes,
    datalist_entry,
    load_or_make_datalist,
    make_datalist,
    patients_in_split,
    split_patients,
    write_datalist,
)
from bt_monai.data.dicom import DicomSliceReader
from bt_monai.data.discovery import (
    DatasetError,
    SliceRecord,
    discover_images,
    discover_kaggle3m,
    is_mask_file,
    mask_has_tumor,
    mask_path_for,
)
from bt_monai.data.readers import NiftiSliceReader, SliceLoader, TiffReader, slice_format
from bt_monai.data.samplers import TumorSliceSampler, tumor_slice_weights
from bt_monai.data.synthetic import make_synthetic_kaggle3m

__all__ = [
    "SPLITS",
    "DatasetError",
    "DicomSliceReader",
    "NiftiSliceReader",
    "SliceLoader",
    "SliceRecord",
    "check_split_sizes",
    "TiffReader",
    "TumorSliceSampler",
    "datalist_entry",
    "discover_images",
    "discover_kaggle3m",
    "is_mask_file",
    "load_or_make_datalist",
    "make_synthetic_kaggle3m",
    "make_datalist",
    "mask_has_tumor",
    "mask_path_for",
    "patients_in_split",
    "slice_format",
    "split_patients",
    "tumor_slice_weights",
    "write_datalist",
]
