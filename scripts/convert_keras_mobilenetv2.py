#!/usr/bin/env python3
"""Converts a Keras MobileNetV2 (.h5) to the canonical timm layout the classifier serves:
model.safetensors (backbone + the Dense head, if any, as `classifier`) and config.json.

    python scripts/convert_keras_mobilenetv2.py INPUT.h5 OUTPUT_DIR [--labels labels.txt] [--input-size N]

INPUT is either a whole model (`model.save`, Keras 2 or 3: the config and `model_weights`) or
a weights-only file (`model.save_weights`, the layout of Keras Applications' downloads such as
`mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5`: one group per layer at the
root, no config). A weights-only file has no input size in it: it is read from the file name's
`_<size>.h5` / `_<size>_no_top.h5` ending, else `--input-size`, else 224 (Keras Applications'
default; the weights are the same at every size, only the preprocessing's resize differs).
Its Dense layer, if any (a file with the top), becomes the classifier with Keras Applications'
softmax; without one the model serves features, and a head trained by `classifier train` on it
classifies.

Needs h5py, numpy and safetensors only (no TensorFlow). What differs from PyTorch is recorded
in config.json: BatchNorm epsilon (Keras: 1e-3), TensorFlow "same" padding, the input size,
and the preprocessing Keras pipelines use: squash-resize to the input size (bicubic, as PIL's
`Image.resize` default) and scaling to [-1, 1] (`x / 127.5 - 1`, i.e. mean = std = 0.5).
Label lines like `n02085620-Chihuahua` become `Chihuahua` (the WordNet id is dropped).
Keras kernels are HWIO (depthwise: H W C 1); timm's are OIHW (depthwise: C 1 H W).
"""

import argparse
import json
import pathlib
import re
import sys

import h5py
import numpy as np
from safetensors.numpy import save_file

# MobileNetV2's stages after the first block: (number of blocks) for stages 1..6.
STAGE_REPEATS = [2, 3, 4, 3, 3, 1]


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def layer_weights(root):
    """Maps layer name -> {weight name -> array}, whatever the nesting of the Keras file."""
    layers = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            parts = name.split("/")
            # Keras 3: <model>/<layer>/<weight>; Keras 2: <layer>/<layer>/<weight>:0.
            layer, weight = parts[-2], parts[-1].split(":")[0]
            layers.setdefault(layer, {})[weight] = np.asarray(obj)

    root.visititems(visit)
    return layers


def conv(layers, name):
    kernel = layers[name]["kernel"]  # H W I O
    return np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))


def depthwise(layers, name):
    kernel = layers[name]["depthwise_kernel" if "depthwise_kernel" in layers[name] else "kernel"]  # H W C 1
    return np.ascontiguousarray(kernel.transpose(2, 3, 0, 1))


def batch_norm(layers, name, prefix):
    bn = layers[name]
    return {
        f"{prefix}.weight": bn["gamma"],
        f"{prefix}.bias": bn["beta"],
        f"{prefix}.running_mean": bn["moving_mean"],
        f"{prefix}.running_var": bn["moving_variance"],
    }


WEIGHTS_ONLY_SIZE = re.compile(r"_(96|128|160|192|224)(_no_top)?\.h5$")


