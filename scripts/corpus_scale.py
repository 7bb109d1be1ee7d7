#!/usr/bin/env python3
"""How a large corpus loads: writes N short documents (1-3 sentences of news.jsonl each,
recombined with a fixed seed) to a temporary file, starts `textgen serve --corpus` on it, and
prints the `load_corpus` init phase, the process's resident memory with and without the corpus,
and the latency of BM25-only and max_rerank 10 searches. Standard library only; prints figures,
asserts nothing.

    python scripts/corpus_scale.py --binary target/release/textgen --model DIR [--documents 100000]
"""

import argparse
import json
import pathlib
import random
import re
import sys
import tempfile
import time
import urllib.request

from eval_retrieval import DEFAULT_CORPUS, post, start_service


def rss_mib(pid):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def serve(binary, model, corpus):
    """Starts textgen (with `corpus` when given); answers (process, base URL, init phases, RSS MiB)."""
    process, base = start_service(binary, model, *(["--corpus", corpus] if corpus else []))
    with urllib.request.urlopen(f"{base}/v1/models") as response:
        phases = {p["name"]: p["duration_ms"] for p in json.load(response)["data"][0]["init_phases"]}
    return process, base, phases, rss_mib(process.pid)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", type=pathlib.Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--source", type=pathlib.Path, default=DEFAULT_CORPUS, help="where the sentences come from")
    parser.add_argument("--documents", type=int, default=100_000)
    args = parser.parse_args()
    if not args.source.exists():
        print(f"skipped: {args.source} is absent")
        return 0
    sentences = [s for line in args.source.read_text().splitlines()
                 for s in re.split(r"(?<=[.!?])\s+", json.loads(line)["text"]) if len(s) > 20]
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = pathlib.Path(tmp) / f"synthetic-{args.documents}.jsonl"
        with corpus.open("w") as out:
            for i in range(args.documents):
                text = " ".join(rng.choice(sentences) for _ in range(rng.randint(1, 3)))
                out.write(json.dumps({"id": f"doc-{i}", "text": text, "metadata": {"n": i}}) + "\n")
        size_mib = corpus.stat().st_size / 2**20
        bare, _, _, bare_rss = serve(args.binary, args.model, None)
        bare.terminate()
        bare.wait()
        started = time.perf_counter()
        process, base, phases, rss = serve(args.binary, args.model, corpus)
        ready = time.perf_counter() - started
        try:
            print(f"corpus: {args.documents} documents, {size_mib:.1f} MiB of JSON Lines")
            print(f"load_corpus phase: {phases['load_corpus']:.0f} ms; process start to ready: {ready:.2f} s")
            print(f"resident memory: {rss:.0f} MiB with the corpus, {bare_rss:.0f} MiB without")
            queries = ["bushfire Hill Top residents", "interest rates Reserve Bank", "cricket India Sydney wickets"]
            for body, name in (({"rerank_weight": 0, "max_rerank": 10}, "BM25 only"), ({"max_rerank": 10}, "max_rerank 10")):
                seconds = sorted(post(f"{base}/v1/search", {"query": q, **body})[1] for q in queries)
                print(f"search, {name}: median {seconds[1] * 1000:.0f} ms over {len(queries)} queries")
        finally:
            process.terminate()
            process.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
