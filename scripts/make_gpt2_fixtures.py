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
The log-probabilities and log-sum-exp are taken in f64 from the f32 logits.

tests/fixtures/gpt2-tiny-trained/: the same shape and files, initialised as transformers does
and trained for a few hundred steps on the token ids of tests/fixtures/tokenizer-corpus.jsonl
(text this project wrote; see `trained`). Random weights give nearly flat distributions, which
hide errors in normalising over 50,257 tokens; a trained model's are peaked, as a real one's.
"""

import json
import os
import pathlib
import subprocess
import sys

import torch
from transformers import GPT2Config, GPT2LMHeadModel

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "gpt2-tiny"
TRAINED = ROOT / "tests" / "fixtures" / "gpt2-tiny-trained"
CORPUS = ROOT / "tests" / "fixtures" / "tokenizer-corpus.jsonl"
TRAIN_STEPS, TRAIN_BATCH, TRAIN_CONTEXT, TRAIN_LR = 200, 16, 64, 1e-2
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
    write_fixture(GPT2LMHeadModel(config).eval(), FIXTURE)
    # Training runs in a process of its own, where ATen's portable kernels and MKL's
    # reproducible mode (read when torch loads) make its bits the same on every x86-64 CPU.
    portable = {**os.environ, "ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"}
    subprocess.run([sys.executable, __file__, "--trained"], env=portable, check=True)


def corpus_tokens():
    """The token ids of tests/fixtures/tokenizer-corpus.jsonl's strings, each ended by
    `<|endoftext|>`: text written by this project, tokenized by OpenAI's tokenizer."""
    ids = []
    for line in CORPUS.read_text().splitlines():
        row = json.loads(line)
        ids.extend(int(token) for token in row["ids"].split())
        ids.append(50256)
    return ids


def trained():
    """The same tiny GPT-2, initialised as transformers does and trained briefly on the
    tokenizer corpus: its next-token distributions are peaked over the whole vocabulary, as a
    real model's are, where the random fixture's are nearly flat."""
    torch.manual_seed(0)
    config = GPT2Config(n_embd=16, n_layer=2, n_head=2, n_positions=1024)
    model = GPT2LMHeadModel(config)
    tokens = torch.tensor(corpus_tokens())
    optimizer = torch.optim.AdamW(model.parameters(), lr=TRAIN_LR)
    windows = torch.Generator().manual_seed(0)
    model.train()
    for step in range(TRAIN_STEPS):
        starts = torch.randint(0, len(tokens) - TRAIN_CONTEXT - 1, (TRAIN_BATCH,), generator=windows)
        batch = torch.stack([tokens[s:s + TRAIN_CONTEXT] for s in starts.tolist()])
        loss = model(batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == TRAIN_STEPS - 1:
            print(f"trained fixture: step {step}, loss {loss.item():.3f}")
    return model.eval()


def write_fixture(model, fixture):
    fixture.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(fixture, safe_serialization=True)
    (fixture / "generation_config.json").unlink(missing_ok=True)
    reference = {"prompts": []}
    for prompt in PROMPTS:
        ids = torch.tensor([prompt])
        with torch.no_grad():
            output = model(ids, output_hidden_states=True)
            logits = output.logits[0]
            pooled = output.hidden_states[-1][0].mean(0)
            embedding = pooled / pooled.norm()
            log_probs = logits.double().log_softmax(-1)
            greedy = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False,
                                    pad_token_id=50256)[0, len(prompt):]
        last = logits[-1]
        top2 = last.topk(2).values
        reference["prompts"].append({
            "tokens": prompt,
            "probe_indices": PROBE,
            "last_logits_at_probe": [float(last[i]) for i in PROBE],
            "last_logsumexp": float(last.double().logsumexp(-1)),
            "last_top1_margin": float(top2[0] - top2[1]),
            "greedy": [int(t) for t in greedy],
            "token_logprobs": [float(log_probs[i, prompt[i + 1]]) for i in range(len(prompt) - 1)],
            "embedding": [float(v) for v in embedding],
        })
    (fixture / "reference.json").write_text(json.dumps(reference, indent=1) + "\n")


if __name__ == "__main__":
    if sys.argv[1:] == ["--trained"]:
        torch.set_num_threads(1)
        write_fixture(trained(), TRAINED)
    else:
        main()
