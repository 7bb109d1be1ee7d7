#!/usr/bin/env python3
"""Writes a full-size timm MobileNetV2 with random weights (real shapes, non-trivial BatchNorm
statistics) in timm's hub layout, plus the same network as ONNX, for benchmarks and parity
checks at the real size. Nothing it writes is committed.

    python scripts/make_random_mobilenetv2.py OUT_DIR [--variant mobilenetv2_100] [--seed 0]

OUT_DIR gets config.json and model.safetensors (what `classifier serve --model OUT_DIR` reads)
and model.onnx (what scripts/reference/bench_mobilenetv2.py gives ONNX Runtime).
"""

import argparse
import json
import pathlib

import timm
import torch
from safetensors.torch import save_file

from random_weights import randomise


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=pathlib.Path)
    parser.add_argument("--variant", default="mobilenetv2_100")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--crop-pct", type=float, default=0.875)
    args = parser.parse_args()

    model = randomise(timm.create_model(args.variant, pretrained=False), seed=args.seed)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    save_file(tensors, str(args.out_dir / "model.safetensors"))
    cfg = dict(model.pretrained_cfg)
    pretrained_cfg = {
        "input_size": [3, args.input_size, args.input_size],
        "interpolation": cfg.get("interpolation", "bicubic"),
        "crop_pct": args.crop_pct,
        "crop_mode": "center",
        "mean": list(cfg.get("mean", (0.485, 0.456, 0.406))),
        "std": list(cfg.get("std", (0.229, 0.224, 0.225))),
        "num_classes": model.num_classes,
    }
    config = {
        "architecture": args.variant,
        "num_classes": model.num_classes,
        "num_features": model.num_features,
        "pretrained_cfg": pretrained_cfg,
    }
    (args.out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    example = torch.zeros(1, 3, args.input_size, args.input_size)
    torch.onnx.export(
        model,
        example,
        str(args.out_dir / "model.onnx"),
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    print(f"wrote {args.out_dir}/config.json, model.safetensors, model.onnx")


if __name__ == "__main__":
    main()
