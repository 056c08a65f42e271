"""Command line: ``python -m bt_monai <command> ...`` (also installed as ``bt-monai``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bt_monai.data import DatasetError, make_datalist, write_datalist


def _datalist(args: argparse.Namespace) -> int:
    datalist = make_datalist(args.dataset, args.val_fraction, args.test_fraction, args.seed)
    path = write_datalist(datalist, args.output)
    for split, c in datalist["metadata"]["counts"].items():
        print(f"{split:<11} {c['patients']:>4} patients {c['slices']:>6} slices {c['tumor_slices']:>6} with tumor")
    print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bt_monai", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser(
        "datalist",
        help="split a kaggle_3m-style dataset by patient into a MONAI JSON datalist",
        description="Split a kaggle_3m-style dataset (one folder per patient, <patient>_<n>.tif with "
        "<patient>_<n>_mask.tif) by patient, stratified by tumor burden, into training/validation/test.",
    )
    p.add_argument("dataset", help="the dataset folder (holds one folder per patient)")
    p.add_argument("--output", "-o", required=True, help="the JSON datalist to write")
    p.add_argument("--val-fraction", type=float, default=0.15, help="share of patients for validation (0.15)")
    p.add_argument("--test-fraction", type=float, default=0.15, help="share of patients for testing (0.15)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split (0)")
    p.set_defaults(func=_datalist)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DatasetError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