def model_facts(h5, path, layers):
    """Input size (None when unknown), BatchNorm epsilon and the Dense layers: from the model's
    own config, or for a weights-only file from its name and its weights (MobileNetV2's Keras
    definition fixes epsilon at 1e-3)."""
    if "model_config" not in h5.attrs:
        match = WEIGHTS_ONLY_SIZE.search(path.name)
        dense = [{"name": name} for name, weights in layers.items() if "kernel" in weights and weights["kernel"].ndim == 2]
        return (int(match.group(1)) if match else None), 1e-3, dense
    config = json.loads(h5.attrs["model_config"])
    size, eps, dense = None, 1e-3, []

    def walk(layer):
        nonlocal size, eps
        cfg = layer.get("config", {})
        shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
        if layer.get("class_name") == "InputLayer" and shape and size is None:
            size = shape[1]
        if layer.get("class_name") == "BatchNormalization":
            eps = cfg.get("epsilon", eps)
        if layer.get("class_name") == "Dense":
            dense.append(cfg)
        for child in cfg.get("layers", []) if isinstance(cfg, dict) else []:
            walk(child)

    walk(config)
    return size, eps, dense


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", type=pathlib.Path, help="Keras MobileNetV2 model (.h5)")
    parser.add_argument("output", type=pathlib.Path, help="directory to write")
    parser.add_argument("--labels", type=pathlib.Path, help="class names, one a line, in output order")
    parser.add_argument("--input-size", type=int, help="override the input size read from the model")
    args = parser.parse_args()

    try:
        h5 = h5py.File(args.input, "r")
    except OSError as e:
        fail(f"cannot read {args.input}: {e}")
    layers = layer_weights(h5["model_weights"] if "model_weights" in h5 else h5)
    if "Conv1" not in layers:
        fail("no `Conv1` layer: this is not a Keras MobileNetV2")
    size, eps, dense_layers = model_facts(h5, args.input, layers)
    if args.input_size is None and size is None:
        size = 224
        print(f"note: {args.input.name} is weights only and its name gives no input size: "
              f"224, Keras Applications' default (pass --input-size for another)", file=sys.stderr)
    size = args.input_size or size
    if size not in (96, 128, 160, 192, 224):
        fail(f"unsupported or unknown input size {size}; pass --input-size")
    if len(dense_layers) > 1:
        fail(f"the head has {len(dense_layers)} Dense layers; only a single Dense classifier converts")

    tensors = {"conv_stem.weight": conv(layers, "Conv1"), **batch_norm(layers, "bn_Conv1", "bn1")}
    tensors["blocks.0.0.conv_dw.weight"] = depthwise(layers, "expanded_conv_depthwise")
    tensors.update(batch_norm(layers, "expanded_conv_depthwise_BN", "blocks.0.0.bn1"))
    tensors["blocks.0.0.conv_pw.weight"] = conv(layers, "expanded_conv_project")
    tensors.update(batch_norm(layers, "expanded_conv_project_BN", "blocks.0.0.bn2"))
    keras_block = 1
    for stage, repeats in enumerate(STAGE_REPEATS, start=1):
        for index in range(repeats):
            k, t = f"block_{keras_block}", f"blocks.{stage}.{index}"
            tensors[f"{t}.conv_pw.weight"] = conv(layers, f"{k}_expand")
            tensors.update(batch_norm(layers, f"{k}_expand_BN", f"{t}.bn1"))
            tensors[f"{t}.conv_dw.weight"] = depthwise(layers, f"{k}_depthwise")
            tensors.update(batch_norm(layers, f"{k}_depthwise_BN", f"{t}.bn2"))
            tensors[f"{t}.conv_pwl.weight"] = conv(layers, f"{k}_project")
            tensors.update(batch_norm(layers, f"{k}_project_BN", f"{t}.bn3"))
            keras_block += 1
    tensors["conv_head.weight"] = conv(layers, "Conv_1")
    tensors.update(batch_norm(layers, "Conv_1_bn", "bn2"))

    config = {
        "architecture": f"mobilenetv2 (converted from Keras {args.input.name})",
        "bn_eps": eps,
        "padding": "tf_same",
        "pretrained_cfg": {
            "input_size": [3, size, size],
            "interpolation": "bicubic",
            "crop_pct": 1.0,
            "crop_mode": "squash",
            "mean": [0.5, 0.5, 0.5],
            "std": [0.5, 0.5, 0.5],
        },
        "num_features": int(tensors["conv_head.weight"].shape[0]),
    }
    if dense_layers:
        dense_name = dense_layers[0]["name"]
        tensors["classifier.weight"] = np.ascontiguousarray(layers[dense_name]["kernel"].T)
        tensors["classifier.bias"] = layers[dense_name]["bias"]
        classes = tensors["classifier.bias"].shape[0]
        config["num_classes"] = int(classes)
        config["pretrained_cfg"]["num_classes"] = int(classes)
        if dense_layers[0].get("activation") not in ("softmax", "linear", None):
            fail(f"the Dense head's activation is {dense_layers[0]['activation']}; softmax or linear converts")
        if args.labels:
            names = [line.strip() for line in args.labels.read_text().splitlines() if line.strip()]
            if len(names) != classes:
                fail(f"{args.labels} has {len(names)} names for {classes} classes")
            config["label_names"] = [n.split("-", 1)[1] if n[:1] == "n" and n[1:9].isdigit() else n for n in names]

    args.output.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, str(args.output / "model.safetensors"))
    (args.output / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"wrote {args.output}/model.safetensors ({len(tensors)} tensors) and config.json "
          f"(input {size}, bn_eps {eps}, {config.get('num_classes', 'no')} classes)")


if __name__ == "__main__":
    main()
