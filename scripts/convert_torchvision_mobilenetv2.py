#!/usr/bin/env python3
"""Converts a torchvision `mobilenet_v2` state dict to the canonical timm layout the classifier
serves: model.safetensors and config.json.

    python scripts/convert_torchvision_mobilenetv2.py STATE_DICT OUTPUT_DIR \\
        [--resize-size 256] [--crop-size 224] [--interpolation bilinear]

STATE_DICT is a `.pth` (torch.save of `model.state_dict()`) or a `.safetensors` file. The
preprocessing defaults are torchvision's IMAGENET1K_V1 transform (resize the shorter side to
256 with bilinear, centre crop 224, ImageNet mean and std); pass --resize-size 232 for
IMAGENET1K_V2. Both layouts use PyTorch's BatchNorm epsilon (1e-5) and symmetric padding.
"""

import argparse
import json
import pathlib
import sys

import torch
from safetensors.torch import load_file, save_file

STAGE_REPEATS = [2, 3, 4, 3, 3, 1]


def bn(state, src, dst):
    return {f"{dst}.{field}": state[f"{src}.{field}"] for field in ("weight", "bias", "running_mean", "running_var")}


def convert(state):
    out = {"conv_stem.weight": state["features.0.0.weight"], **bn(state, "features.0.1", "bn1")}
    out["blocks.0.0.conv_dw.weight"] = state["features.1.conv.0.0.weight"]
    out.update(bn(state, "features.1.conv.0.1", "blocks.0.0.bn1"))
    out["blocks.0.0.conv_pw.weight"] = state["features.1.conv.1.weight"]
    out.update(bn(state, "features.1.conv.2", "blocks.0.0.bn2"))
    feature = 2
    for stage, repeats in enumerate(STAGE_REPEATS, start=1):
        for index in range(repeats):
            f, t = f"features.{feature}.conv", f"blocks.{stage}.{index}"
            out[f"{t}.conv_pw.weight"] = state[f"{f}.0.0.weight"]
            out.update(bn(state, f"{f}.0.1", f"{t}.bn1"))
            out[f"{t}.conv_dw.weight"] = state[f"{f}.1.0.weight"]
            out.update(bn(state, f"{f}.1.1", f"{t}.bn2"))
            out[f"{t}.conv_pwl.weight"] = state[f"{f}.2.weight"]
            out.update(bn(state, f"{f}.3", f"{t}.bn3"))
            feature += 1
    out["conv_head.weight"] = state[f"features.{feature}.0.weight"]
    out.update(bn(state, f"features.{feature}.1", "bn2"))
    if "classifier.1.weight" in state:
        out["classifier.weight"] = state["classifier.1.weight"]
        out["classifier.bias"] = state["classifier.1.bias"]
    return {k: v.detach().to(torch.float32).contiguous() for k, v in out.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("state_dict", type=pathlib.Path)
    parser.add_argument("output", type=pathlib.Path)
    parser.add_argument("--resize-size", type=int, default=256)
    parser.add_argument("--crop-size", type=int, default=224)
    parser.add_argument("--interpolation", default="bilinear", choices=["bilinear", "bicubic", "nearest"])
    args = parser.parse_args()

    if args.state_dict.suffix == ".safetensors":
        state = load_file(str(args.state_dict))
    else:
        state = torch.load(args.state_dict, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    try:
        tensors = convert(state)
    except KeyError as e:
        print(f"error: {args.state_dict} is not a torchvision mobilenet_v2 state dict (no {e})", file=sys.stderr)
        sys.exit(2)
    classes = tensors["classifier.bias"].shape[0] if "classifier.bias" in tensors else None
    config = {
        "architecture": "mobilenetv2 (converted from torchvision)",
        "num_features": tensors["conv_head.weight"].shape[0],
        "pretrained_cfg": {
            "input_size": [3, args.crop_size, args.crop_size],
            "interpolation": args.interpolation,
            "crop_pct": args.crop_size / args.resize_size,
            "crop_mode": "center",
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
        },
    }
    if classes is not None:
        config["num_classes"] = classes
    args.output.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.output / "model.safetensors"))
    (args.output / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"wrote {args.output}/model.safetensors ({len(tensors)} tensors) and config.json")


if __name__ == "__main__":
    main()
