#!/usr/bin/env python3
"""GPT-2 greedy decoding at batch 1, side by side in one run: ours (candle, f32 and bf16
weights), Hugging Face `transformers` (a manual KV-cache loop, as `generate` does without its
overhead) and, with --llama-cpp, llama.cpp's llama-bench (f32 and bf16 GGUF of the same
weights), on the same prompt length and thread count. Each decode rate is also given as a
fraction of the memory floor: this machine's read bandwidth (measured by bench-gpt2 in the same
run) over the weight bytes read per token.

    python scripts/make_random_gpt2.py /tmp/gpt2-124m
    bash scripts/reference/build_llama_cpp.sh /tmp/gpt2-124m /tmp/llama     # optional
    cargo build --release -p benches
    python scripts/reference/bench_gpt2.py /tmp/gpt2-124m [--llama-cpp /tmp/llama] [--prompt 128] [--tokens 64]

The machine's speed drifts (it is shared), so only figures printed by one run compare.
"""

import argparse
import json
import os
import pathlib
import subprocess
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]


def bench_ours(model_dir, prompt, tokens, bf16):
    out = subprocess.run(
        [str(ROOT / "target/release/bench-gpt2"), "--model", str(model_dir), "--prompt", str(prompt),
         "--tokens", str(tokens), "--json"] + (["--bf16"] if bf16 else []),
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out.splitlines()[-1])


def bench_llama_cpp(llama_dir, weights, prompt, tokens, threads):
    def rate(p, n):
        out = subprocess.run(
            [str(llama_dir / "llama-bench"), "-m", str(llama_dir / f"model-{weights}.gguf"), "-t", str(threads),
             "-p", str(p), "-n", str(n), "-r", "3", "-o", "json"],
            check=True, capture_output=True, text=True,
        ).stdout
        return json.loads(out)[0]["avg_ts"]

    return prompt / rate(prompt, 0) * 1e3, rate(0, tokens)


def bench_transformers(model_dir, prompt, tokens, threads):
    import torch
    from transformers import GPT2LMHeadModel

    torch.set_num_threads(threads)
    model = GPT2LMHeadModel.from_pretrained(model_dir).eval()
    ids = torch.tensor([[(i * 7919) % 50000 for i in range(prompt)]])
    with torch.inference_mode():
        model(ids[:, :8])
        start = time.perf_counter()
        out = model(ids, use_cache=True)
        past, next_id = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(tokens):
            out = model(next_id, past_key_values=past, use_cache=True)
            past, next_id = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        decode = time.perf_counter() - start
    return prefill * 1e3, tokens / decode


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=pathlib.Path)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--llama-cpp", type=pathlib.Path, help="the OUT_DIR of build_llama_cpp.sh")
    args = parser.parse_args()

    import torch
    import transformers

    ours = {weights: bench_ours(args.model_dir, args.prompt, args.tokens, weights == "bf16") for weights in ("f32", "bf16")}
    bandwidth = ours["f32"]["read_bandwidth_gb_s"]
    bytes_per_token = {weights: row["weight_bytes_per_token"] for weights, row in ours.items()}
    rows = [(f"candle (ours) {weights}", weights, row["prefill_ms"], row["decode_tokens_per_s"]) for weights, row in ours.items()]
    rows.append((f"transformers {transformers.__version__} (torch {torch.__version__.split('+')[0]}) f32", "f32",
                 *bench_transformers(args.model_dir, args.prompt, args.tokens, args.threads)))
    if args.llama_cpp:
        for weights in ("f32", "bf16"):
            rows.append((f"llama.cpp {weights}", weights, *bench_llama_cpp(args.llama_cpp, weights, args.prompt, args.tokens, args.threads)))
    print(f"GPT-2 {args.model_dir.name}, batch 1, {args.threads} threads, prompt {args.prompt} tokens, "
          f"then {args.tokens} greedy tokens; read bandwidth {bandwidth:.1f} GB/s")
    print(f"{'engine':<44} {'prefill ms':>11} {'decode tokens/s':>16} {'of the floor':>13}")
    for engine, weights, prefill, rate in rows:
        floor = bandwidth * 1e9 / bytes_per_token[weights]
        print(f"{engine:<44} {prefill:>11.1f} {rate:>16.1f} {100 * rate / floor:>12.0f}%")
    for weights, size in bytes_per_token.items():
        print(f"floor, {weights}: {size / 1e6:.0f} MB of weights per token at {bandwidth:.1f} GB/s = "
              f"{bandwidth * 1e9 / size:.1f} tokens/s")


if __name__ == "__main__":
    main()
