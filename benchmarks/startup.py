"""Start-up cost of the TorchScript cache: a fresh process loading both bundles and predicting one real slice.

Each run is its own Python process: interpreter start, imports, ``TumorPredictor.from_bundles()`` and the
prediction of one slice (the first TIFF of the first patient that is not a ``_mask``); its wall time is taken
from outside, spawn to exit. The bundles are copies of the shipped ones without ``models/model.ts`` (as in a fresh
clone), found through ``BT_MONAI_BUNDLE_ROOT``; the cache is a temporary ``BT_MONAI_CACHE_DIR``.

Rows:

- ``cold cache``: an empty cache folder: MONAI builds both networks, ``torch.jit.script`` scripts them and they
  are saved into the cache (what the first ``infer`` after an install pays);
- ``warm cache``: the exports made by an earlier (untimed) cold run: loaded with ``torch.jit.load``, MONAI is not
  imported (every later start);
- ``no TorchScript``: the eager networks MONAI builds (``load_bundle_network(scripted=False)``, through
  ``ModelBundles.load_networks(scripted=False)``; there is no setting for it), nothing written to the cache:
  what a start costs where the cache folder cannot be written.

Columns: median (min-max) wall seconds of ``--runs`` runs each, the rows alternating between runs; whether the
process imported MONAI; what the networks were; the slice's tumor probability (the two scripted rows agree; the
eager row differs in bf16 rounding only, as its batch norms are not folded).

Run: ``.venv/bin/python benchmarks/startup.py [--runs 3]`` (on an idle machine for numbers to compare).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys
from bt_monai.inferers import TumorPredictor

mode, path = sys.argv[1], sys.argv[2]
if mode == "eager":
    from bt_monai.inferers.settings import ModelBundles, predictor_settings

    bundles = ModelBundles.locate()
    segmenter, detector, configs = bundles.load_networks(scripted=False)
    sources = {name: str(file) for name, file in bundles.inference_configs().items()}
    predictor = TumorPredictor(segmenter, detector, predictor_settings(configs, sources), bundles)
else:
    predictor = TumorPredictor.from_bundles()
(prediction,) = predictor.predict_paths([path])
networks = sorted({type(n).__name__ for n in (predictor.segmenter, predictor.detector)})
print(json.dumps({"monai": "monai" in sys.modules, "networks": networks, "p": prediction.tumor_probability}))
"""

ROWS = {"cold": "cold cache", "warm": "warm cache", "eager": "no TorchScript"}


def first_slice(data: Path) -> Path:
    for patient in sorted(p for p in data.iterdir() if p.is_dir()):
        slices = sorted(p for p in patient.glob("*.tif") if not p.name.endswith("_mask.tif"))
        if slices:
            return slices[0]
    raise SystemExit(f"no slice in {data}")


def timed(mode: str, path: Path, env: dict[str, str]) -> tuple[float, dict]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, "scripted" if mode != "eager" else "eager", str(path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{done.stderr[-3000:]}")
    return seconds, json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "lgg" / "kaggle_3m"))
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    from bt_monai.bundle import BUNDLE_FOLDERS, copy_bundle, locate_bundle

    path = first_slice(Path(args.data))
    print(f"slice: {path}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, folder in BUNDLE_FOLDERS.items():
            copy_bundle(locate_bundle(None, name), tmp / "bundles" / folder)
            (tmp / "bundles" / folder / "models" / "model.ts").unlink(missing_ok=True)
        base = {**os.environ, "BT_MONAI_BUNDLE_ROOT": str(tmp / "bundles")}
        base.pop("PYTHONPATH", None)

        def env(cache: Path) -> dict[str, str]:
            return {**base, "BT_MONAI_CACHE_DIR": str(cache)}

        timed("cold", path, env(tmp / "warm"))  # fills the warm row's cache (and the OS file cache), untimed
        times: dict[str, list[float]] = {mode: [] for mode in ROWS}
        seen: dict[str, dict] = {}
        for run in range(args.runs):
            modes = list(ROWS)
            modes = modes[run % len(modes) :] + modes[: run % len(modes)]  # alternate the order between runs
            for mode in modes:
                cache = tmp / "warm" if mode == "warm" else tmp / f"{mode}-{run}"
                seconds, seen[mode] = timed(mode, path, env(cache))
                times[mode].append(seconds)
                written = sorted(p.name for p in (cache / "torchscript").glob("*"))
                assert len(written) == (0 if mode == "eager" else 2), (mode, written)
                if mode != "warm":
                    shutil.rmtree(cache, ignore_errors=True)

    print(f"\nmachine: {os.cpu_count()} CPU threads; {args.runs} runs each, alternating; median (min-max)\n")
    print("| start | wall time (whole process) | MONAI imported | networks | tumor probability |")
    print("|---|---|---|---|---|")
    for mode, label in ROWS.items():
        t, s = times[mode], seen[mode]
        spread = f"{statistics.median(t):.2f} s ({min(t):.2f}-{max(t):.2f})"
        print(f"| {label} | {spread} | {'yes' if s['monai'] else 'no'} | {', '.join(s['networks'])} | {s['p']:.6g} |")


if __name__ == "__main__":
    main()
