"""Weight averaging (SWA over the last epochs of a run): the mean of several snapshots of one network, with its
batch-norm statistics recomputed on training data.

An average of weights is not an average of the snapshots' batch-norm statistics: the running means and
variances of the averaged network must be measured again, with the averaged weights, on training batches
(Izmailov et al. 2018, as ``torch.optim.swa_utils.update_bn``). The segmentation bundle writes the snapshots
(``epoch_snapshots`` in ``configs/train.json``) and ``configs/average_weights.json`` runs these functions
(the bundle docs show the command).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch

__all__ = ["average_weights", "epoch_snapshots", "recompute_batch_norm", "save_state_dict"]


def epoch_snapshots(folder: str | os.PathLike, last: int | None = None) -> list[Path]:
    """The per-epoch snapshot files in ``folder`` (``epoch_*=<epoch>.pt``), in epoch order; ``last``: only the last
    that many. Raises ``FileNotFoundError`` naming the folder and the setting when there is none."""
    folder = Path(folder)
    found = []
    for path in folder.glob("epoch_*.pt"):
        match = re.search(r"=(\d+)\.pt$", path.name)
        if match:
            found.append((int(match.group(1)), path))
    if not found:
        raise FileNotFoundError(
            f"no epoch snapshots (epoch_*=N.pt) in {folder}: train with --epoch_snapshots N (N > 1) to keep the "
            "weights of the last N epochs"
        )
    files = [path for _, path in sorted(found)]
    return files[-last:] if last else files


def average_weights(network: torch.nn.Module, files: Sequence[str | os.PathLike]) -> torch.nn.Module:
    """Load into ``network`` the mean of the state dicts in ``files`` (each read with ``weights_only=True``).

    Floating-point entries are averaged in float64; integer entries (``num_batches_tracked``) come from the
    last file. Batch-norm statistics averaged this way are only a start: run :func:`recompute_batch_norm`.
    """
    from bt_monai.utils import unwrap_state_dict

    if not files:
        raise ValueError("average_weights: no weights files given")
    total: dict[str, torch.Tensor] = {}
    last: dict[str, torch.Tensor] = {}
    for file in files:
        state = unwrap_state_dict(torch.load(file, map_location="cpu", weights_only=True))
        if total and set(state) != set(total):
            raise ValueError(f"{file} holds other entries than {files[0]}: not snapshots of one network")
        for key, value in state.items():
            if value.is_floating_point():
                total[key] = total.get(key, 0) + value.double()
            else:
                total.setdefault(key, value)
            last[key] = value
    averaged = {
        key: (value / len(files)).to(last[key].dtype) if last[key].is_floating_point() else last[key]
        for key, value in total.items()
    }
    network.load_state_dict(averaged)
    return network


@torch.no_grad()
def recompute_batch_norm(
    network: torch.nn.Module,
    batches: Iterable,
    prepare_batch: Callable | None = None,
    device: torch.device | str = "cpu",
    max_batches: int | None = None,
) -> int:
    """Measure every batch norm's running mean and variance again: the cumulative average over ``batches``.

    ``batches``: e.g. the bundle's ``train#dataloader``; ``prepare_batch(batch, device, non_blocking)`` (e.g.
    ``train#trainer#prepare_batch``) turns one into ``(images, labels)``; without it a batch is the images
    ``(B, C, H, W)`` or a dict with ``"image"``. The network runs in training mode (forward only, no gradients)
    and is left in eval mode. Returns the number of batches used.
    """
    norms = [m for m in network.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    momenta = {m: m.momentum for m in norms}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch counts the same
    network.train()
    used = 0
    try:
        for batch in batches:
            if max_batches is not None and used >= max_batches:
                break
            if prepare_batch is not None:
                images = prepare_batch(batch, torch.device(device), False)[0]
            else:
                images = batch["image"] if isinstance(batch, dict) else batch
            images = images.as_tensor() if hasattr(images, "as_tensor") else images
            network(images.to(device))
            used += 1
    finally:
        for m in norms:
            m.momentum = momenta[m]
        network.eval()
    if not used:
        raise ValueError("recompute_batch_norm: no batch to measure the statistics on")
    return used


def save_state_dict(network: torch.nn.Module, path: str | os.PathLike) -> Path:
    """Write ``network``'s state dict (float32, plain tensors: loads with ``weights_only=True``) atomically."""
    from bt_monai.utils.files import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    with atomic_write(path, "wb", fsync=True) as f:
        torch.save(state, f)
    print(f"averaged weights written to {path}", flush=True)
    return path
