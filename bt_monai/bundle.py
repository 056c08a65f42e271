"""The shipped MONAI bundles: where they are, how their networks and weights load, how to copy one for training.

bt_monai ships two bundles (configs, docs, trained ``models/model.pt``), inside the installed package as
``bt_monai.shipped_bundles`` (in a source checkout: the repository's ``bundle/`` folder):

- ``segmentation``: ``brain_tumor_segmentation`` (MobileNetV2 U-Net);
- ``detection``: ``brain_tumor_classification`` (MobileNetV2 classifier; the folder keeps the word
  "classification", which MONAI Label reads as the model type). ``classification`` names it too.

:func:`locate_bundle` finds one: an explicit folder, else ``$BT_MONAI_BUNDLE_ROOT/<folder>`` (read at each
call), else the installed package's copy. Training writes into the bundle folder it runs in, so a user trains
in a :func:`copy_bundle` copy; :func:`refuse_shipped_ckpt_dir` stops a run that would overwrite the shipped
weights.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import warnings
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

__all__ = [
    "BUNDLE_FOLDERS",
    "BUNDLE_ROOT_ENV",
    "BundleNotFoundError",
    "WeightsError",
    "bundle_name",
    "bundle_metadata",
    "bundle_weights",
    "copy_bundle",
    "is_shipped",
    "list_bundles",
    "load_bundle_network",
    "load_weights",
    "locate_bundle",
    "refuse_shipped_ckpt_dir",
    "report_training_outputs",
    "shipped_bundles_root",
    "torchscript_cache_file",
]

BUNDLE_FOLDERS = {"segmentation": "brain_tumor_segmentation", "detection": "brain_tumor_classification"}
"""The shipped bundles: name -> folder."""

_ALIASES = {"classification": "detection", **{folder: name for name, folder in BUNDLE_FOLDERS.items()}}
BUNDLE_ROOT_ENV = "BT_MONAI_BUNDLE_ROOT"
SHIPPED_PACKAGE = "bt_monai.shipped_bundles"
# What a copy for training takes: the bundle itself, not an earlier run's outputs.
_COPY_IGNORE = shutil.ignore_patterns(
    "eval", "demo_data", "demo_data.partial", "__pycache__", "checkpoint_*.pt", "model.*.pt", ".*"
)


class BundleNotFoundError(FileNotFoundError):
    """No bundle where one was looked for; the message says where it looked and what to do."""


class WeightsError(RuntimeError):
    """A weights file that is missing, unsafe, or does not fit the network; the message names the file."""


def bundle_name(name: str) -> str:
    """The canonical name (``segmentation`` or ``detection``) of a bundle name, alias or folder name."""
    key = str(name).strip().lower()
    if key in BUNDLE_FOLDERS:
        return key
    if key in _ALIASES:
        return _ALIASES[key]
    choices = ", ".join(sorted([*BUNDLE_FOLDERS, *_ALIASES]))
    raise ValueError(f"unknown bundle {name!r}: use one of {choices}")


def shipped_bundles_root() -> Path:
    """The folder of the bundles installed with the package (a checkout's ``bundle/`` in an editable install)."""
    return Path(str(resources.files(SHIPPED_PACKAGE)))


def _search_roots() -> list[tuple[str, Path]]:
    roots = []
    env = os.environ.get(BUNDLE_ROOT_ENV)
    if env:
        roots.append((f"${BUNDLE_ROOT_ENV}", Path(env).expanduser()))
    try:
        roots.append(("the installed bt_monai package", shipped_bundles_root()))
    except (ModuleNotFoundError, TypeError):  # a package installed without its data
        pass
    return roots


def _check_bundle(folder: Path) -> Path:
    config = folder / "configs" / "inference.json"
    if not config.is_file():
        raise BundleNotFoundError(f"not a bt_monai bundle (no {config}); give a bundle folder")
    return folder


def locate_bundle(
    bundle: str | os.PathLike | None = None, name: str = "segmentation", search: Sequence[str | os.PathLike] = ()
) -> Path:
    """The folder of a bundle.

    ``bundle``: an existing folder (used as it is), a bundle name (``segmentation``, ``detection``,
    ``classification`` or a folder name), or None for the ``name`` bundle. A name is looked up in
    ``$BT_MONAI_BUNDLE_ROOT`` (read now, not at import), then in the installed package.

    ``search``: folders holding bundles, looked in first, in their order: ``<folder>/<bundle>`` (any folder
    name) or ``<folder>/<the name's folder>`` wins when it holds ``configs/inference.json`` (the MONAI Label
    app's ``model/`` folder and ``bundles_dir``). Without it nothing changes.
    """
    roots = [(str(Path(root).expanduser()), Path(root).expanduser()) for root in search]
    if bundle is not None:
        for _, root in roots:
            if (root / str(bundle) / "configs" / "inference.json").is_file():
                return root / str(bundle)
        path = Path(bundle).expanduser()
        if path.exists() or os.sep in str(bundle) or str(bundle).startswith("."):
            return _check_bundle(path)
        try:
            name = bundle_name(str(bundle))
        except ValueError as e:
            where = f"not in {' nor '.join(label for label, _ in roots)}, " if roots else ""
            raise BundleNotFoundError(f"{bundle}: no such bundle folder, {where}and {e}") from None
    folder = BUNDLE_FOLDERS[bundle_name(name)]
    looked = []
    for label, root in roots + _search_roots():
        if (root / folder / "configs" / "inference.json").is_file():
            return root / folder
        looked.append(f"{label} ({root})")
    raise BundleNotFoundError(
        f"no {folder} bundle in {' or '.join(looked) or 'any known place'}: reinstall bt_monai "
        f"(pip install bt_monai), set {BUNDLE_ROOT_ENV} to a folder holding {folder}/, or give the bundle folder"
    )


def list_bundles() -> list[dict]:
    """The bundles :func:`locate_bundle` finds by name: name, folder, version and whether weights are there."""
    rows = []
    for name in BUNDLE_FOLDERS:
        try:
            folder = locate_bundle(name=name)
        except BundleNotFoundError:
            rows.append({"name": name, "path": None, "version": None, "weights": False})
            continue
        weights = (folder / "models" / "model.pt").is_file()
        rows.append(
            {"name": name, "path": str(folder), "version": bundle_metadata(folder).get("version"), "weights": weights}
        )
    return rows


def copy_bundle(bundle: str | os.PathLike, destination: str | os.PathLike) -> Path:
    """Copy a bundle (configs, docs, LICENSE, ``models/model.pt``) into ``destination``, for training there.

    Like ``monai.bundle download`` puts a Zoo bundle in a folder of the user's. ``destination`` must not exist
    or be an empty folder: nothing of the user's is overwritten. An earlier run's outputs are not copied.
    """
    source = locate_bundle(bundle)
    destination = Path(destination).expanduser()
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise FileExistsError(f"{destination} exists and is not an empty folder: give a new or empty folder")
    if destination.exists():
        destination.rmdir()
    shutil.copytree(source, destination, ignore=_COPY_IGNORE)
    for path in [destination, *destination.rglob("*")]:  # installed files may be read-only
        path.chmod(path.stat().st_mode | 0o200)
    return destination


def is_shipped(path: str | os.PathLike) -> bool:
    """Whether ``path`` lies inside the installed package's bundles (or a checkout's ``bundle/`` folder)."""
    try:
        root = os.path.realpath(shipped_bundles_root())
    except (ModuleNotFoundError, TypeError):
        return False
    return Path(os.path.realpath(Path(path).expanduser())).is_relative_to(root)


def refuse_shipped_ckpt_dir(ckpt_dir: str | os.PathLike, overwrite_shipped: bool = False) -> bool:
    """Stop a training run whose ``ckpt_dir`` is in the shipped bundles, unless ``overwrite_shipped``.

    Training there would replace the weights every later ``infer`` uses. Returns True when the run may go on.
    """
    if not isinstance(overwrite_shipped, bool):
        raise ValueError(f"overwrite_shipped must be True or False, got {overwrite_shipped!r}")
    if is_shipped(ckpt_dir) and not overwrite_shipped:
        raise PermissionError(
            f"{ckpt_dir} holds the shipped weights of bt_monai: train in a copy instead "
            "(bt-monai bundle copy segmentation MY_BUNDLE, then run from MY_BUNDLE), or give --ckpt_dir "
            "elsewhere; --overwrite_shipped True replaces the shipped weights on purpose"
        )
    return True


def load_weights(network, path: str | os.PathLike):
    """Load a state dict file into ``network`` (float32 whatever the stored precision), safely.

    The file is read with ``torch.load(weights_only=True)``: a checkpoint carrying code (a pickle that
    would import or call anything) is refused without running it. A state dict of another architecture
    fails with the missing, unexpected and mis-shaped keys named.
    """
    import torch

    from bt_monai.utils import unwrap_state_dict

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise WeightsError(f"{path} was refused: it is not a plain tensor checkpoint ({e})") from e
    except Exception as e:  # truncated or not a torch file at all
        raise WeightsError(f"{path} is not a readable PyTorch weights file ({e})") from e
    state = unwrap_state_dict(state)
    if not isinstance(state, dict):
        raise WeightsError(f"{path} does not hold a state dict")
    own = network.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mis_shaped = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or mis_shaped:
        parts = [
            f"{label} {len(keys)} (e.g. {', '.join(keys[:4])})"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped))
            if keys
        ]
        raise WeightsError(
            f"{path} does not fit {type(network).__name__}: " + "; ".join(parts) + ". Is it the other bundle's model?"
        )
    network.load_state_dict(state)  # copies into the network's float32 parameters
    return network


