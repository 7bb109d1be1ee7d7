#!/usr/bin/env python3
"""timm's answer for a timm-layout MobileNetV2 directory, side by side with a running
`classifier serve --model DIR` on the same images.

    python scripts/reference/timm_parity.py DIR URL IMAGE... [--top-k 5] [--tolerance 1e-4]

The reference is timm itself: the network `config.json` names (`architecture`, falling back to
`mobilenetv2_100`), the weights from `model.safetensors`, and timm's evaluation transform built
from the directory's `pretrained_cfg`. Exits 1 when a top-k differs or a probability differs by
more than --tolerance.
"""

import argparse
import json
import pathlib
import sys

import timm
import torch
from PIL import Image
from safetensors.torch import load_file
from timm.data import create_transform, resolve_data_config

from served import Comparison, classify


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=pathlib.Path)
    parser.add_argument("url")
    parser.add_argument("images", type=pathlib.Path, nargs="+")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()

    config = json.loads((args.model_dir / "config.json").read_text())
    architecture = config.get("architecture", "mobilenetv2_100")
    model = timm.create_model(architecture if architecture in timm.list_models() else "mobilenetv2_100",
                              pretrained=False, num_classes=config.get("num_classes", 1000))
    model.load_state_dict(load_file(str(args.model_dir / "model.safetensors")), strict=False)
    model.eval()
    transform = create_transform(**resolve_data_config(pretrained_cfg=config["pretrained_cfg"]))
    labels = config.get("label_names") or json.loads(
        (pathlib.Path(__file__).resolve().parents[2] / "models/vision/data/imagenet_labels.json").read_text())
    comparison = Comparison("timm", args.tolerance)
    print(f"timm {timm.__version__}, {architecture}, transform: {' | '.join(str(t) for t in transform.transforms)}")
    for path in args.images:
        with torch.no_grad():
            probs = model(transform(Image.open(path).convert("RGB")).unsqueeze(0)).softmax(-1)[0]
        top = probs.topk(args.top_k)
        reference = [(labels[int(i)], float(p)) for p, i in zip(*top)]
        comparison.add(path.name, reference, classify(args.url, path, args.top_k))
    sys.exit(comparison.finish())


if __name__ == "__main__":
    main()
