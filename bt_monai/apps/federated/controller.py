"""The server workflow of ``bt-monai federated``: FedAvg rounds, a per-round record, then cross-site evaluation.

It runs inside the NVFlare server (simulator, POC or a provisioned deployment), which imports it by its class
path from the job's ``config_fed_server.json``: the server needs ``bt_monai[federated]`` installed, and
nothing else of a site. It only ever receives what the sites' client script sends: weights (or weight
differences) and a few numbers per round (validation Dice, patient and slice counts, seconds).

What it writes, under ``<server run dir>/bt_monai/`` (the record ``bt-monai federated simulate`` turns into
the run's tables; in a real deployment it is in the server's job workspace):

- ``round_<r>.pt``: the global model after round ``r`` (a plain state dict of tensors);
- ``record.json``: per round the sites that answered, each site's metrics and bytes sent, the pooled global
  validation Dice and the round's seconds; the sites that failed and why; the cross-site evaluation; the
  outcome (``completed``, ``stopped``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
from nvflare.apis.fl_constant import FLMetaKey
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.workflows.model_controller import ModelController

__all__ = ["FederatedSegmentationController", "RECORD_DIR", "weighted_mean"]

RECORD_DIR = "bt_monai"
"""The record's folder, inside the server's run directory."""

ON_SITE_FAILURE = ("stop", "continue")


def weighted_mean(updates: list[dict], weights: list[float]) -> dict:
    """The FedAvg mean of ``updates`` (name -> array), weighted by ``weights`` (a site's training steps)."""
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("every site reported zero training steps: nothing to average")
    mean = {}
    for name in updates[0]:
        acc = sum(np.asarray(u[name], dtype=np.float64) * (w / total) for u, w in zip(updates, weights, strict=True))
        mean[name] = acc.astype(np.asarray(updates[0][name]).dtype)
    return mean


def _as_numpy(params: dict) -> dict:
    return {k: (v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)) for k, v in params.items()}


def _nbytes(params: dict | None) -> int:
    return int(sum(np.asarray(v).nbytes for v in (params or {}).values()))


