#!/usr/bin/env python3
"""MobileNetV2 forward throughput, side by side in one run: ours (candle), ONNX Runtime and
PyTorch, on the same weights, the same batch sizes and the same number of threads.

    python scripts/make_random_mobilenetv2.py /tmp/mnv2-224
    cargo build --release -p benches
    python scripts/reference/bench_mobilenetv2.py /tmp/mnv2-224 [--batch 1,32] [--seconds 3] [--rounds 3]

The machine's speed drifts (it is shared, by 10-40% from one minute to the next), so only
figures printed by one run compare, and the engines take turns: each round measures every
engine at every batch size for `--seconds` (the engines one after the other at each batch
size), and the table gives each one's median over the rounds, then ours over ONNX Runtime's of
the same round.
"""

import argparse
import json
import os
import pathlib
from statistics import median
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


def bench_ours(model_dir, threads, batches, seconds):
    binary = ROOT / "target" / "release" / "bench-mobilenetv2"
    out = subprocess.run(
        [str(binary), "--model", str(model_dir), "--batch", ",".join(map(str, batches)), "--seconds", str(seconds), "--json"],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "RAYON_NUM_THREADS": str(threads)},
    ).stdout
    return {row["batch"]: row["ms_per_batch"] / 1e3 for row in map(json.loads, out.splitlines())}


def torch_runner(model_dir, threads, size):
    import timm
    import torch
    from safetensors.torch import load_file

    torch.set_num_threads(threads)
    config = json.loads((model_dir / "config.json").read_text())
    model = timm.create_model(config["architecture"], pretrained=False, num_classes=config["num_classes"])
    model.load_state_dict(load_file(str(model_dir / "model.safetensors")), strict=False)
    model.eval()

    def bench(batches, seconds):
        with torch.inference_mode():
            return {b: timed(lambda: model(torch.full((b, 3, size, size), 0.5)), seconds)[0] for b in batches}

    return bench


def onnxruntime_runner(model_dir, threads, size):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])

    def bench(batches, seconds):
        inputs = {b: np.full((b, 3, size, size), 0.5, np.float32) for b in batches}
        return {b: timed(lambda: session.run(None, {"images": inputs[b]}), seconds)[0] for b in batches}

    return bench


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=pathlib.Path)
    parser.add_argument("--batch", default="1,32")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    batches = [int(b) for b in args.batch.split(",")]
    size = json.loads((args.model_dir / "config.json").read_text())["pretrained_cfg"]["input_size"][1]

    import onnxruntime
    import torch

    ours = "candle (ours)"
    onnx = f"ONNX Runtime {onnxruntime.__version__}"
    runners = {
        ours: lambda batches, seconds: bench_ours(args.model_dir, args.threads, batches, seconds),
        onnx: onnxruntime_runner(args.model_dir, args.threads, size),
        f"PyTorch {torch.__version__.split('+')[0]}": torch_runner(args.model_dir, args.threads, size),
    }
    # Each round measures every engine at one batch size right after the other, so that a
    # ratio compares figures taken seconds apart.
    rounds = {engine: [{} for _ in range(args.rounds)] for engine in runners}
    for round_index in range(args.rounds):
        for batch in batches:
            for engine, bench in runners.items():
                rounds[engine][round_index].update(bench([batch], args.seconds))
    print(
        f"MobileNetV2 {size}x{size} f32, {args.threads} threads, {args.rounds} rounds of {args.seconds:g} s "
        "per engine and batch size, medians"
    )
    print(f"{'engine':<24} {'batch':>5} {'ms/batch':>10} {'ms/image':>10} {'images/s':>10}")
    for engine, results in rounds.items():
        for batch in batches:
            seconds = median([r[batch] for r in results])
            print(f"{engine:<24} {batch:>5} {seconds * 1e3:>10.2f} {seconds * 1e3 / batch:>10.2f} {batch / seconds:>10.1f}")
    for batch in batches:
        ratios = [o[batch] / r[batch] for r, o in zip(rounds[ours], rounds[onnx])]
        listed = ", ".join(f"{x:.2f}" for x in ratios)
        print(f"ours / ONNX Runtime in images/s, batch {batch}: {listed} (median {median(ratios):.2f})")


if __name__ == "__main__":
    main()