def _literal(value) -> bool:
    """A config value MONAI's ConfigParser would return as it is (no ``$`` expression, ``@`` or ``%`` reference)."""
    if isinstance(value, str):
        return not value.startswith(("$", "@", "%"))
    if isinstance(value, list):
        return all(_literal(v) for v in value)
    if isinstance(value, dict):
        return all(_literal(v) for v in value.values())
    return True


def _load_export(path: Path, network_def: dict):
    """The TorchScript file ``path`` when it was exported from this very ``network_def``, else None.

    ``python -m monai.bundle ckpt_export ... --config_file configs/inference.json`` stores the config in the
    TorchScript file (``_extra_files``, as ``inference.json``), and so does :func:`_cache_export`; a file
    exported from another ``network_def`` (or without the config), or that does not load, is not used.
    """
    import torch

    if not path.is_file():
        return None
    extra = {"inference.json": ""}
    try:
        with warnings.catch_warnings():  # "torch.jit.load is deprecated": the bundle format is MONAI's choice
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            network = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        exported = json.loads(extra["inference.json"] or "{}").get("network_def")
    except Exception:  # unreadable, truncated or from another torch: the network is built from its definition
        return None
    return network if exported == network_def else None


def _scripted_network(folder: Path, network_def: dict):
    """The bundle's ``models/model.ts`` when it was exported from this very ``network_def``, else None."""
    return _load_export(folder / "models" / "model.ts", network_def)


