"""The NVFlare client of ``bt-monai federated``: the segmentation bundle's own ``train.json``, trained at one site.

NVFlare runs this file at every site (the job's ``ScriptRunner``; it is package data of ``bt_monai``), with the
NVFlare Client API: ``flare.receive()`` the global model, train, ``flare.send()`` the result. Per round:

1. load the global weights into the bundle's network and score them on the site's own validation patients
   (the bundle's ``validate#evaluator``: ``val_patient_dice``);
2. run ``--local-epochs`` epochs of the bundle's ``train#trainer`` (its transforms, loss, augmentation and
   learning-rate schedule, stretched over all rounds) on the site's own training patients;
3. score the local model the same way and send its weights (``--send weights``) or its difference to the
   global model (``--send diff``), with those numbers.

A ``validate`` task (the cross-site evaluation) only scores the model it was given. What leaves the site:
tensors of the network's state dict and the metrics named in :data:`SENT_METRICS`; never a file name, a
patient ID, a pixel or a per-slice output. The test split of the datalist is never read.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

__all__ = ["FAILURE_FILE", "SENT_METRICS", "SiteError", "SiteTraining", "main", "parse_overrides"]

SENT_METRICS = (
    "global_val_patient_dice",
    "val_patient_dice",
    "val_patients",
    "training_slices",
    "local_epochs",
    "train_seconds",
)
"""Every number a site sends with its model; the server's record holds nothing else of a site."""

logger = logging.getLogger("bt_monai.federated.client")


class SiteError(ValueError):
    """A site cannot take part: the message names the site, the file and what to do."""


class SiteTraining:
    """The bundle's trainer and evaluator at one site, kept across rounds (optimizer state and schedule too).

    Args:
        bundle_root: the segmentation bundle folder (its ``configs/train.json`` is run as it is).
        datalist: the site's MONAI datalist (``training`` and ``validation`` entries).
        workdir: where the site's checkpoints and logs go (never the shipped bundle).
        total_epochs: local epochs over the whole run: the length of the learning-rate schedule.
        overrides: more bundle settings (``{"tumor_fraction": 0.5}``), as ``--key value`` would give them.
    """

    def __init__(
        self,
        bundle_root: str | os.PathLike,
        datalist: str | os.PathLike,
        workdir: str | os.PathLike,
        total_epochs: int,
        overrides: dict | None = None,
    ):
        from monai.bundle import ConfigWorkflow

        bundle_root = Path(bundle_root)
        workdir = Path(workdir)
        settings = {
            "bundle_root": str(bundle_root),
            "dataset_dir": str(datalist),
            "ckpt_dir": str(workdir / "models"),
            "output_dir": str(workdir / "eval"),
            "max_epochs": total_epochs,
            "resume": False,
        } | dict(overrides or {})
        self.workflow = ConfigWorkflow(
            config_file=str(bundle_root / "configs" / "train.json"),
            meta_file=str(bundle_root / "configs" / "metadata.json"),
            logging_file=None,
            workflow_type="train",
            **settings,
        )
        parser = self.workflow.parser
        # The server decides when to validate (each round, global and local model): no per-epoch validation,
        # and no "best local model" file (a site's best epoch is not what the federation keeps).
        parser["train"]["handlers"] = [
            h
            for h in parser["train"]["handlers"]
            if not (isinstance(h, dict) and h.get("_target_") == "ValidationHandler")
        ]
        parser["validate"]["handlers"] = [
            h for h in parser["validate"]["handlers"] if h != "@validate#best_model_saver"
        ]
        self.workflow.initialize()
        self.trainer = parser.get_parsed_content("train#trainer")
        self.evaluator = parser.get_parsed_content("validate#evaluator")
        self.network = parser.get_parsed_content("network")
        self.datalist = parser.get_parsed_content("datalist")
        self.validation_patients = len({e["patient_id"] for e in self.datalist.get("validation", [])})
        self.training_slices = len(self.datalist["training"])

    def load(self, params: dict) -> None:
        """Load global (or another site's) weights; shapes and names must match the bundle's network."""
        import torch

        state = {k: torch.as_tensor(v) for k, v in params.items()}
        self.network.load_state_dict(state, strict=True)

    def state(self) -> dict:
        return {k: v.detach().cpu().clone() for k, v in self.network.state_dict().items()}

    def validate(self) -> float | None:
        """``val_patient_dice`` of the network on the site's validation patients (None when it has none)."""
        if not self.validation_patients:
            return None
        self.evaluator.run()
        return float(self.evaluator.state.metrics["val_patient_dice"])

    def train(self, local_epochs: int) -> float:
        """Run ``local_epochs`` more epochs of the bundle's trainer; returns the seconds they took."""
        started = time.monotonic()
        self.trainer.state.max_epochs = self.trainer.state.epoch + local_epochs
        self.trainer.run()
        return time.monotonic() - started


