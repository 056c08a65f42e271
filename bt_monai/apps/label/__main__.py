"""``python -m bt_monai.apps.label datastore SOURCE --output STUDIES``: a MONAI Label datastore of slices."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bt_monai.apps.label.datastore import make_label_datastore
from bt_monai.data import DatasetError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bt_monai.apps.label", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    ds = commands.add_parser(
        "datastore",
        help="link slices into one MONAI Label datastore folder (optionally with their masks as labels)",
        description="Link the slices of a kaggle_3m dataset (or any folder of slices) into one flat folder for "
        "`monailabel start_server --studies`; with --labels, write each kaggle_3m mask as its finished label "
        "(labels/final/<id>.<ext>, 0/1).",
    )
    ds.add_argument("source", help="kaggle_3m dataset folder, or any folder of slices")
    ds.add_argument("--output", required=True, help="datastore folder to create or add to")
    ds.add_argument("--patients", nargs="+", metavar="PATIENT", help="only these kaggle_3m patient folders")
    ds.add_argument("--labels", action="store_true", help="write the kaggle_3m masks as finished labels")
    ds.add_argument("--copy", action="store_true", help="copy the images instead of linking them")
    args = parser.parse_args(argv)
    try:
        done = make_label_datastore(args.source, args.output, args.patients, labels=args.labels, copy=args.copy)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{done['folder']}: {done['images']} slices, {done['labels']} labels ({done['tumor_labels']} with tumor)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
