#!/usr/bin/env python3
"""Writes a GPT-2 with random weights of a real size (default: the 124M shape) in the Hugging
Face layout, for benchmarks and cold-start measurements. Nothing it writes is committed.

    python scripts/make_random_gpt2.py OUT_DIR [--size gpt2|gpt2-medium|gpt2-large|gpt2-xl|distilgpt2]

OUT_DIR gets config.json and model.safetensors, plus vocab.json and merges.txt copied from
../shared/data/gpt2-tokenizer when it is there (textgen needs a tokenizer next to the weights).
"""

import argparse
import pathlib
import shutil

import torch
from transformers import GPT2Config, GPT2LMHeadModel

SIZES = {
    "distilgpt2": dict(n_layer=6, n_embd=768, n_head=12),
    "gpt2": dict(n_layer=12, n_embd=768, n_head=12),
    "gpt2-medium": dict(n_layer=24, n_embd=1024, n_head=16),
    "gpt2-large": dict(n_layer=36, n_embd=1280, n_head=20),
    "gpt2-xl": dict(n_layer=48, n_embd=1600, n_head=25),
}
VOCAB = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "gpt2-tokenizer"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=pathlib.Path)
    parser.add_argument("--size", default="gpt2", choices=sorted(SIZES))
    args = parser.parse_args()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**SIZES[args.size])).eval()
    model.save_pretrained(args.out_dir, safe_serialization=True)
    (args.out_dir / "generation_config.json").unlink(missing_ok=True)
    if VOCAB.is_dir():
        shutil.copy(VOCAB / "encoder.json", args.out_dir / "vocab.json")
        shutil.copy(VOCAB / "vocab.bpe", args.out_dir / "merges.txt")
    print(f"wrote {args.out_dir} ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters)")


if __name__ == "__main__":
    main()
