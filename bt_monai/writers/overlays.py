"""Slices with their masks drawn on them: one renderer for the DICOM overlays and the evaluation gallery.

Two looks, one function (:func:`overlay_rgb`):

- DICOM overlays (:func:`overlay_png`): the slice windowed to its 0.5-99.5th percentile, the predicted tumor
  in translucent red with a solid red outline;
- the evaluation gallery: the slice divided by its maximum, the truth outlined in green and the prediction
  in red (``window="max"``, the defaults otherwise).
"""

from __future__ import annotations

import io

import numpy as np

__all__ = ["outline", "overlay_png", "overlay_rgb"]

Color = tuple[float, float, float]

TRUTH_COLOR: Color = (0.1, 0.9, 0.1)  # green outline of the ground truth
PREDICTION_COLOR: Color = (0.95, 0.1, 0.1)  # red outline of the prediction (gallery)
DICOM_OUTLINE_COLOR: Color = (1.0, 0.1, 0.1)  # red outline of the prediction (DICOM overlays)
FILL_COLOR: Color = (1.0, 0.0, 0.0)
FILL_OPACITY = 0.4


def outline(mask: np.ndarray) -> np.ndarray:
    """The boundary pixels of a binary mask (the mask minus its erosion), as a boolean array."""
    from scipy import ndimage

    mask = mask.astype(bool)
    return mask & ~ndimage.binary_erosion(mask)


def _windowed(image: np.ndarray, window: str) -> np.ndarray:
    """The ``(H, W)`` gray values of ``image`` (colour: the mean of its channels) scaled for display."""
    gray = image.mean(-1) if image.ndim == 3 else image
    if window == "percentile":
        low, high = np.percentile(gray, (0.5, 99.5))
        return np.clip((gray - low) / max(float(high - low), 1e-6), 0, 1)
    if window == "max":
        return gray / max(float(gray.max()), 1e-6)
    raise ValueError(f"window must be 'percentile' or 'max', got {window!r}")


def overlay_rgb(
    image: np.ndarray,
    prediction: np.ndarray | None = None,
    truth: np.ndarray | None = None,
    *,
    window: str = "percentile",
    fill: bool = False,
    prediction_color: Color = PREDICTION_COLOR,
    truth_color: Color = TRUTH_COLOR,
) -> np.ndarray:
    """A float RGB ``(H, W, 3)`` picture of ``image`` (``(H, W)`` or ``(H, W, 3)``, any range) with its masks.

    Args:
        prediction, truth: ``(H, W)`` masks (non-zero = tumor), each drawn as its outline when given.
        window: ``"percentile"``: the gray values clipped to their 0.5-99.5th percentile and scaled to 0-1;
            ``"max"``: divided by their maximum.
        fill: also tint the predicted tumor red (40 % opacity) under its outline.
    """
    gray = _windowed(np.asarray(image), window)
    rgb = np.repeat(gray[..., None], 3, -1)
    tumor = None if prediction is None else np.asarray(prediction) > 0
    if tumor is not None and fill:
        rgb[tumor] = (1 - FILL_OPACITY) * rgb[tumor] + FILL_OPACITY * np.array(FILL_COLOR)
    if truth is not None:
        rgb[outline(np.asarray(truth) > 0)] = truth_color
    if tumor is not None:
        rgb[outline(tumor)] = prediction_color
    return rgb


def overlay_png(pixels: np.ndarray, mask: np.ndarray) -> bytes:
    """An RGB PNG of the slice (``(H, W)`` or ``(H, W, 3)``, any range; windowed to its 0.5-99.5th percentile)
    with the ``(H, W)`` mask in translucent red and its outline in solid red."""
    from PIL import Image

    rgb = overlay_rgb(pixels, mask, window="percentile", fill=True, prediction_color=DICOM_OUTLINE_COLOR)
    buffer = io.BytesIO()
    # Fast zlib level: on a busy series the overlays must not cost a fraction of the model's time.
    Image.fromarray((rgb * 255).round().astype(np.uint8)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
