#!/usr/bin/env python3
"""One photo at a time, decode to top-5, side by side in one run: our classifier over HTTP
(each photo POSTed as it is on one kept-alive connection, the answer read back) against the same loop in Python with
Pillow and ONNX Runtime (open, convert to RGB, resize and crop as the weights' config says,
normalise, run, softmax, top-5), on the same weights and photos, the same thread count.

    python scripts/make_random_mobilenetv2.py /tmp/mnv2-224
    cargo build --release -p classifier
    python scripts/reference/bench_classify_loop.py /tmp/mnv2-224 ../shared/data/flowers5 [--photos 60] [--rounds 3]

The engines take turns over the rounds (the machine's speed drifts); the ratio that matters
is taken within each round. Prints figures, asserts nothing.
"""

import argparse
import http.client
import json
import os
import pathlib
import socket
from statistics import median
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_classifier(model_dir, threads, log):
    """The service, logging to the file `log`: a pipe would need a reader in this process,
    woken by every request's log line while the client waits for the answer."""
    port = free_port()
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    process = subprocess.Popen(
        [str(ROOT / "target/release/classifier"), "serve", "--model", str(model_dir), "--host", "127.0.0.1",
         "--port", str(port)],
        stdout=log, stderr=subprocess.DEVNULL, env=env)
    kernels = "?"
    deadline = time.monotonic() + 60
    with open(log.name) as lines:
        while time.monotonic() < deadline and process.poll() is None:
            line = lines.readline()
            if not line.endswith("\n"):
                lines.seek(lines.tell() - len(line))
                time.sleep(0.01)
                continue
            fields = json.loads(line).get("fields", {})
            if fields.get("message") == "cpu kernels":
                kernels = fields["kernels"]
            if fields.get("message") == "ready":
                return process, ("127.0.0.1", port), kernels
    process.kill()
    raise SystemExit("the classifier did not start")


def ours(address, photos):
    """One kept-alive connection, as an HTTP client library's session keeps it (a new TCP
    connection per photo would add the client's connect and teardown to every answer)."""
    def run():
        connection = http.client.HTTPConnection(*address)
        try:
            for photo in photos:
                connection.request("POST", "/v1/classify?top_k=5", body=photo,
                                   headers={"Content-Type": "application/octet-stream"})
                answer = connection.getresponse()
                if answer.status != 200:
                    raise SystemExit(f"the classifier answered {answer.status}: {answer.read()!r}")
                json.load(answer)
        finally:
            connection.close()
    return run


def onnx_runtime_with_pillow(model_dir, photos, threads):
    import io

    import onnxruntime
    from PIL import Image

    config = json.loads((model_dir / "config.json").read_text())["pretrained_cfg"]
    size = config["input_size"][-1]
    resize = int(size / config.get("crop_pct", 0.875))
    mean = np.array(config["mean"], dtype=np.float32).reshape(3, 1, 1)
    std = np.array(config["std"], dtype=np.float32).reshape(3, 1, 1)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run():
        for photo in photos:
            image = Image.open(io.BytesIO(photo)).convert("RGB")
            w, h = image.size
            scale = resize / min(w, h)
            image = image.resize((round(w * scale), round(h * scale)), Image.BICUBIC)
            w, h = image.size
            left, top = (w - size) // 2, (h - size) // 2
            image = image.crop((left, top, left + size, top + size))
            x = (np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0 - mean) / std
            logits = session.run(None, {name: x[None]})[0][0]
            p = np.exp(logits - logits.max())
            p /= p.sum()
            np.argsort(-p)[:5]
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=pathlib.Path)
    parser.add_argument("photos", type=pathlib.Path, help="a folder of photos (searched recursively)")
    parser.add_argument("--photos", dest="count", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()

    files = sorted(p for p in args.photos.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:args.count]
    if not files:
        sys.exit(f"no photos under {args.photos}")
    photos = [p.read_bytes() for p in files]
    log = tempfile.NamedTemporaryFile(prefix="classifier-log-", suffix=".jsonl")
    process, address, kernels = start_classifier(args.model_dir, args.threads, log)
    try:
        engines = {
            f"classifier over HTTP (ours, {kernels})": ours(address, photos),
            "Pillow + ONNX Runtime in Python": onnx_runtime_with_pillow(args.model_dir, photos, args.threads),
        }
        for run in engines.values():
            run()
        rounds = {name: [] for name in engines}
        for _ in range(args.rounds):
            for name, run in engines.items():
                start = time.perf_counter()
                run()
                rounds[name].append(len(photos) / (time.perf_counter() - start))
    finally:
        process.terminate()
        process.wait()
        log.close()
    print(f"MobileNetV2 {args.model_dir.name}, {len(photos)} photos one at a time, {args.threads} threads, "
          f"{args.rounds} rounds, medians")
    for name, rates in rounds.items():
        print(f"{name:<48} {median(rates):8.1f} photos/s")
    names = list(engines)
    ratios = [o / r for o, r in zip(rounds[names[0]], rounds[names[1]])]
    print(f"ours / Pillow + ONNX Runtime, per round: {', '.join(f'{r:.2f}' for r in ratios)} "
          f"(median {median(ratios):.2f})")


if __name__ == "__main__":
    main()
