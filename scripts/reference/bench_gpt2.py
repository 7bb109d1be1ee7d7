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
    python scripts/reference/bench_gpt2.py /tmp/gpt2-124m [--llama-cpp /tmp/llama] [--prompt 128] [--tokens 64] [--rounds 3]

The machine's speed drifts (it is shared, by 10-40% from one minute to the next), so only
figures printed by one run compare, and the engines take turns: each round runs every engine
once, the table gives each one's median over the rounds, and the ratios that matter are
taken within each round (ours over llama.cpp; bf16 over the f32 floor of the same round).
"""

import argparse
import json
import os
import pathlib
from statistics import median
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


def transformers_runner(model_dir, prompt, tokens, threads):
    import torch
    from transformers import GPT2LMHeadModel

    torch.set_num_threads(threads)
    model = GPT2LMHeadModel.from_pretrained(model_dir).eval()
    ids = torch.tensor([[(i * 7919) % 50000 for i in range(prompt)]])

    def bench():
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

    return bench


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=pathlib.Path)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--llama-cpp", type=pathlib.Path, help="the OUT_DIR of build_llama_cpp.sh")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import torch
    import transformers

    torch_version = torch.__version__.split("+")[0]
    engines = {}  # name -> (weights, bench() -> (prefill ms, decode tokens/s))
    bandwidths, bytes_per_token, levels = [], {}, []

    def ours(weights):
        def bench():
            row = bench_ours(args.model_dir, args.prompt, args.tokens, weights == "bf16")
            bandwidths[-1].append(row["read_bandwidth_gb_s"])
            bytes_per_token[weights] = row["weight_bytes_per_token"]
            levels.append(row["kernels"])
            return row["prefill_ms"], row["decode_tokens_per_s"]

        return bench

    # In each round, each of our engines runs right before llama.cpp on the same weights, so
    # that their ratio compares figures taken seconds apart.
    for weights in ("f32", "bf16"):
        engines[f"candle (ours) {weights}"] = (weights, ours(weights))
        if args.llama_cpp:
            engines[f"llama.cpp {weights}"] = (
                weights, lambda w=weights: bench_llama_cpp(args.llama_cpp, w, args.prompt, args.tokens, args.threads))
    engines[f"transformers {transformers.__version__} (torch {torch_version}) f32"] = (
        "f32", transformers_runner(args.model_dir, args.prompt, args.tokens, args.threads))
    rounds = {name: [] for name in engines}
    for _ in range(args.rounds):
        bandwidths.append([])
        for name, (_, bench) in engines.items():
            rounds[name].append(bench())
    round_bandwidth = [max(b) for b in bandwidths]
    bandwidth = median(round_bandwidth)

    kernels = ", ".join(sorted(set(levels)))
    print(f"GPT-2 {args.model_dir.name}, batch 1, {args.threads} threads, prompt {args.prompt} tokens, "
          f"then {args.tokens} greedy tokens; {args.rounds} rounds, medians; read bandwidth {bandwidth:.1f} GB/s; "
          f"our kernels: {kernels}")
    print(f"{'engine':<44} {'prefill ms':>11} {'decode tokens/s':>16} {'of the floor':>13}")
    for name, (weights, _) in engines.items():
        prefill = median([r[0] for r in rounds[name]])
        rate = median([r[1] for r in rounds[name]])
        floor = bandwidth * 1e9 / bytes_per_token[weights]
        print(f"{name:<44} {prefill:>11.1f} {rate:>16.1f} {100 * rate / floor:>12.0f}%")
    for weights, size in bytes_per_token.items():
        print(f"floor, {weights}: {size / 1e6:.0f} MB of weights per token at {bandwidth:.1f} GB/s = "
              f"{bandwidth * 1e9 / size:.1f} tokens/s")

    def per_round(label, values):
        listed = ", ".join(f"{v:.2f}" for v in values)
        print(f"{label}, per round: {listed} (median {median(values):.2f})")

    decode = {name: [r[1] for r in results] for name, results in rounds.items()}
    f32_floor = [b * 1e9 / bytes_per_token["f32"] for b in round_bandwidth]
    per_round("ours bf16 / f32 floor", [o / f for o, f in zip(decode["candle (ours) bf16"], f32_floor)])
    if args.llama_cpp:
        prefill = {name: [r[0] for r in results] for name, results in rounds.items()}
        for weights in ("f32", "bf16"):
            ours, theirs = f"candle (ours) {weights}", f"llama.cpp {weights}"
            per_round(f"decode, ours / llama.cpp {weights}", [o / l for o, l in zip(decode[ours], decode[theirs])])
            # Prefill is a time: llama.cpp's over ours, so that above 1 is ours faster.
            per_round(f"prefill, llama.cpp / ours {weights}", [l / o for o, l in zip(prefill[ours], prefill[theirs])])


if __name__ == "__main__":
    main()
