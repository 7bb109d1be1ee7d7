"""Writes the backbone of a whole Keras MobileNetV2 model as a weights-only file in the layout of
Keras Applications' downloads (`mobilenet_v2_weights_tf_dim_ordering_tf_kernels_*_no_top.h5`,
the `mobilenetv2_1.0.h5` of the write-up this product comes from): Keras 2's `save_weights`
layout, one group per backbone layer at the root (weightless layers too) with its
`weight_names`, weights at `<layer>/<layer>/<weight>:0`, depthwise kernels as
`depthwise_kernel`, and no model config.

    python tests/keras_weights_only.py WHOLE_MODEL.h5 OUT.h5

Used by tests/classifier_keras.rs; needs h5py and numpy.
"""

import json
import sys

import h5py
import numpy as np

# Keras 2's weight names and order per layer class (MobileNetV2's convolutions have no bias).
WEIGHTS = {
    "Conv2D": ["kernel"],
    "DepthwiseConv2D": ["depthwise_kernel"],
    "BatchNormalization": ["gamma", "beta", "moving_mean", "moving_variance"],
}

source, target = sys.argv[1], sys.argv[2]
with h5py.File(source, "r") as whole, h5py.File(target, "w") as out:
    config = json.loads(whole.attrs["model_config"])
    backbone = next(layer for layer in config["config"]["layers"] if layer["class_name"] in ("Functional", "Model"))
    stored = whole["model_weights"][backbone["name"]]
    names = []
    for layer in backbone["config"]["layers"]:
        name = layer["config"]["name"]
        names.append(name.encode())
        group = out.create_group(name)
        weight_names = []
        for weight in WEIGHTS.get(layer["class_name"], []):
            # Keras 3 names a depthwise kernel `kernel`; Keras 2 `depthwise_kernel`.
            data = np.asarray(stored[name]["kernel" if weight == "depthwise_kernel" else weight], dtype=np.float32)
            group.create_dataset(f"{name}/{weight}:0", data=data)
            weight_names.append(f"{name}/{weight}:0".encode())
        group.attrs["weight_names"] = np.array(weight_names, dtype="S")
    out.attrs["layer_names"] = np.array(names, dtype="S")
    out.attrs["backend"] = b"tensorflow"
    out.attrs["keras_version"] = b"2.2.4"
print(f"wrote {target}: {len(names)} layers, weights only")
