"""Command-line options of the model, built from :class:`bt_monai.inferers.PredictorSettings`, and back.

Nothing here lists a predictor setting by hand: each flag, its help and its parser come from the setting's
own definition, so a setting added there reaches ``infer`` and ``evaluate`` at once.
"""

from __future__ import annotations

import argparse
from typing import Any

from bt_monai.inferers.settings import PredictorSettings, Setting

__all__ = ["add_model_options", "model_bundles", "predictor", "settings_changes"]

# evaluate keeps --input for the input mode (its older name); infer's INPUT is a path
_ALIASES = {"evaluate": {"input_mode": ("--input",)}}


def _argparse_type(spec: Setting):
    if spec.parse is None:
        return None

    def parse(text: str):
        try:
            return spec.parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = spec.parse.__name__  # argparse names it in "invalid <name> value"
    return parse


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"a whole number of at least 1 is expected, got {text}")
    return value


def add_model_options(p: argparse.ArgumentParser, command: str) -> None:
    """The bundles, weights, run options and every predictor setting that has a flag."""
    p.add_argument("--segmentation-bundle", help="segmentation bundle folder or name (default: the installed bundle)")
    p.add_argument(
        "--detection-bundle",
        "--classification-bundle",
        dest="detection_bundle",
        help="detection bundle folder or name (default: the installed brain_tumor_classification bundle)",
    )
    p.add_argument("--segmentation-weights", help="weights file instead of the bundle's models/model.pt")
    p.add_argument(
        "--detection-weights",
        "--classification-weights",
        dest="detection_weights",
        help="weights file instead of the detection bundle's models/model.pt",
    )
    p.add_argument("--batch-size", type=positive_int, default=16, help="slices per batch (16)")
    p.add_argument(
        "--threads", type=positive_int, help="CPU threads of the networks (default: PyTorch's, one per core)"
    )
    aliases = _ALIASES.get(command, {})
    for name, spec in PredictorSettings.specs():
        if spec.flag is None or (spec.commands is not None and command not in spec.commands):
            continue
        flags = (spec.flag, *aliases.get(name, ()))
        if spec.choice:
            p.add_argument(*flags, dest=name, choices=("on", "off"), help=spec.help)
        else:
            p.add_argument(*flags, dest=name, type=_argparse_type(spec), help=spec.help)
    # --no-amp: the older spelling of --amp off
    p.add_argument("--no-amp", dest="amp", action="store_const", const="off", help="the same as --amp off")


def settings_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The predictor settings the options change (options not given are left out)."""
    changes = {}
    for name, spec in PredictorSettings.specs():
        value = getattr(args, name, None)
        if spec.flag is None or value is None:
            continue
        changes[name] = (value == "on") if spec.choice else value
    return changes


def model_bundles(args: argparse.Namespace):
    """The two bundles and weights the options name, located once for the whole run."""
    from bt_monai.inferers.settings import ModelBundles

    return ModelBundles.locate(
        args.segmentation_bundle, args.detection_bundle, args.segmentation_weights, args.detection_weights
    )


def predictor(args: argparse.Namespace):
    """The predictor of the options: both bundles, their settings, the options' changes; ``--threads`` set."""
    from bt_monai.inferers import TumorPredictor

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    return TumorPredictor.from_bundles(model_bundles(args), **settings_changes(args))
