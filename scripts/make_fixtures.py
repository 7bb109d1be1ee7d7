#!/usr/bin/env python3
"""Writes the committed test fixtures, bit for bit, from the PyTorch references.

    python scripts/make_fixtures.py          # needs torch, torchvision, timm, safetensors, pillow

- models/vision/data/imagenet_labels.json: ImageNet-1k class names (torchvision's metadata).
- tests/fixtures/png-bomb-50000x50000.png: a PNG header claiming 50000x50000 pixels.
- tests/fixtures/mobilenetv2-tiny/: a tiny MobileNetV2 built by timm (width 0.25, every block
  of the real architecture, random weights, non-trivial BatchNorm statistics) in timm's layout,
  its config.json, a few synthetic images, and reference.json: timm's logits and probabilities
  for each image through timm's own evaluation transform.
"""

import io
import json
import pathlib

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from random_weights import randomise

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "mobilenetv2-tiny"
LABELS = ["daisy", "dandelion", "roses", "sunflowers", "tulips", "oak", "maple", "pine", "fern", "moss"]


def imagenet_labels():
    from torchvision.models import MobileNet_V2_Weights

    names = MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]
    assert len(names) == 1000
    path = ROOT / "models" / "vision" / "data" / "imagenet_labels.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(names, indent=0, ensure_ascii=False) + "\n")


def tiny_mobilenetv2():
    from functools import partial

    from timm.models._efficientnet_builder import decode_arch_def, round_channels
    from timm.models.efficientnet import EfficientNet

    arch_def = [
        ["ds_r1_k3_s1_c16"],
        ["ir_r2_k3_s2_e6_c24"],
        ["ir_r3_k3_s2_e6_c32"],
        ["ir_r4_k3_s2_e6_c64"],
        ["ir_r3_k3_s1_e6_c96"],
        ["ir_r3_k3_s2_e6_c160"],
        ["ir_r1_k3_s1_e6_c320"],
    ]
    model = EfficientNet(
        block_args=decode_arch_def(arch_def),
        num_features=64,
        stem_size=32,
        round_chs_fn=partial(round_channels, multiplier=0.25),
        act_layer=torch.nn.ReLU6,
        num_classes=len(LABELS),
    )
    return randomise(model, seed=0, spread=0.2)


def synthetic_images():
    """Smooth colour fields with shapes: real-looking statistics, small PNG files."""
    rng = np.random.default_rng(0)
    images = {}
    for i, (w, h) in enumerate([(224, 224), (224, 224), (224, 224), (300, 200)]):
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        a, b, c = rng.uniform(0.01, 0.06, size=3)
        r = 127 + 120 * np.sin(a * x + b * y)
        g = 127 + 120 * np.cos(b * x - c * y + i)
        bl = 127 + 120 * np.sin(c * (x + y) + 2 * i)
        cx, cy, radius = rng.uniform(40, 180), rng.uniform(40, 160), rng.uniform(20, 60)
        disc = (x - cx) ** 2 + (y - cy) ** 2 < radius**2
        r[disc], g[disc], bl[disc] = 250, 30 * i, 40
        pixels = np.clip(np.stack([r, g, bl], axis=-1), 0, 255).astype(np.uint8)
        images[f"synthetic-{i}-{w}x{h}.png"] = Image.fromarray(pixels, "RGB")
    return images


FLOWERS = ROOT.parent / "shared" / "data" / "flowers5"
FLOWERS_CFG = {"input_size": [3, 160, 160], "interpolation": "bicubic", "crop_pct": 0.875, "crop_mode": "center",
               "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def flowers_reference(model):
    """timm's logits on real photos with a resizing transform (256 -> 182 bicubic, crop 160):
    the preprocessing parity check. Written only where ../shared/data/flowers5 exists."""
    if not FLOWERS.is_dir():
        print(f"skipped flowers-reference.json: {FLOWERS} is absent")
        return
    from timm.data import create_transform, resolve_data_config

    transform = create_transform(**resolve_data_config(pretrained_cfg=FLOWERS_CFG))
    photos = sorted(p.relative_to(FLOWERS).as_posix() for p in FLOWERS.glob("*/*.jpg"))[::400]
    reference = {"pretrained_cfg": FLOWERS_CFG, "photos": {}}
    for rel in photos:
        with torch.no_grad():
            x = transform(Image.open(FLOWERS / rel).convert("RGB")).unsqueeze(0)
            reference["photos"][rel] = [float(v) for v in model(x)[0]]
    (FIXTURE / "flowers-reference.json").write_text(json.dumps(reference, indent=1) + "\n")


def png_bomb():
    """A valid 8-bit RGB PNG header claiming 50000x50000 pixels, with one tiny IDAT chunk."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 50000, 50000, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b"")
    (ROOT / "tests" / "fixtures" / "png-bomb-50000x50000.png").write_bytes(png)


def main():
    torch.manual_seed(0)
    png_bomb()
    imagenet_labels()
    FIXTURE.mkdir(parents=True, exist_ok=True)
    model = tiny_mobilenetv2()
    tensors = {k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    save_file(tensors, str(FIXTURE / "model.safetensors"))
    pretrained_cfg = {
        "input_size": [3, 224, 224],
        "interpolation": "bicubic",
        "crop_pct": 1.0,
        "crop_mode": "center",
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "num_classes": len(LABELS),
    }
    config = {
        "architecture": "mobilenetv2_tiny",
        "num_classes": len(LABELS),
        "num_features": 64,
        "pretrained_cfg": pretrained_cfg,
        "label_names": LABELS,
    }
    (FIXTURE / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    from timm.data import create_transform, resolve_data_config

    transform = create_transform(**resolve_data_config(pretrained_cfg=pretrained_cfg))
    images_dir = FIXTURE / "images"
    images_dir.mkdir(exist_ok=True)
    reference = {"transform": str(transform).splitlines(), "images": {}}
    for name, image in synthetic_images().items():
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=False, compress_level=9)
        (images_dir / name).write_bytes(buffer.getvalue())
        with torch.no_grad():
            x = transform(Image.open(images_dir / name).convert("RGB")).unsqueeze(0)
            features = model.forward_head(model.forward_features(x), pre_logits=True)
            logits = model.forward_head(model.forward_features(x))
        probs = logits.softmax(-1)[0]
        top5 = probs.topk(5)
        reference["images"][name] = {
            "logits": [float(v) for v in logits[0]],
            "probabilities": [float(v) for v in probs],
            "top5": [{"index": int(i), "label": LABELS[int(i)], "score": float(s)} for s, i in zip(*top5)],
            "features_head": [float(v) for v in features[0, :8]],
        }
    (FIXTURE / "reference.json").write_text(json.dumps(reference, indent=1) + "\n")
    flowers_reference(model)


if __name__ == "__main__":
    main()
