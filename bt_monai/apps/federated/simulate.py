"""``bt-monai federated simulate``: the federated job, run in NVFlare's simulator on this machine.

Every site is one NVFlare client process (one simulator thread per site) training on its own datalist; the
server runs FedAvg. The run is built in a staging folder beside ``output`` (``.<name>.incomplete``) and
renamed to ``output`` only when it completed, so an output folder always holds a whole run:

- ``model.pt``: the final global model, a plain state dict (``bt-monai infer --segmentation-weights``);
- ``rounds/round_<r>.pt``: the global model after each round;
- ``rounds.csv``: per round its seconds, the pooled global validation Dice and each site's local Dice and
  bytes sent; ``cross_site.csv``: every model on every site's validation patients;
- ``summary.json``: the settings, the record of the server (:mod:`~bt_monai.apps.federated.controller`);
- ``job/``: the NVFlare job folder, to submit to a POC or provisioned deployment as it is;
- ``workspace/``: the simulator's workspace (``server/`` and one folder per site, with their logs);
  ``simulator.log``: what the simulator printed.

A failed run leaves no ``output``: its staging folder keeps the logs, and the error names the site.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from bt_monai.apps.federated.job import FederatedSettings

__all__ = ["FederatedError", "FederatedRun", "FederatedRunStopped", "check_site_datalists", "export_job", "simulate"]

_SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
RECORD = Path("server") / "simulate_job" / "bt_monai" / "record.json"
CLIENT_SCRIPT = "bt_monai/apps/federated/client.py"
"""The client script as the job names it: found in each site's ``custom/`` folder, where NVFlare copies it."""


class FederatedError(ValueError):
    """A federated run that cannot start; the message names the site or file."""


class FederatedRunStopped(RuntimeError):
    """A federated run that started and did not finish; the message names the failed sites and the logs."""


def check_site_datalists(paths: list[str | os.PathLike]) -> dict[str, str]:
    """Site name (the file's stem) -> absolute datalist path; refuses missing, unreadable or empty ones."""
    from bt_monai.data import DatasetError, read_datalist
    from bt_monai.data.sites import SITE_SPLITS

    if not paths:
        raise FederatedError("--sites names no datalist: give one JSON datalist per site (bt-monai datalist --by-site)")
    sites: dict[str, str] = {}
    for raw in paths:
        path = Path(raw).expanduser()
        site = path.stem
        if not _SITE_NAME.match(site):
            raise FederatedError(
                f"site {site!r} ({path}): a site name (the file's stem) takes letters, digits, - and _"
            )
        if site in sites:
            raise FederatedError(f"site {site}: two datalists have that name ({sites[site]} and {path}): rename one")
        try:
            datalist = read_datalist(path)
        except DatasetError as e:
            raise FederatedError(f"site {site}: {e}") from e
        unknown = [k for k in datalist if k not in (*SITE_SPLITS, "test", "metadata")]
        if unknown:
            raise FederatedError(f"site {site}: {path} has a key {unknown[0]!r}; a datalist has training/validation")
        sites[site] = str(path.resolve())
    return sites


class FederatedRun:
    """What a finished (or stopped) simulation left: the server's record, read from its workspace."""

    def __init__(self, folder: Path, record: dict, seconds: float):
        self.folder = folder
        self.record = record
        self.seconds = seconds
        self.failures: list[str] = []

    @property
    def completed(self) -> bool:
        return self.record.get("outcome") == "completed"

    def table(self) -> str:
        """The per-round table and the cross-site table, as printed by the command."""
        sites = self.record["sites"]

        def cell(v, digits=4):
            return "-" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))

        lines = ["round  seconds  global val Dice  " + "  ".join(f"{s + ' local':>12}" for s in sites)]
        for r in self.round_rows():
            local = "  ".join(f"{cell(r[f'{s}_val_patient_dice']):>12}" for s in sites)
            lines.append(f"{r['round']:>5}  {r['seconds']:>7.1f}  {cell(r['global_val_patient_dice']):>15}  {local}")
        sent = {s: [r[f"{s}_bytes_sent"] for r in self.round_rows() if r[f"{s}_bytes_sent"]] for s in sites}
        lines.append("sent per round: " + ", ".join(f"{s} {max(v) / 2**20:.1f} MiB" for s, v in sent.items() if v))
        if self.record["cross_site"]:
            lines += ["", "cross-site validation Dice (rows: model; columns: the site whose patients score it)"]
            lines.append(f"{'model':<12}" + "".join(f"{s:>12}" for s in sites) + f"{'pooled':>12}")
            for row in self.cross_site_rows():
                cells = "".join(f"{cell(row[f'{s}_val_patient_dice']):>12}" for s in sites)
                lines.append(f"{row['model']:<12}{cells}{cell(row['pooled_val_patient_dice']):>12}")
        return "\n".join(lines)

    def round_rows(self) -> list[dict]:
        rows = []
        for r in self.record["rounds"]:
            row = {
                "round": r["round"],
                "seconds": r["seconds"],
                "global_val_patient_dice": r["global_val_patient_dice"],
            }
            for site in self.record["sites"]:
                metrics = r["sites"].get(site, {})
                row[f"{site}_val_patient_dice"] = metrics.get("val_patient_dice")
                row[f"{site}_bytes_sent"] = metrics.get("bytes_sent")
            rows.append(row)
        return rows

    def cross_site_rows(self) -> list[dict]:
        rows = []
        for entry in self.record["cross_site"]:
            row = {"model": entry["model"]}
            pairs = []
            for site in self.record["sites"]:
                score = entry["scores"].get(site, {})
                row[f"{site}_val_patient_dice"] = score.get("val_patient_dice")
                if score.get("val_patient_dice") is not None:
                    pairs.append((score["val_patient_dice"], score.get("val_patients", 0)))
            total = sum(n for _, n in pairs)
            row["pooled_val_patient_dice"] = sum(v * n for v, n in pairs) / total if total else None
            rows.append(row)
        return rows