def _code_versions(network_def: dict) -> dict:
    """What the scripted graph of ``network_def`` depends on besides the definition itself: the versions of
    torch, torchvision, MONAI and bt_monai, and for a ``bt_monai.<layer>`` target the SHA-256 of that layer's
    sources (a checkout's code changes without its version changing). Read without importing MONAI."""
    import hashlib
    from importlib import metadata

    import torch

    from bt_monai import __version__

    versions: dict = {"torch": torch.__version__, "bt_monai": __version__}
    for package in ("torchvision", "monai"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    parts = str(network_def.get("_target_", "")).split(".")
    layer = Path(__file__).resolve().parent / parts[1] if len(parts) > 2 and parts[0] == "bt_monai" else None
    if layer is not None and layer.is_dir():
        digest = hashlib.sha256()
        for source in sorted(layer.rglob("*.py")):
            digest.update(source.relative_to(layer).as_posix().encode() + b"\0" + source.read_bytes())
        versions["sources"] = digest.hexdigest()
    return versions


def torchscript_cache_file(network_def: dict) -> Path:
    """Where the TorchScript export of ``network_def`` is cached: ``<cache>/torchscript/<class>-<hash>.ts``.

    ``<cache>``: :func:`bt_monai.utils.cache_dir` (``$BT_MONAI_CACHE_DIR``, else ``$XDG_CACHE_HOME/bt_monai``,
    else ``~/.cache/bt_monai``). The hash covers the definition and :func:`_code_versions`, so another torch,
    MONAI or bt_monai gets its own file. Nothing is created.
    """
    import hashlib

    from bt_monai.utils import cache_dir

    key = json.dumps({"network_def": network_def, **_code_versions(network_def)}, sort_keys=True)
    target = str(network_def.get("_target_", "network")).rsplit(".", 1)[-1]
    name = "".join(c if c.isalnum() or c in "_-" else "_" for c in target)[:40] or "network"
    return cache_dir("torchscript") / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:24]}.ts"


_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _cache_file(network_def: dict) -> Path | None:
    """:func:`torchscript_cache_file`, or None (with one warning) where there is no cache (e.g. no home folder)."""
    try:
        return torchscript_cache_file(network_def)
    except (OSError, RuntimeError) as e:  # Path.home() raises RuntimeError when there is no home
        from bt_monai.utils import CACHE_DIR_ENV

        _warn_once("no cache", f"no TorchScript cache ({e}): running the eager network; set {CACHE_DIR_ENV}")
        return None