def parse_overrides(pairs: list[str], flag: str = "--bundle-override") -> dict:
    """``KEY=VALUE`` pairs (VALUE read as JSON when it parses, else as a string) -> bundle overrides."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SiteError(f"{flag} {pair!r}: write KEY=VALUE, e.g. tumor_fraction=0.5")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bt_monai.apps.federated.client", description=__doc__.splitlines()[0])
    p.add_argument("--datalist", required=True, help="this site's datalist (bt-monai datalist --by-site)")
    p.add_argument("--bundle", default=None, help="the segmentation bundle folder (default: the installed one)")
    p.add_argument("--workdir", default=None, help="site folder for checkpoints and logs (default: ./bt_monai_site)")
    p.add_argument("--local-epochs", type=int, default=1, help="epochs of local training per round")
    p.add_argument("--send", choices=("weights", "diff"), default="weights", help="what a round's result holds")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    p.add_argument("--bundle-override", action="append", default=[], metavar="KEY=VALUE")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import nvflare.client as flare
    import torch
    from nvflare.apis.fl_constant import FLMetaKey
    from nvflare.app_common.abstract.fl_model import ParamsType

    from bt_monai.bundle import locate_bundle
    from bt_monai.data import DatasetError, read_datalist

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    flare.init()
    site = flare.get_site_name()
    datalist = Path(args.datalist).expanduser()
    try:
        read_datalist(datalist)  # before the first round: the bundle would find this only once it is built
    except DatasetError as e:
        raise SiteError(f"site {site}: {e}") from e
    workdir = Path(args.workdir or "bt_monai_site").expanduser().resolve()
    bundle_root = locate_bundle(args.bundle, name="segmentation")
    training: SiteTraining | None = None
    while flare.is_running():
        received = flare.receive()
        if received is None:
            break
        if training is None:
            total = int(received.total_rounds or 1) * args.local_epochs
            training = SiteTraining(bundle_root, datalist, workdir, total, parse_overrides(args.bundle_override))
        training.load(received.params)
        if flare.is_evaluate():
            flare.send(
                flare.FLModel(
                    metrics={"val_patient_dice": training.validate(), "val_patients": training.validation_patients}
                )
            )
            continue
        global_dice = training.validate()
        global_state = training.state()
        seconds = training.train(args.local_epochs)
        local_dice = training.validate()
        local_state = training.state()
        if args.send == "diff":
            params = {k: local_state[k] - global_state[k] for k in local_state}
            params_type = ParamsType.DIFF
        else:
            params, params_type = local_state, ParamsType.FULL
        metrics = {
            "global_val_patient_dice": global_dice,
            "val_patient_dice": local_dice,
            "val_patients": training.validation_patients,
            "training_slices": training.training_slices,
            "local_epochs": args.local_epochs,
            "train_seconds": round(seconds, 1),
        }
        logger.info("site %s round %s: %s", site, received.current_round, metrics)
        flare.send(
            flare.FLModel(
                params=params,
                params_type=params_type,
                metrics=metrics,
                meta={FLMetaKey.NUM_STEPS_CURRENT_ROUND: training.training_slices * args.local_epochs},
            )
        )


FAILURE_FILE = "failure.txt"
"""Written into the site's workdir when the site fails: one line, the reason (it stays at the site)."""


def _record_failure(argv: list[str] | None, error: BaseException) -> None:
    from bt_monai.utils import error_summary

    try:
        site = __import__("nvflare.client", fromlist=["get_site_name"]).get_site_name()
    except Exception:
        site = "?"
    root = error
    while root.__cause__ is not None:  # a bundle expression that failed: its own error says what
        root = root.__cause__
    line = str(error) if isinstance(error, SiteError) else f"site {site}: {error_summary(root)}"
    print(f"bt_monai federated client: {line}", file=sys.stderr)
    try:
        args = parse_args(argv)
        workdir = Path(args.workdir or "bt_monai_site").expanduser()
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / FAILURE_FILE).write_text(line + "\n")
    except Exception:
        pass


if __name__ == "__main__":
    try:
        main()
    except BaseException as e:
        _record_failure(None, e)
        raise