def _write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        if rows:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def site_failures(workspace: Path, record: dict) -> list[str]:
    """One line per failed site: the site, the round, and the reason its client wrote (or where its log is)."""
    from bt_monai.apps.federated.client import FAILURE_FILE

    lines = []
    for failure in record.get("failures", []):
        site = failure["site"]
        reason_file = workspace / site / "bt_monai_site" / FAILURE_FILE
        reason = reason_file.read_text().strip() if reason_file.is_file() else f"see {workspace / site / 'log.txt'}"
        lines.append(f"site {site} failed in round {failure['round']}: {reason}")
    return lines


def simulate(settings: FederatedSettings, output: str | os.PathLike) -> FederatedRun:
    """Run ``settings`` in NVFlare's simulator; the finished run lands in ``output`` (see the module docstring).

    Raises :class:`FederatedError` when ``output`` already holds something, :class:`FederatedRunStopped`
    when the run stopped (the message names the failed sites and their reasons); ``output`` is not written.
    """
    output = Path(output).expanduser().resolve()
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise FederatedError(
            f"{output} already exists and is not empty (an earlier run?): give another --output, or delete it first"
        )
    staging = output.parent / f".{output.name}.incomplete"
    if staging.exists():
        shutil.rmtree(staging)  # an earlier failed run's logs: ours, and superseded by this run
    staging.mkdir(parents=True)
    (staging / "settings.json").write_text(json.dumps(asdict(settings), indent=2) + "\n")
    job = export_job(settings, staging / "job")
    started = time.monotonic()
    with (staging / "simulator.log").open("w") as log:
        # NVFlare's simulator on the exported folder itself: what ran is what a deployment is given. Its own
        # process: it prints a great deal, and its server and site processes outlive errors.
        command = [sys.executable, "-m", "nvflare.private.fed.app.simulator.simulator", str(job)]
        command += ["-w", str(staging / "workspace"), "-c", ",".join(sorted(settings.sites))]
        command += ["-t", str(len(settings.sites))]
        environment = os.environ | {"PYTHONUNBUFFERED": "1"}
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
    seconds = time.monotonic() - started
    workspace = staging / "workspace"
    record_path = workspace / RECORD
    if not record_path.is_file():
        raise FederatedRunStopped(
            f"the simulator stopped before the first round (exit status {code}): see {staging / 'simulator.log'}"
        )
    record = json.loads(record_path.read_text())
    run = FederatedRun(output, record, seconds)
    failures = site_failures(workspace, record)
    if not run.completed:
        raise FederatedRunStopped(
            "; ".join(failures + [f"federated run {record.get('outcome', 'did not finish')}"])
            + f" (logs kept in {staging})"
        )
    rounds_dir = staging / "rounds"
    rounds_dir.mkdir()
    for r in record["rounds"]:
        shutil.move(str(record_path.parent / f"round_{r['round']}.pt"), rounds_dir / f"round_{r['round']}.pt")
    shutil.copyfile(rounds_dir / f"round_{record['rounds'][-1]['round']}.pt", staging / "model.pt")
    _write_csv(staging / "rounds.csv", run.round_rows())
    _write_csv(staging / "cross_site.csv", run.cross_site_rows())
    summary = {
        "settings": asdict(settings),
        "seconds": round(seconds, 1),
        "failures": failures,
        "record": record,
    }
    (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(staging, output)
    run.failures = failures
    return run


def export_job(settings: FederatedSettings, folder: Path) -> Path:
    """Write the NVFlare job folder of ``settings`` into ``folder``; returns the job's own folder in it.

    NVFlare's ``ScriptRunner`` records the client script by the absolute path it had here and copies it into
    each site's ``custom/`` folder; the path is rewritten to the package-relative one, found in ``custom/``,
    so that the folder runs on machines where bt_monai is installed elsewhere.
    """
    from bt_monai.apps.federated.job import client_script, federated_recipe

    federated_recipe(settings).export(job_dir=str(folder))
    job = folder / settings.name
    installed = str(client_script())
    for config in sorted(job.glob("app_*/config/config_fed_client.json")):
        text = config.read_text()
        config.write_text(text.replace(json.dumps(installed), json.dumps(CLIENT_SCRIPT)))
    return job
