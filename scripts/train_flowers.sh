#!/usr/bin/env bash
# Transfer learning on the five flower classes, end to end, from a clean checkout:
#   1. converts the Keras MobileNetV2 at 160 px from ../shared/data/keras-mobilenetv2-160/
#      (its layers up to block 13 hold the Keras ImageNet weights) to the canonical layout;
#   2. trains a head on ../shared/data/flowers5/ (4,091 photos, tf_flowers' classes) with
#      `classifier train` over the frozen backbone;
#   3. prints the validation figures and the wall time of the whole run.
#
#   scripts/train_flowers.sh [OUT_DIR]        (default: flowers-head; extra flags via TRAIN_FLAGS)
#
# Needs Python 3 with h5py, numpy and safetensors for the conversion (a venv is made when they
# are missing) and the Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-flowers-head}"
shared="../shared/data"
keras="$shared/keras-mobilenetv2-160/dog_breed_mobilenetv2.h5"
flowers="$shared/flowers5"
for needed in "$keras" "$flowers"; do
    if [ ! -e "$needed" ]; then echo "error: $needed is absent (this script reads ../shared/data)" >&2; exit 2; fi
done
work="${TMPDIR:-/tmp}/train-flowers"
backbone="$work/keras-mobilenetv2-160"
mkdir -p "$work"

python=python3
if ! python3 -c 'import h5py, numpy, safetensors' 2>/dev/null; then
    echo "== a venv with h5py, numpy and safetensors for the converter"
    python3 -m venv "$work/venv"
    "$work/venv/bin/pip" install --quiet h5py numpy safetensors
    python="$work/venv/bin/python"
fi

echo "== build"
cargo build --release --quiet -p classifier

start=$(date +%s.%N)
echo "== convert the Keras backbone"
"$python" scripts/convert_keras_mobilenetv2.py "$keras" "$backbone" --labels "$shared/keras-mobilenetv2-160/labels.txt"

echo "== train (features from the frozen backbone, then the head)"
# shellcheck disable=SC2086
target/release/classifier train --model "$backbone" --data "$flowers" --out "$out" ${TRAIN_FLAGS:-}
end=$(date +%s.%N)

echo "== done"
printf 'validation accuracy: %s\n' "$(python3 -c 'import json,sys; print("%.2f%%" % (100 * json.load(open(sys.argv[1]))["validation"]["accuracy"]))' "$out/report.json")"
python3 -c 'import sys; print("wall time, conversion + feature extraction + training: %.1f s" % (float(sys.argv[2]) - float(sys.argv[1])))' "$start" "$end"
echo "head: $out (head.safetensors, labels.json, head.json, report.json, learning_curves.png, confusion_matrix.png)"
echo "serve it: target/release/classifier serve --model $backbone --head $out"
