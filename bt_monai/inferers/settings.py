"""The predictor's settings, defined once, and the two bundles it reads them from.

:class:`PredictorSettings` is the one list of what decides :class:`bt_monai.inferers.TumorPredictor`'s outputs
and speed. Each field says, in its metadata (:class:`Setting`), which bundle's ``configs/inference.json`` gives
its default and under which key, its command-line flag and help, and whether it enters the predictor's
fingerprint. The CLI options, the bundle lookup, the fingerprint and the run summaries are all built from it.

:class:`ModelBundles` is the pair of bundles (and weights files) one run uses, located once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bt_monai.bundle import BUNDLE_FOLDERS, bundle_metadata, bundle_weights, locate_bundle
from bt_monai.transforms.modes import DEFAULT_INPUT_MODE, INPUT_MODES

__all__ = ["ModelBundles", "PredictorSettings", "Setting", "predictor_settings"]

BUNDLE_NAMES = tuple(BUNDLE_FOLDERS)
SLICE_SCORES = ("detector", "combined")  # what the slice tumor call thresholds (TumorPredictor.tumor_score)
REFORMAT_SETTINGS = ("axial_tolerance_deg", "reformat_pixel_mm", "reformat_slice_mm", "reformat_min_slices")


@dataclass(frozen=True)
class Setting:
    """What one :class:`PredictorSettings` field is, besides its name, type and fallback default.

    ``bundle``: the bundle whose ``configs/inference.json`` holds the default (None: not a bundle setting);
    ``key``: its key there (default: the field's name); ``shared``: both bundles must agree on it (one
    preprocessing serves both networks); ``flag``: the command-line option (None: none); ``choice``: the flag takes
    ``on``/``off``; ``parse``: turns the flag's text into the value; ``fingerprint``: the value enters the
    predictor's fingerprint (the reformat settings do not: they decide only series reformatted to axial, whose
    reuse key holds them); ``commands``: the commands that take the flag (None: all).
    """

    help: str
    bundle: str | None = "segmentation"
    key: str | None = None
    shared: bool = False
    flag: str | None = None
    choice: bool = False
    parse: Callable[[str], Any] | None = None
    fingerprint: bool = True
    commands: tuple[str, ...] | None = None  # the commands that take the flag (None: every command)


def _setting(default: Any, **spec: Any) -> Any:
    return field(default=default, metadata={"setting": Setting(**spec)})


def probability(text: str) -> float:
    """A probability strictly between 0 and 1, from a command-line value."""
    value = float(text)
    if not 0.0 < value < 1.0:
        raise ValueError(f"a probability between 0 and 1 is expected, got {text}")
    return value


def gate(text: str) -> float:
    """A tumor probability in [0, 1] (0: no gate), from a command-line value."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"a tumor probability between 0 and 1 is expected, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """A whole number of at least 0, from a command-line value."""
    value = int(text)
    if value < 0:
        raise ValueError(f"a whole number of at least 0 is expected, got {text}")
    return value


def angle(text: str) -> float:
    """An angle in degrees between 0 and 90, from a command-line value."""
    value = float(text)
    if not 0.0 <= value <= 90.0:
        raise ValueError(f"an angle between 0 and 90 degrees is expected, got {text}")
    return value


def millimetres(text: str) -> float:
    """A positive length in mm, from a command-line value."""
    value = float(text)
    if not value > 0.0:
        raise ValueError(f"a positive length in mm is expected, got {text}")
    return value


def slice_score(text: str) -> str:
    """A slice score name (:data:`SLICE_SCORES`), from a command-line value."""
    if text not in SLICE_SCORES:
        raise ValueError(f"one of {', '.join(SLICE_SCORES)} is expected, got {text!r}")
    return text


def area_px(text: str) -> float:
    """A positive area in pixels, from a command-line value."""
    value = float(text)
    if not value > 0.0:
        raise ValueError(f"a positive area in pixels is expected, got {text}")
    return value


def input_mode(text: str) -> str:
    """An input mode name (:data:`bt_monai.transforms.modes.INPUT_MODES`)."""
    if text not in INPUT_MODES:
        raise ValueError(f"one of {', '.join(INPUT_MODES)} is expected, got {text!r}")
    return text