def _cache_export(network, config: dict, path: Path):
    """``network`` (built from ``config["network_def"]``) scripted and saved into the cache file ``path``, and
    that scripted network; the eager ``network`` itself, with one warning, when the cache folder cannot be
    written or the network cannot be scripted: the cache never fails inference.

    Saved as MONAI's ``ckpt_export`` saves (the config as the extra file ``inference.json``), atomically: a
    temporary in the cache folder, then ``os.replace``, so concurrent processes never read half a file.
    """
    import torch

    from bt_monai.utils import CACHE_DIR_ENV, atomic_write

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(path.parent, os.W_OK):
            raise PermissionError(f"no write permission on {path.parent}")
    except OSError as e:
        _warn_once(
            str(path.parent),
            f"cannot write the TorchScript cache folder {path.parent} ({e}): running the eager network, which starts "
            f"slower; set {CACHE_DIR_ENV} to a writable folder",
        )
        return network
    try:
        with warnings.catch_warnings():  # "torch.jit.script is deprecated": TorchScript is MONAI's export format
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            scripted = torch.jit.script(network)
            with atomic_write(path) as f:
                torch.jit.save(scripted, f, _extra_files={"inference.json": json.dumps(config)})
    except Exception as e:  # not scriptable, a full disk, ...
        _warn_once(
            str(path),
            f"could not save the TorchScript export of {config['network_def'].get('_target_')} to {path} ({e}): "
            f"running the eager network; set {CACHE_DIR_ENV} to a writable folder if the folder is the cause",
        )
        return network
    return scripted


def bundle_metadata(folder: str | os.PathLike) -> dict:
    """A bundle folder's ``configs/metadata.json``."""
    return json.loads((Path(folder) / "configs" / "metadata.json").read_text())


def bundle_weights(folder: str | os.PathLike, weights: str | os.PathLike | None = None) -> Path:
    """The weights file a bundle's network loads: ``weights`` when given, else the folder's ``models/model.pt``."""
    folder = Path(folder)
    if weights is None and not (folder / "models" / "model.pt").is_file():
        raise WeightsError(
            f"no trained weights in {folder / 'models' / 'model.pt'}: train the bundle (see {folder / 'docs'}"
            "/README.md) or give a weights file"
        )
    return Path(weights or folder / "models" / "model.pt")


def load_bundle_network(
    bundle: str | os.PathLike | None,
    weights: str | os.PathLike | None = None,
    device="cpu",
    name: str = "segmentation",
    scripted: bool = True,
    keys: Sequence[str] = (),
):
    """The bundle's ``network_def`` with weights loaded, in eval mode, and the values of ``keys`` in its config.

    ``bundle``: as :func:`locate_bundle` takes it (None: the ``name`` bundle). Returns ``(network, values)``:
    ``values`` holds those of ``keys`` its ``configs/inference.json`` defines (resolved), plus ``weights`` (the
    file loaded) and ``bundle`` (the folder). :class:`bt_monai.inferers.PredictorSettings` says which keys the
    predictor reads.

    With ``scripted`` the network is a TorchScript export of the same ``network_def``: it needs neither MONAI
    nor the network's Python code, which makes a cold start seconds shorter. The bundle's ``models/model.ts``
    (``python -m monai.bundle ckpt_export``) is used first; else the export cached in
    :func:`torchscript_cache_file`, made on first use (MONAI builds the network, ``torch.jit.script`` scripts
    it); where the cache cannot be written, the eager network, with a warning. The weights are loaded from
    ``weights`` (default ``models/model.pt``) either way, so a stale export can never bring old weights.
    """
    folder = locate_bundle(bundle, name)
    config_file = folder / "configs" / "inference.json"
    config = json.loads(config_file.read_text())
    weights = bundle_weights(folder, weights)
    wanted = [key for key in keys if key in config]
    network_def = config.get("network_def")
    network = _scripted_network(folder, network_def) if scripted else None
    cache_file = None  # a definition with expressions or references is not cached: its JSON is not the network
    if network is None and scripted and isinstance(network_def, dict) and _literal(network_def):
        cache_file = _cache_file(network_def)
        network = None if cache_file is None else _load_export(cache_file, network_def)
    if network is not None and all(_literal(config[key]) for key in wanted):
        settings = {key: config[key] for key in wanted}
    else:  # expressions or references in the config, or no usable export: MONAI resolves the config
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(str(config_file))
        parser["bundle_root"] = str(folder)
        if network is None:
            network = parser.get_parsed_content("network_def")
            if cache_file is not None:  # no export yet: made now, for the next start
                network = _cache_export(network, config, cache_file)
        settings = {key: parser.get_parsed_content(key) for key in wanted}
    load_weights(network, weights)
    settings["weights"] = str(weights)
    settings["bundle"] = str(folder)
    return network.to(device).eval(), settings


def report_training_outputs(ckpt_dir: str | os.PathLike, output_dir: str | os.PathLike) -> str:
    """Print (and return) where a finished training run put its outputs: the run's last line."""
    ckpt_dir, output_dir = Path(ckpt_dir).resolve(), Path(output_dir).resolve()
    message = (
        f"training finished: best model {ckpt_dir / 'model.pt'}, resumable state {ckpt_dir / 'checkpoint_latest.pt'}"
        f", TensorBoard logs in {output_dir} (bt-monai curves {output_dir} --output curves.png draws them)"
    )
    print(message, flush=True)
    return message
