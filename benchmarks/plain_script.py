"""The peer of ``bt-monai infer``: the script a user who knows PyTorch would write instead (speed only).

PIL reads each TIFF, takes the FLAIR channel, ``F.interpolate`` to 224x224, runs
``segmentation_models_pytorch.Unet("mobilenet_v2")`` and torchvision's ``mobilenet_v2`` (one logit) in batches
of 16 with bf16 autocast and channels-last, resizes each mask back, writes it as a PNG and one CSV. Random
weights: it measures speed, not accuracy. Run: ``python benchmarks/plain_script.py INPUT_FOLDER OUTPUT_FOLDER``.
"""

import csv
import glob
import sys
from pathlib import Path

import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

source, output = Path(sys.argv[1]), Path(sys.argv[2])
paths = sorted(Path(p) for p in glob.glob(f"{source}/**/*.tif", recursive=True) if not p.endswith("_mask.tif"))
(output / "masks").mkdir(parents=True, exist_ok=True)

segmenter = smp.Unet("mobilenet_v2", encoder_weights=None, classes=1).eval()
classifier = torchvision.models.mobilenet_v2(num_classes=1).eval()
segmenter = segmenter.to(memory_format=torch.channels_last)
classifier = classifier.to(memory_format=torch.channels_last)


def load(path):
    flair = np.asarray(Image.open(path))[..., 1].astype(np.float32) / 255.0
    x = torch.from_numpy(flair)[None, None]
    return F.interpolate(x, size=(224, 224), mode="bilinear")[0].repeat(3, 1, 1), flair.shape


rows = []
with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
    for start in range(0, len(paths), 16):
        batch = paths[start : start + 16]
        loaded = [load(p) for p in batch]
        x = torch.stack([image for image, _ in loaded]).contiguous(memory_format=torch.channels_last)
        probabilities = torch.sigmoid(classifier(x).float())[:, 0]
        maps = torch.sigmoid(segmenter(x).float())
        for path, (_, shape), p, m in zip(batch, loaded, probabilities, maps, strict=True):
            mask = F.interpolate(m[None], size=shape, mode="bilinear")[0, 0] >= 0.5
            name = output / "masks" / path.relative_to(source).with_suffix(".png")
            name.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask.numpy().astype(np.uint8) * 255).save(name)
            rows.append((str(path.relative_to(source)), f"{float(p):.6f}", int(p >= 0.5), int(mask.sum())))

with open(output / "predictions.csv", "w", newline="") as f:
    csv.writer(f).writerows([("path", "tumor_probability", "tumor", "tumor_area_px"), *rows])
print(f"{len(rows)} slices")
assert rows, f"no slices found in {source}"
