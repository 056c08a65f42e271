"""The input modes, as plain data (no torch): what the settings and the CLI check without importing torch."""

from __future__ import annotations

__all__ = ["DEFAULT_INPUT_MODE", "FLAIR_CHANNEL", "INPUT_MODES"]

FLAIR_CHANNEL = 1
"""Index of FLAIR in the LGG TIFFs' three channels (0 pre-contrast, 1 FLAIR, 2 post-contrast)."""

INPUT_MODES = {"flair": (FLAIR_CHANNEL,), "all": (0, 1, 2)}
"""Named input channel selections: ``flair`` (one grayscale image) or ``all`` three sequences as RGB."""

DEFAULT_INPUT_MODE = "all"
"""The input the shipped models were trained with (a grayscale slice, e.g. DICOM, is FLAIR in any mode)."""