@dataclass(frozen=True)
class PredictorSettings:
    """Everything that decides :class:`bt_monai.inferers.TumorPredictor`'s outputs and how it runs.

    The defaults here are fallbacks only: :meth:`ModelBundles.settings` takes each bundle setting from its
    bundle's ``configs/inference.json``.
    """

    input_mode: str | tuple[int, ...] = _setting(
        DEFAULT_INPUT_MODE,
        shared=True,
        flag="--input-mode",
        parse=input_mode,
        help="what the networks are given: all (the three sequences of an LGG TIFF as RGB) or flair (the FLAIR "
        "channel alone, repeated to RGB, as a DICOM series arrives; a grayscale slice is FLAIR either way) "
        "(default: the bundles' input_mode)",
    )
    spatial_size: tuple[int, int] = _setting((224, 224), shared=True, help="network input size (rows, columns)")
    threshold: float = _setting(
        0.5,
        flag="--threshold",
        parse=probability,
        help="per-pixel tumor probability threshold (default: the segmentation bundle's)",
    )
    detection_threshold: float = _setting(
        0.5,
        bundle="detection",
        key="threshold",
        flag="--detection-threshold",
        parse=probability,
        help="slice tumor probability threshold (default: the detection bundle's)",
    )
    slice_score: str = _setting(
        "detector",
        bundle="detection",
        flag="--slice-score",
        parse=slice_score,
        help="what the slice tumor call thresholds: detector (the detection model's probability) or combined (the "
        "mean of that probability and the U-Net mask's area term, area / (area + score_half_area_px)); the "
        "segment gate stays on the detector's probability (default: the detection bundle's)",
    )
    score_half_area_px: float = _setting(
        50.0,
        bundle="detection",
        flag="--score-half-area",
        parse=area_px,
        help="combined slice score: the U-Net mask area, in pixels of the network input, at which the area term "
        "is 0.5 (default: the detection bundle's)",
    )
    gate_masks: bool = _setting(
        False,
        flag="--gate-masks",
        choice=True,
        help="clear the mask of slices called tumor-free (tumor score below the detection threshold) (default: the "
        "segmentation bundle's setting)",
    )
    min_component_px: int = _setting(
        0,
        flag="--min-component-px",
        parse=non_negative_int,
        help="drop mask components smaller than this many pixels (default: the segmentation bundle's setting)",
    )
    segment_gate: float = _setting(
        0.0,
        flag="--segment-gate",
        parse=gate,
        help="run the U-Net only on slices whose tumor probability is at least this; the others get an empty mask "
        "(0: segment every slice; default: the segmentation bundle's setting)",
    )
    fold_batch_norm: bool = _setting(
        False,
        flag="--fold-batch-norm",
        choice=True,
        help="fold batch norms into convolutions, faster, rounding differs slightly (default: the bundle's setting)",
    )
    amp: bool = _setting(
        True,
        flag="--amp",
        choice=True,
        fingerprint=False,  # what it decides enters the fingerprint as the autocast dtype
        help="bf16 autocast on CPUs with native bf16, fp16 on CUDA; off: plain float32 (--no-amp is the same) "
        "(default: the bundle's setting)",
    )
    channels_last: bool = _setting(True, help="run the networks in channels-last memory format")
    device: str | None = _setting(
        None,
        bundle=None,
        flag="--device",
        fingerprint=False,  # enters the fingerprint as the device type
        help="torch device, e.g. cpu or cuda:0 (default: cuda if available)",
    )
    decode_workers: int | None = _setting(
        None,
        bundle=None,
        flag="--decode-workers",
        parse=non_negative_int,
        fingerprint=False,
        help="threads that read and resize slices while the networks run (default: 2, none on 2 cores)",
    )

    axial_tolerance_deg: float = _setting(
        10.0,
        flag="--axial-tolerance",
        parse=angle,
        fingerprint=False,
        commands=("infer",),
        help="DICOM series: one whose slices are tilted more than this many degrees from axial (sagittal, coronal, "
        "oblique) is resampled to axial slices, predicted there, and its masks mapped back onto its own images "
        "(90: predict every series as acquired; default: the segmentation bundle's, 10)",
    )
    reformat_pixel_mm: float = _setting(
        0.9375,
        flag="--reformat-pixel-spacing",
        parse=millimetres,
        fingerprint=False,
        commands=("infer",),
        help="DICOM series reformatted to axial: the pixel size of the axial slices in mm (default: the "
        "segmentation bundle's, the training slices' 0.9375)",
    )
    reformat_slice_mm: float = _setting(
        5.0,
        flag="--reformat-slice-spacing",
        parse=millimetres,
        fingerprint=False,
        commands=("infer",),
        help="DICOM series reformatted to axial: the distance between the axial slices in mm; the probabilities "
        "are interpolated between them (default: the segmentation bundle's, the training slices' 5)",
    )
    reformat_min_slices: int = _setting(
        8,
        fingerprint=False,
        help="a series with fewer images along its axis is predicted as acquired, not reformatted",
    )

    def __post_init__(self) -> None:
        if isinstance(self.input_mode, str) and self.input_mode not in INPUT_MODES:
            raise ValueError(f"input_mode must be one of {', '.join(INPUT_MODES)}, got {self.input_mode!r}")
        if not isinstance(self.input_mode, str):  # explicit channel indices
            object.__setattr__(self, "input_mode", tuple(int(c) for c in self.input_mode))
        size = tuple(int(s) for s in self.spatial_size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"spatial_size must be two positive sizes (rows, columns), got {self.spatial_size!r}")
        object.__setattr__(self, "spatial_size", size)
        for name in ("threshold", "detection_threshold"):
            if not 0.0 < float(getattr(self, name)) < 1.0:
                raise ValueError(f"{name} must be a probability between 0 and 1, got {getattr(self, name)!r}")
        if self.slice_score not in SLICE_SCORES:
            raise ValueError(f"slice_score must be one of {', '.join(SLICE_SCORES)}, got {self.slice_score!r}")
        if not float(self.score_half_area_px) > 0.0:
            raise ValueError(f"score_half_area_px must be a positive area in pixels, got {self.score_half_area_px}")
        object.__setattr__(self, "score_half_area_px", float(self.score_half_area_px))
        if not 0.0 <= float(self.segment_gate) <= 1.0:
            raise ValueError(f"segment_gate is a tumor probability in [0, 1], got {self.segment_gate}")
        object.__setattr__(self, "segment_gate", float(self.segment_gate))
        if int(self.min_component_px) < 0:
            raise ValueError(f"min_component_px must be at least 0, got {self.min_component_px}")
        if not 0.0 <= float(self.axial_tolerance_deg) <= 90.0:
            raise ValueError(f"axial_tolerance_deg is an angle in [0, 90], got {self.axial_tolerance_deg}")
        for name in ("axial_tolerance_deg", "reformat_pixel_mm", "reformat_slice_mm"):
            object.__setattr__(self, name, float(getattr(self, name)))
        for name in ("reformat_pixel_mm", "reformat_slice_mm"):
            if not getattr(self, name) > 0.0:
                raise ValueError(f"{name} must be a positive length in mm, got {getattr(self, name)}")
        if int(self.reformat_min_slices) < 2:
            raise ValueError(f"reformat_min_slices must be at least 2, got {self.reformat_min_slices}")
        for name in ("gate_masks", "fold_batch_norm", "amp", "channels_last"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")

    @staticmethod
    def specs() -> Iterator[tuple[str, Setting]]:
        """``(name, Setting)`` of every field, in order."""
        for f in dataclasses.fields(PredictorSettings):
            yield f.name, f.metadata["setting"]

    def as_dict(self) -> dict[str, Any]:
        """Every setting as JSON-able values (what run summaries record)."""
        values = dataclasses.asdict(self)
        values["spatial_size"] = list(self.spatial_size)
        if not isinstance(self.input_mode, str):
            values["input_mode"] = list(self.input_mode)
        return values

    def fingerprint_values(self) -> dict[str, Any]:
        """The settings that enter the predictor's fingerprint (device and autocast are added by the predictor)."""
        values = self.as_dict()
        chosen = {name: values[name] for name, spec in self.specs() if spec.fingerprint}
        if self.slice_score == "detector":  # the call before slice scores existed: its fingerprints stay the same
            del chosen["slice_score"], chosen["score_half_area_px"]
        return chosen

    def reformat_values(self) -> dict[str, Any]:
        """The settings that decide how a series in another plane is reformatted to axial (its reuse key has them)."""
        return {name: getattr(self, name) for name in REFORMAT_SETTINGS}

    def replace(self, **changes: Any) -> PredictorSettings:
        """A copy with ``changes`` applied (None values are ignored: "not given")."""
        unknown = sorted(set(changes) - {name for name, _ in self.specs()})
        if unknown:
            raise TypeError(f"unknown predictor setting(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def predictor_settings(configs: dict[str, dict], source: dict[str, str] | None = None, **overrides: Any):
    """:class:`PredictorSettings` from the bundles' inference settings, with ``overrides`` (None: not given).

    ``configs``: bundle name -> its resolved ``inference.json`` values; ``source``: bundle name -> the file they
    came from (named in errors). Settings both bundles must agree on (``input_mode``, ``spatial_size``) are
    checked, unless overridden.
    """
    source = source or {}
    values: dict[str, Any] = {}
    for name, spec in PredictorSettings.specs():
        if spec.bundle is None:
            continue
        key = spec.key or name
        config = configs.get(spec.bundle, {})
        if key in config:
            values[name] = config[key]
        if spec.shared and overrides.get(name) is None:
            found = {bundle: c[key] for bundle, c in configs.items() if key in c}
            if len({json.dumps(v) for v in found.values()}) > 1:
                detail = " vs ".join(f"{v} ({source.get(b, b)})" for b, v in found.items())
                raise ValueError(
                    f"the bundles disagree on {key} ({detail}): one preprocessing serves both models, so retrain "
                    "one of them or pass the setting explicitly"
                )
    if "spatial_size" in values:
        values["spatial_size"] = tuple(values["spatial_size"])
    try:
        return PredictorSettings(**values).replace(**overrides)
    except ValueError as e:
        files = ", ".join(str(f) for f in source.values())
        raise ValueError(f"{e} (settings from {files or 'the bundles'} and the options given)") from None


@dataclass(frozen=True)
class ModelBundles:
    """The segmentation and detection bundles (folders) and the weights files one run uses, located once.

    Build with :meth:`locate`; :meth:`settings` reads both bundles' inference settings, :meth:`load_networks`
    builds the networks, :meth:`provenance` says what the models are (for reports and DICOM outputs).
    """

    segmentation: Path
    detection: Path
    segmentation_weights: Path
    detection_weights: Path

    @classmethod
    def locate(
        cls,
        segmentation_bundle: str | os.PathLike | None = None,
        detection_bundle: str | os.PathLike | None = None,
        segmentation_weights: str | os.PathLike | None = None,
        detection_weights: str | os.PathLike | None = None,
    ) -> ModelBundles:
        """Find both bundles (:func:`bt_monai.bundle.locate_bundle`: a folder, a name, or None for the installed
        one) and their weights (default ``models/model.pt``; a missing file is an error that names it)."""
        folders = {
            "segmentation": locate_bundle(segmentation_bundle, "segmentation"),
            "detection": locate_bundle(detection_bundle, "detection"),
        }
        given = {"segmentation": segmentation_weights, "detection": detection_weights}
        weights = {name: bundle_weights(folder, given[name]) for name, folder in folders.items()}
        return cls(folders["segmentation"], folders["detection"], weights["segmentation"], weights["detection"])

    def folder(self, name: str) -> Path:
        return {"segmentation": self.segmentation, "detection": self.detection}[name]

    def weights(self, name: str) -> Path:
        return {"segmentation": self.segmentation_weights, "detection": self.detection_weights}[name]

    def load_networks(self, scripted: bool = True) -> tuple[Any, Any, dict[str, dict]]:
        """Both networks (weights loaded, eval mode, on the CPU) and each bundle's inference settings.

        Returns ``(segmenter, detector, configs)``; ``configs`` maps bundle name -> the values of the
        :class:`PredictorSettings` keys its ``inference.json`` defines.
        """
        from bt_monai.bundle import load_bundle_network

        networks, configs = {}, {}
        for name in BUNDLE_NAMES:
            keys = sorted({spec.key or n for n, spec in PredictorSettings.specs() if spec.bundle is not None})
            networks[name], configs[name] = load_bundle_network(
                self.folder(name), self.weights(name), name=name, scripted=scripted, keys=keys
            )
        return networks["segmentation"], networks["detection"], configs

    def inference_configs(self) -> dict[str, Path]:
        """Bundle name -> its ``configs/inference.json``."""
        return {name: self.folder(name) / "configs" / "inference.json" for name in BUNDLE_NAMES}

    def provenance(self) -> dict:
        """What a prediction was made with: each bundle's folder and version, its weights file and their SHA-256."""

        def info(name: str) -> dict:
            folder, weights = self.folder(name), self.weights(name)
            digest = hashlib.sha256(weights.read_bytes()).hexdigest() if weights.is_file() else None
            version = bundle_metadata(folder).get("version")
            return {"bundle": str(folder), "version": version, "weights": str(weights), "sha256": digest}

        return {"segmentation_model": info("segmentation"), "detection_model": info("detection")}
