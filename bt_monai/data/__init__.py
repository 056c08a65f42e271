"""Data layer: slice readers, dataset discovery, patient-level and per-site datalists, samplers, DICOM (``dicom/``)."""

from bt_monai.utils.lazy import lazy_exports

_EXPORTS = {
    "SPLITS": "bt_monai.data.datalist",
    "DatasetError": "bt_monai.data.discovery",
    "DicomSliceReader": "bt_monai.data.dicom",
    "NiftiSliceReader": "bt_monai.data.readers",
    "SliceLoader": "bt_monai.data.readers",
    "SITE_SPLITS": "bt_monai.data.sites",
    "SliceRecord": "bt_monai.data.discovery",
    "check_split_sizes": "bt_monai.data.datalist",
    "TiffReader": "bt_monai.data.readers",
    "TumorSliceSampler": "bt_monai.data.samplers",
    "datalist_entry": "bt_monai.data.datalist",
    "discover_images": "bt_monai.data.discovery",
    "discover_kaggle3m": "bt_monai.data.discovery",
    "institution_of": "bt_monai.data.sites",
    "is_mask_file": "bt_monai.data.discovery",
    "load_truth_mask": "bt_monai.data.discovery",
    "load_or_make_datalist": "bt_monai.data.datalist",
    "make_synthetic_kaggle3m": "bt_monai.data.synthetic",
    "make_datalist": "bt_monai.data.datalist",
    "mask_has_tumor": "bt_monai.data.discovery",
    "mask_path_for": "bt_monai.data.discovery",
    "patients_in_split": "bt_monai.data.datalist",
    "read_datalist": "bt_monai.data.datalist",
    "site_datalists": "bt_monai.data.sites",
    "slice_format": "bt_monai.data.readers",
    "split_patients": "bt_monai.data.datalist",
    "tumor_slice_weights": "bt_monai.data.samplers",
    "write_datalist": "bt_monai.data.datalist",
    "write_site_datalists": "bt_monai.data.sites",
}

__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