class FederatedSegmentationController(ModelController):
    """FedAvg over the sites' ``train`` results, with a failure policy and a cross-site evaluation at the end.

    Args:
        num_rounds: rounds of FedAvg; each site runs its local epochs once per round.
        on_site_failure: ``"stop"`` ends the run at the first site that fails (no model of that round is
            written); ``"continue"`` drops the failed site and goes on with the others (the run stops when
            none is left).
        cross_site_evaluation: after the last round, score the global model and every site's last local
            model on every site's validation patients.
        persistor_id: the job's model persistor (the initial model).
    """

    def __init__(
        self,
        num_rounds: int = 2,
        on_site_failure: str = "stop",
        cross_site_evaluation: bool = True,
        persistor_id: str = "persistor",
    ):
        # ignore_result_error=True: a failed site is never a panic deep inside NVFlare; run() applies the policy.
        super().__init__(persistor_id=persistor_id, ignore_result_error=True)
        if on_site_failure not in ON_SITE_FAILURE:
            raise ValueError(f"on_site_failure must be one of {ON_SITE_FAILURE}, got {on_site_failure!r}")
        self.num_rounds = num_rounds
        self.on_site_failure = on_site_failure
        self.cross_site_evaluation = cross_site_evaluation
        self.persistor_id = persistor_id

    # -- the record ------------------------------------------------------------------------------------------
    def _record_dir(self) -> Path:
        workspace = self.fl_ctx.get_engine().get_workspace()
        path = Path(workspace.get_run_dir(self.fl_ctx.get_job_id())) / RECORD_DIR
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _write_record(self) -> None:
        path = self._record_dir() / "record.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.record, indent=2) + "\n")
        os.replace(tmp, path)

    def _save_round(self, round_index: int, params: dict) -> None:
        import torch

        path = self._record_dir() / f"round_{round_index}.pt"
        tmp = path.with_suffix(".pt.tmp")
        torch.save({k: torch.as_tensor(np.array(v)) for k, v in params.items()}, tmp)
        os.replace(tmp, path)

    # -- the workflow ----------------------------------------------------------------------------------------
    def run(self) -> None:
        self.record = {"rounds": [], "failures": [], "cross_site": [], "outcome": "running"}
        model = self.load_model()
        params = _as_numpy(model.params)
        sites = sorted(self.sample_clients())
        self.record["sites"] = sites
        self._write_record()
        local_models: dict[str, dict] = {}
        for round_index in range(self.num_rounds):
            started = time.monotonic()
            self.info(f"round {round_index}: training at {', '.join(sites)}")
            results = self.send_model_and_wait(
                task_name="train",
                targets=sites,
                data=FLModel(
                    params=params, params_type=ParamsType.FULL, current_round=round_index, total_rounds=self.num_rounds
                ),
            )
            answered = {r.meta.get("client_name"): r for r in results if r.params}
            failed = [s for s in sites if s not in answered]
            for site in failed:
                self.record["failures"].append({"round": round_index, "site": site})
                self.error(f"site {site} failed in round {round_index} (its log says why)")
            if failed and (self.on_site_failure == "stop" or not answered):
                why = "on_site_failure is 'stop'" if answered else "no site is left"
                self.record["outcome"] = f"stopped in round {round_index}: {', '.join(failed)} failed; {why}"
                self._write_record()
                self.panic(self.record["outcome"])
                return
            if failed:
                sites = [s for s in sites if s in answered]
                self.warning(f"round {round_index}: going on with {', '.join(sites)}")
            updates, weights, per_site = [], [], {}
            for site in sites:
                result = answered[site]
                update = _as_numpy(result.params)
                if result.params_type == ParamsType.DIFF:
                    update = {k: params[k] + v.astype(params[k].dtype) for k, v in update.items()}
                local_models[site] = update
                updates.append(update)
                weights.append(float(result.meta.get(FLMetaKey.NUM_STEPS_CURRENT_ROUND, 1)))
                per_site[site] = dict(result.metrics or {}) | {
                    "bytes_sent": _nbytes(result.params),
                    "params_type": str(result.params_type),
                }
            params = weighted_mean(updates, weights)
            self._save_round(round_index, params)
            self.record["rounds"].append(
                {
                    "round": round_index,
                    "sites": per_site,
                    # the global model each site received this round, pooled over all validation patients
                    "global_val_patient_dice": _pooled(per_site, "global_val_patient_dice"),
                    "local_val_patient_dice": _pooled(per_site, "val_patient_dice"),
                    "seconds": round(time.monotonic() - started, 1),
                }
            )
            self._write_record()
            self.save_model(FLModel(params=params, params_type=ParamsType.FULL, current_round=round_index))
        if self.cross_site_evaluation:
            self._cross_site(params, local_models, sites)
        self.record["outcome"] = "completed"
        self._write_record()

    def _cross_site(self, global_params: dict, local_models: dict[str, dict], sites: list[str]) -> None:
        """Every model (global, each site's last local one) on every site's validation patients."""
        for owner, params in [("global", global_params), *sorted(local_models.items())]:
            results = self.send_model_and_wait(
                task_name="validate", targets=sites, data=FLModel(params=params, params_type=ParamsType.FULL)
            )
            scores = {r.meta.get("client_name"): dict(r.metrics or {}) for r in results}
            self.record["cross_site"].append({"model": owner, "scores": scores})
            self._write_record()


def _pooled(per_site: dict[str, dict], key: str) -> float | None:
    """The mean over all validation patients of the sites (each site's mean weighted by its patient count)."""
    pairs = [(m[key], m.get("val_patients", 0)) for m in per_site.values() if m.get(key) is not None]
    total = sum(n for _, n in pairs)
    return None if not total else float(sum(v * n for v, n in pairs) / total)
