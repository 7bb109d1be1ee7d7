#!/usr/bin/env python3
"""Writes tests/fixtures/tokenizer-corpus.jsonl, bit for bit: 10,000 strings (words,
contractions, numbers, punctuation, accented and non-Latin scripts, emoji with ZWJ sequences
and skin tones, combining marks, runs of spaces, tabs, newlines and CRLF, `<|endoftext|>`),
each with its token ids from OpenAI's own tokenizer (`tiktoken`, r50k_base's pattern and
special token) built from ../shared/data/gpt2-tokenizer (`encoder.json` = vocab.json,
`vocab.bpe` = merges.txt); the script checks that Hugging Face's `tokenizers` gives the same ids
and that decoding gives the text back. The ids are written space-separated to keep it small.

    python scripts/make_tokenizer_corpus.py        # needs tiktoken, tokenizers
"""

import json
import pathlib
import random
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
VOCAB = ROOT.parent / "shared" / "data" / "gpt2-tokenizer"
OUT = ROOT / "tests" / "fixtures" / "tokenizer-corpus.jsonl"

WORDS = ("the quick brown fox jumps over lazy dog hello world GPT tokenizer rust candle axum "
         "naïve café résumé straße Ωmega Москва 東京 서울 مرحبا שלום नमस्ते ελληνικά ĞĠġ "
         "don't it's we're they've I'm you'll she'd O'Neil rock'n'roll").split()
PIECES = ["!", "?", "...", ",", ";", ":", "-", "—", "(", ")", "[", "]", "{", "}", "\"", "'", "`", "@", "#", "$",
          "%", "^", "&", "*", "_", "+", "=", "<", ">", "/", "\\", "|", "~", "0", "7", "42", "3.14", "1,000,000",
          "2026-11-29", "🦀", "👍🏽", "👩‍💻", "🏳️‍🌈", "😀😃", "é", "e\u0301", "ﬁ", "\u00a0", "\u200b", "<|endoftext|>",
          "<|endoftext", "endoftext|>", "http://x.y/z?a=1", "\ufeff"]
SPACES = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", " \n ", "\n  \n", "    ", " \t "]


def make_string(rng):
    parts = []
    for _ in range(rng.randint(1, 12)):
        kind = rng.random()
        if kind < 0.5:
            parts.append(rng.choice(WORDS))
        elif kind < 0.75:
            parts.append(rng.choice(PIECES))
        else:
            parts.append(rng.choice(SPACES))
        if rng.random() < 0.6:
            parts.append(" ")
    text = "".join(parts)
    if rng.random() < 0.1:
        text = rng.choice(SPACES) + text
    if rng.random() < 0.05:
        text = "".join(chr(rng.randint(0x20, 0x2FFF)) for _ in range(rng.randint(1, 8)))
    return text


def main():
    if not VOCAB.is_dir():
        sys.exit(f"{VOCAB} is absent: the reference tokenizer's files come from there")
    import tiktoken
    import tiktoken.load
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(str(VOCAB / "vocab.bpe"), str(VOCAB / "encoder.json"))
    r50k_pattern = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    openai = tiktoken.Encoding(name="r50k_base", pat_str=r50k_pattern, mergeable_ranks=ranks,
                               special_tokens={"<|endoftext|>": 50256})
    hf = Tokenizer(models.BPE.from_file(str(VOCAB / "encoder.json"), str(VOCAB / "vocab.bpe")))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    rng = random.Random(0)
    texts = ["", " ", "<|endoftext|>", "Hello world", "  leading", "trailing  ", "\n\n\n", "a\tb\tc"]
    texts += [make_string(rng) for _ in range(10_000 - len(texts))]
    with OUT.open("w", encoding="utf-8") as out:
        for text in texts:
            ids = openai.encode(text, allowed_special="all")
            assert hf.encode(text).ids == ids, text
            assert openai.decode(ids) == text, text
            out.write(json.dumps({"text": text, "ids": " ".join(map(str, ids))}, ensure_ascii=False) + "\n")
    print(f"wrote {OUT} ({len(texts)} strings)")


if __name__ == "__main__":
    main()
