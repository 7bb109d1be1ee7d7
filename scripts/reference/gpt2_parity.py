#!/usr/bin/env python3
"""`transformers`' GPT-2 side by side with a running `textgen serve --model DIR`, at full size.

    python scripts/reference/gpt2_parity.py DIR URL [--lengths 1,9,40,100] [--tokens 16]

For prompts of each length (token ids), asks the service for a greedy completion with `echo`
and `logprobs`, first one request at a time and then all at once (so that the prompts are read
inside batched steps beside other generations), and compares with `transformers` on the same
weights: the completion text, each prompt token's log-probability (the prefill path) and each
generated token's (the decode path). Exits 1 when a text differs or a log-probability differs by
more than --tolerance.
"""

import argparse
import json
import pathlib
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import torch
from transformers import GPT2LMHeadModel, GPT2TokenizerFast


def complete(url, prompt, tokens):
    body = {"prompt": prompt, "max_tokens": tokens, "temperature": 0, "echo": True, "logprobs": 0}
    request = urllib.request.Request(f"{url}/v1/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        choice = json.load(response)["choices"][0]
    return choice["text"], choice["logprobs"]["token_logprobs"]


@torch.no_grad()
def reference(model, tokenizer, prompt, tokens):
    """The echoed text and the log-probability of every token after the first, greedy."""
    ids = torch.tensor([prompt])
    logprobs = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
    scores = [None] + [logprobs[i, prompt[i + 1]].item() for i in range(len(prompt) - 1)]
    generated = model.generate(ids, max_new_tokens=tokens, do_sample=False, output_logits=True,
                               return_dict_in_generate=True, pad_token_id=tokenizer.eos_token_id)
    sequence = generated.sequences[0].tolist()
    for step, token in zip(generated.logits, sequence[len(prompt):]):
        scores.append(torch.log_softmax(step[0].double(), dim=-1)[token].item())
    return tokenizer.decode(sequence), scores


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=pathlib.Path)
    parser.add_argument("url")
    parser.add_argument("--lengths", default="1,9,40,100")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--tolerance", type=float, default=1e-3)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = GPT2LMHeadModel.from_pretrained(args.model_dir).eval()
    tokenizer = GPT2TokenizerFast.from_pretrained(args.model_dir)
    prompts = [[1000 + (i * 7919 + length * 104729) % 49000 for i in range(length)]
               for length in map(int, args.lengths.split(","))]
    expected = [reference(model, tokenizer, prompt, args.tokens) for prompt in prompts]
    alone = [complete(args.url, prompt, args.tokens) for prompt in prompts]
    with ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(lambda p: complete(args.url, p, args.tokens), prompts))

    failures, worst = 0, 0.0
    for how, answers in (("one at a time", alone), ("all at once", together)):
        for prompt, (want_text, want), (text, got) in zip(prompts, expected, answers):
            same_text = text == want_text
            differences = [abs(a - b) for a, b in zip(got, want) if a is not None and b is not None]
            prompt_diff = max(differences[:len(prompt) - 1], default=0.0)
            decode_diff = max(differences[len(prompt) - 1:], default=0.0)
            worst = max(worst, prompt_diff, decode_diff)
            ok = same_text and len(got) == len(want) and max(prompt_diff, decode_diff) <= args.tolerance
            failures += not ok
            print(f"{how:>13}, prompt of {len(prompt):>3} tokens: text {'same' if same_text else 'DIFFERS'}, "
                  f"largest log-probability difference: prompt {prompt_diff:.2e}, generated {decode_diff:.2e}"
                  + ("" if ok else "  <- FAIL"))
    print(f"{2 * len(prompts) - failures} of {2 * len(prompts)} answers match; largest difference {worst:.2e}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
