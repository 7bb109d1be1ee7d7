#!/usr/bin/env python3
"""MobileNetV2 forward throughput, side by side in one run: ours (candle), ONNX Runtime and
PyTorch, on the same weights, the same batch sizes and the same number of threads.

    python scripts/make_random_mobilenetv2.py /tmp/mnv2-224
    cargo build --release -p benches
    python scripts/reference/bench_mobilenetv2.py /tmp/mnv2-224 [--batch 1,32] [--seconds 3]

The machine's speed drifts (it is shared), so only figures printed by one run compare.
"""

import argparse
import json
import os
import pathlib
import subprocess
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]


def timed(run, seconds):
    run()
    times = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 3:
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2], len(times)


def bench_ours(model_dir, batches, seconds):
    binary = ROOT / "target" / "release" / "bench-mobilenetv2"
    out = subprocess.run(
        [str(binary), "--model", str(model_dir), "--batch", ",".join(map(str, batches)), "--seconds", str(seconds), "--json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {row["batch"]: (row["ms_per_batch"] / 1e3, row["runs"]) for row in map(json.loads, out.splitlines())}


def bench_torch(model_dir, batches, seconds, threads, size):
    import timm
    import torch
    from safetensors.torch import load_file

    torch.set_num_threads(threads)
    config = json.loads((model_dir / "config.json").read_text())
    model = timm.create_model(config["architecture"], pretrained=False, num_classes=config["num_classes"])
    model.load_state_dict(load_file(str(model_dir / "model.safetensors")), strict=False)
    model.eval()
    results = {}
    with torch.inference_mode():
        for batch in batches:
            x = torch.full((batch, 3, size, size), 0.5)
            results[batch] = timed(lambda: model(x), seconds)
    return results


def bench_onnxruntime(model_dir, batches, seconds, threads, size):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])
    results = {}
    for batch in batches:
        x = np.full((batch, 3, size, size), 0.5, np.float32)
        results[batch] = timed(lambda: session.run(None, {"images": x}), seconds)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=pathlib.Path)
    parser.add_argument("--batch", default="1,32")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    batches = [int(b) for b in args.batch.split(",")]
    size = json.loads((args.model_dir / "config.json").read_text())["pretrained_cfg"]["input_size"][1]

    import onnxruntime
    import torch

    engines = {
        f"candle (ours)": bench_ours(args.model_dir, batches, args.seconds),
        f"ONNX Runtime {onnxruntime.__version__}": bench_onnxruntime(args.model_dir, batches, args.seconds, args.threads, size),
        f"PyTorch {torch.__version__.split('+')[0]}": bench_torch(args.model_dir, batches, args.seconds, args.threads, size),
    }
    print(f"MobileNetV2 {size}x{size} f32, {args.threads} threads, median of each batch size over {args.seconds:g} s")
    print(f"{'engine':<24} {'batch':>5} {'ms/batch':>10} {'ms/image':>10} {'images/s':>10}")
    for engine, results in engines.items():
        for batch in batches:
            seconds, _runs = results[batch]
            print(f"{engine:<24} {batch:>5} {seconds * 1e3:>10.2f} {seconds * 1e3 / batch:>10.2f} {batch / seconds:>10.1f}")


if __name__ == "__main__":
    main()
