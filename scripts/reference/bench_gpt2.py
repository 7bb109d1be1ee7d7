#!/usr/bin/env python3
"""GPT-2 greedy decoding at batch 1, side by side in one run: ours (candle) and Hugging Face
`transformers` (a manual KV-cache loop, as `generate` does without its overhead), on the same
weights, prompt length and thread count.

    python scripts/make_random_gpt2.py /tmp/gpt2-124m
    cargo build --release -p benches
    python scripts/reference/bench_gpt2.py /tmp/gpt2-124m [--prompt 128] [--tokens 64]

The machine's speed drifts (it is shared), so only figures printed by one run compare.
"""

import argparse
import json
import os
import pathlib
import subprocess
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]


def bench_ours(model_dir, prompt, tokens):
    out = subprocess.run(
        [str(ROOT / "target/release/bench-gpt2"), "--model", str(model_dir), "--prompt", str(prompt),
         "--tokens", str(tokens), "--json"],
        check=True, capture_output=True, text=True,
    ).stdout
    row = json.loads(out.splitlines()[-1])
    return row["prefill_ms"], row["decode_tokens_per_s"]


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
    args = parser.parse_args()

    import torch
    import transformers

    rows = {
        "candle (ours)": bench_ours(args.model_dir, args.prompt, args.tokens),
        f"transformers {transformers.__version__} (torch {torch.__version__.split('+')[0]})":
            bench_transformers(args.model_dir, args.prompt, args.tokens, args.threads),
    }
    print(f"GPT-2 {args.model_dir.name}, f32, batch 1, {args.threads} threads, prompt {args.prompt} tokens, "
          f"then {args.tokens} greedy tokens")
    print(f"{'engine':<40} {'prefill ms':>11} {'decode tokens/s':>16}")
    for engine, (prefill, rate) in rows.items():
        print(f"{engine:<40} {prefill:>11.1f} {rate:>16.1f}")


if __name__ == "__main__":
    main()
