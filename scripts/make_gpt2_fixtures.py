#!/usr/bin/env python3
"""Writes the committed GPT-2 fixtures, bit for bit, from Hugging Face `transformers`.

    python scripts/make_gpt2_fixtures.py     # needs torch, transformers, safetensors

tests/fixtures/gpt2-tiny/: a GPT-2 with the real 50,257-token vocabulary and tiny dimensions
(2 layers, 2 heads, 16 wide), random weights drawn wider than transformers' default so that
the next-token choice is decided by clear margins, in the Hugging Face layout
(config.json + model.safetensors), and reference.json: for each prompt (token ids), the
last position's logits at a few indices, their log-sum-exp, the greedy continuation of
`generate`, the per-token log-probabilities of the prompt (what `echo` + `logprobs` score), and
its embedding: the mean of the last hidden states (after `ln_f`) scaled to unit length.
"""

import json
import pathlib

import torch
from transformers import GPT2Config, GPT2LMHeadModel

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "gpt2-tiny"
PROMPTS = [
    [464, 2068, 7586, 21831, 18045, 625, 262],  # "The quick brown fox jumps over the"
    [50256, 15496, 11, 995, 0],  # "<|endoftext|>Hello, world!"
    [40, 1101, 257, 1310],
    [818],
]
PROBE = [0, 1, 13, 198, 262, 464, 50255, 50256]


def main():
    torch.manual_seed(0)
    config = GPT2Config(n_embd=16, n_layer=2, n_head=2, n_positions=1024, initializer_range=0.2)
    model = GPT2LMHeadModel(config).eval()
    FIXTURE.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(FIXTURE, safe_serialization=True)
    (FIXTURE / "generation_config.json").unlink(missing_ok=True)
    reference = {"prompts": []}
    for prompt in PROMPTS:
        ids = torch.tensor([prompt])
        with torch.no_grad():
            output = model(ids, output_hidden_states=True)
            logits = output.logits[0]
            pooled = output.hidden_states[-1][0].mean(0)
            embedding = pooled / pooled.norm()
            log_probs = logits.log_softmax(-1)
            greedy = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False,
                                    pad_token_id=50256)[0, len(prompt):]
        last = logits[-1]
        top2 = last.topk(2).values
        reference["prompts"].append({
            "tokens": prompt,
            "probe_indices": PROBE,
            "last_logits_at_probe": [float(last[i]) for i in PROBE],
            "last_logsumexp": float(last.logsumexp(-1)),
            "last_top1_margin": float(top2[0] - top2[1]),
            "greedy": [int(t) for t in greedy],
            "token_logprobs": [float(log_probs[i, prompt[i + 1]]) for i in range(len(prompt) - 1)],
            "embedding": [float(v) for v in embedding],
        })
    (FIXTURE / "reference.json").write_text(json.dumps(reference, indent=1) + "\n")


if __name__ == "__main__":
    main()
