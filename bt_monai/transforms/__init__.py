"""MONAI transforms for 2D MRI slices: array versions, dictionary versions and the preprocessing presets."""

from bt_monai.utils.lazy import lazy_exports

_EXPORTS = {
    "AUGMENTATION": "bt_monai.transforms.functional",
    "AugmentationRanges": "bt_monai.transforms.functional",
    "DEFAULT_INPUT_MODE": "bt_monai.transforms.functional",
    "FLAIR_CHANNEL": "bt_monai.transforms.functional",
    "INPUT_MODES": "bt_monai.transforms.functional",
    "UPPER_PERCENTILE": "bt_monai.transforms.functional",
    "SPATIAL_SIZE": "bt_monai.transforms.functional",
    "BinarizeMask": "bt_monai.transforms.array",
    "BinarizeMaskd": "bt_monai.transforms.dictionary",
    "GrayscaleToRGB": "bt_monai.transforms.array",
    "GrayscaleToRGBd": "bt_monai.transforms.dictionary",
    "LoadSlice": "bt_monai.transforms.array",
    "LoadSliced": "bt_monai.transforms.dictionary",
    "ProbabilityToMaskd": "bt_monai.transforms.dictionary",
    "RandBatchAugment": "bt_monai.transforms.batch",
    "RandSequenceDropout": "bt_monai.transforms.array",
    "RandSequenceDropoutd": "bt_monai.transforms.dictionary",
    "ReformatToAxiald": "bt_monai.transforms.volume",
    "RemoveSmallComponents": "bt_monai.transforms.array",
    "RemoveSmallComponentsd": "bt_monai.transforms.dictionary",
    "ResizeSlice": "bt_monai.transforms.array",
    "ResizeSliced": "bt_monai.transforms.dictionary",
    "ScalePercentiles": "bt_monai.transforms.array",
    "ScalePercentilesd": "bt_monai.transforms.dictionary",
    "SelectInputChannels": "bt_monai.transforms.array",
    "SelectInputChannelsd": "bt_monai.transforms.dictionary",
    "SlicewisePreprocessd": "bt_monai.transforms.volume",
    "SlicewiseToMaskd": "bt_monai.transforms.volume",
    "axial_plan_from_meta": "bt_monai.transforms.volume",
    "preprocess_slices": "bt_monai.transforms.functional",
    "probability_to_mask": "bt_monai.transforms.functional",
    "slice_preprocessing": "bt_monai.transforms.presets",
    "train_augmentations": "bt_monai.transforms.presets",
}

__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
