"""MONAI transforms for 2D MRI slices: array versions, dictionary versions and the preprocessing presets."""

from bt_monai.transforms.array import (
    DEFAULT_INPUT_MODE,
    FLAIR_CHANNEL,
    INPUT_MODES,
    BinarizeMask,
    GrayscaleToRGB,
    LoadSlice,
    RandSequenceDropout,
    RemoveSmallComponents,
    SelectInputChannels,
)
from bt_monai.transforms.batch import RandBatchAugment
from bt_monai.transforms.dictionary import (
    BinarizeMaskd,
    GrayscaleToRGBd,
    LoadSliced,
    RandSequenceDropoutd,
    RemoveSmallComponentsd,
    SelectInputChannelsd,
)
from bt_monai.transforms.presets import SPATIAL_SIZE, slice_preprocessing, train_augmentations
from bt_monai.transforms.volume import SlicewisePreprocessd, SlicewiseToMaskd, probability_to_mask

__all__ = [
    "DEFAULT_INPUT_MODE",
    "FLAIR_CHANNEL",
    "INPUT_MODES",
    "SPATIAL_SIZE",
    "BinarizeMask",
    "BinarizeMaskd",
    "GrayscaleToRGB",
    "GrayscaleToRGBd",
    "LoadSlice",
    "LoadSliced",
    "RandBatchAugment",
    "RandSequenceDropout",
    "RandSequenceDropoutd",
    "RemoveSmallComponents",
    "RemoveSmallComponentsd",
    "SelectInputChannels",
    "SelectInputChannelsd",
    "SlicewisePreprocessd",
    "SlicewiseToMaskd",
    "probability_to_mask",
    "slice_preprocessing",
    "train_augmentations",
]
