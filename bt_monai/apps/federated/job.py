"""The NVFlare job of ``bt-monai federated``: a FedAvg recipe whose sites run the segmentation bundle.

:func:`federated_recipe` builds NVFlare's PyTorch ``FedAvgRecipe`` with our server workflow
(:class:`~bt_monai.apps.federated.controller.FederatedSegmentationController`) and, at every site, NVFlare's
``ScriptRunner`` on :mod:`bt_monai.apps.federated.client` (package data: the installed file). It exports the
job folder that a POC or provisioned deployment takes; ``bt-monai federated simulate`` runs NVFlare's simulator
on that folder (what ``recipe.execute(SimEnv(...))`` does with a temporary export), so the folder a user
submits is the one that ran.

The script runs inside each site's NVFlare client process (``launch_external_process=False``): the simulator
already gives every site its own process, and a second Python per site would import torch and MONAI twice
and hold a second copy of the network for nothing. In a real deployment the client process is the site's.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["FederatedSettings", "PRIVACY", "client_script", "federated_recipe", "network_config"]

PRIVACY = ("none", "percentile")
"""Client output filters: ``percentile`` is NVFlare's ``PercentilePrivacy`` on the weight differences."""


@dataclass(frozen=True)
class FederatedSettings:
    """What a federated run is: its sites, rounds and what leaves a site.

    Attributes:
        sites: site name -> that site's datalist (the path as the site sees it).
        rounds: FedAvg rounds. local_epochs: epochs each site trains per round.
        send: ``weights`` (the local model) or ``diff`` (local minus global).
        privacy: ``none`` or ``percentile`` (``PercentilePrivacy(percentile, gamma)`` on the differences,
            which implies ``send="diff"``).
        on_site_failure: ``stop`` or ``continue`` (see the controller).
        threads: torch threads per site (0: the machine's cores shared out between the sites).
        bundle: the segmentation bundle folder (None: the installed one).
        overrides: bundle settings for every site (``{"tumor_fraction": 0.5}``).
        site_overrides: site -> bundle settings of that site only (a smaller ``batch_size`` where memory is short).
        init_weights: a state dict file the run starts from (None: the network's own initialization).
    """

    sites: dict[str, str]
    rounds: int = 2
    local_epochs: int = 1
    send: str = "weights"
    privacy: str = "none"
    percentile: float = 10.0
    gamma: float = 0.01
    on_site_failure: str = "stop"
    cross_site_evaluation: bool = True
    threads: int = 0
    bundle: str | None = None
    overrides: dict = field(default_factory=dict)
    site_overrides: dict = field(default_factory=dict)
    init_weights: str | None = None
    name: str = "bt_monai_segmentation_fedavg"

    def site_threads(self) -> int:
        return self.threads or max(1, (os.cpu_count() or 1) // max(1, len(self.sites)))

    def sent(self) -> str:
        return "diff" if self.privacy == "percentile" else self.send


def client_script() -> Path:
    """The installed client script (package data)."""
    return Path(__file__).with_name("client.py")


def network_config(bundle_root: str | os.PathLike) -> dict:
    """The bundle's ``network_def`` as NVFlare's model config (``class_path`` and literal ``args``)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(Path(bundle_root) / "configs" / "train.json"))
    definition = dict(parser.get("network_def"))
    target = definition.pop("_target_")
    args = {}
    for key, value in definition.items():
        if isinstance(value, str) and value.startswith(("@", "$", "%")):
            value = parser.get_parsed_content(f"network_def#{key}")
        args[key] = value
    return {"class_path": target, "args": args}


def _client_args(settings: FederatedSettings, site: str) -> str:
    datalist = settings.sites[site]
    args = [
        "--datalist",
        datalist,
        "--local-epochs",
        str(settings.local_epochs),
        "--send",
        settings.sent(),
        "--threads",
        str(settings.site_threads()),
    ]
    if settings.bundle:
        args += ["--bundle", str(settings.bundle)]
    for key, value in sorted((settings.overrides | settings.site_overrides.get(site, {})).items()):
        args += ["--bundle-override", f"{key}={json.dumps(value)}"]
    return shlex.join(args)


def federated_recipe(settings: FederatedSettings):
    """NVFlare's PyTorch ``FedAvgRecipe`` for ``settings``, with our controller and client script."""
    from nvflare.apis.dxo import DataKind
    from nvflare.app_common.filters.percentile_privacy import PercentilePrivacy
    from nvflare.app_opt.pt.recipes.fedavg import FedAvgRecipe

    from bt_monai.apps.federated.controller import FederatedSegmentationController
    from bt_monai.bundle import locate_bundle

    class SegmentationFedAvgRecipe(FedAvgRecipe):
        def _create_controller(self, persistor_id, model_params, model_aggregator):
            return FederatedSegmentationController(
                num_rounds=settings.rounds,
                on_site_failure=settings.on_site_failure,
                cross_site_evaluation=settings.cross_site_evaluation,
                persistor_id=persistor_id,
            )

    bundle_root = locate_bundle(settings.bundle, name="segmentation")
    sites = sorted(settings.sites)
    recipe = SegmentationFedAvgRecipe(
        name=settings.name,
        model=network_config(bundle_root),
        initial_ckpt=str(Path(settings.init_weights).resolve()) if settings.init_weights else None,
        min_clients=len(sites),
        key_metric="val_patient_dice",
        num_rounds=settings.rounds,
        train_script=str(client_script()),
        launch_external_process=False,
    )
    recipe.set_per_site_config({s: {"train_args": _client_args(settings, s)} for s in sites})
    if settings.privacy == "percentile":
        recipe.add_client_output_filter(
            PercentilePrivacy(percentile=settings.percentile, gamma=settings.gamma, data_kinds=[DataKind.WEIGHT_DIFF]),
            tasks=["train"],
        )
    return recipe
