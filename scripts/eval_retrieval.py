#!/usr/bin/env python3
"""Retrieval evaluation of `textgen serve --corpus` on the news corpus: prints figures, asserts
nothing. Standard library only.

    python scripts/eval_retrieval.py --binary target/release/textgen --model DIR \
        [--corpus ../shared/data/corpus/news.jsonl] [--rerank-queries 300] [--latency-queries 20]

Queries: for each article, one of its sentences (picked with a fixed seed) gives a few content
words (letters only, 4+ characters, not stop words), shuffled, so the query is never a verbatim
substring of the article. The article a query came from is the one relevant document.

Figures: MRR@10 and top-1 for the lexical stage alone (BM25, `rerank_weight` 0) and for BM25 +
GPT-2 (`max_rerank` 10, the served `--rerank-weight`), then the per-query latency (p50, p90) of
searches with `max_rerank` 10, 50 and 200. With random or tiny weights the GPT-2 stage cannot
help (its scores are noise around 0): read the lexical figures as the stage's own quality, and
the latency as the cost of the model stage on this machine.
"""

import argparse
import json
import pathlib
import random
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_CORPUS = HERE.parent.parent / "shared" / "data" / "corpus" / "news.jsonl"
STOP_WORDS = set("""
about above after again against also among another because been before being below between both
could does doing down during each even every from further have having here however into itself
just last like made make many more most much must near never next only other over said same says
should since some still such than that their them then there these they this those through under
until very were what when where which while will with within without would year years your""".split())


def make_query(text, rng, words):
    """A few content words of one sentence of `text`, shuffled; None when no sentence has enough."""
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", text) if s]
    rng.shuffle(sentences)
    for sentence in sentences:
        content = []
        for word in re.findall(r"[A-Za-z]+", sentence):
            if len(word) >= 4 and word.lower() not in STOP_WORDS and word not in content:
                content.append(word)
        if len(content) >= words:
            chosen = rng.sample(content, words)
            query = " ".join(chosen)
            while query in text:
                rng.shuffle(chosen)
                query = " ".join(chosen)
            return query
    return None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, body):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=900) as response:
        answer = json.load(response)
    return answer, time.perf_counter() - start


def start_service(binary, model, *flags):
    """Starts `binary serve` on a free loopback port and waits until it is ready; answers the
    process and its base URL (the caller terminates the process)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [str(binary), "serve", "--model", str(model), "--host", "127.0.0.1", "--port", str(port), *flags]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        if process.poll() is not None:
            sys.exit(f"{binary} exited with {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                if response.status == 200:
                    return process, base
        except OSError:
            time.sleep(0.2)
    process.terminate()
    sys.exit(f"{binary} was not ready within 120 s")


def rank_of(answer, document):
    for rank, result in enumerate(answer["data"], 1):
        if result["document"] == document:
            return rank
    return None


def quality(base, queries, body):
    """MRR@10 and top-1 over (query, document) pairs, each searched with `body` added."""
    reciprocal, top1 = [], 0
    for i, (query, document) in enumerate(queries):
        answer, _ = post(f"{base}/v1/search", {"query": query, **body})
        rank = rank_of(answer, document)
        reciprocal.append(1 / rank if rank and rank <= 10 else 0.0)
        top1 += rank == 1
        print(f"\r  {i + 1}/{len(queries)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return sum(reciprocal) / len(queries), top1 / len(queries)


def latency(base, queries, body):
    seconds = [post(f"{base}/v1/search", {"query": query, **body})[1] for query, _ in queries]
    ordered = sorted(seconds)
    return statistics.median(seconds), ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", type=pathlib.Path, required=True, help="the textgen binary")
    parser.add_argument("--model", required=True, help="model directory (or hub id) for textgen")
    parser.add_argument("--corpus", type=pathlib.Path, default=DEFAULT_CORPUS)
    parser.add_argument("--words", type=int, default=5, help="content words per query")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rerank-queries", type=int, default=300, help="queries for the BM25 + GPT-2 figures")
    parser.add_argument("--latency-queries", type=int, default=20, help="queries timed per max_rerank (200: a quarter)")
    args = parser.parse_args()
    if not args.corpus.exists():
        print(f"skipped: {args.corpus} is absent (the evaluation reads ../shared/data/corpus/news.jsonl)")
        return 0

    rng = random.Random(args.seed)
    queries = []
    for index, line in enumerate(args.corpus.read_text().splitlines()):
        query = make_query(json.loads(line)["text"], rng, args.words)
        if query:
            queries.append((query, index))
    process, base = start_service(args.binary, args.model, "--corpus", args.corpus, "--request-timeout", "900")
    try:
        with urllib.request.urlopen(f"{base}/v1/models") as response:
            card = json.load(response)["data"][0]
        phases = ", ".join(f"{p['name']} {p['duration_ms']:.0f} ms" for p in card["init_phases"])
        print(f"model {card['id']} ({card['details']['n_layer']} layers, {card['details']['n_embd']} wide), "
              f"corpus {card['details']['corpus']['documents']} documents")
        print(f"init: {phases}")
        print(f"{len(queries)} queries, e.g. {queries[0][0]!r} -> document {queries[0][1]}")

        lexical_mrr, lexical_top1 = quality(base, queries, {"max_rerank": 10, "rerank_weight": 0})
        reranked = queries[: args.rerank_queries]
        rerank_mrr, rerank_top1 = quality(base, reranked, {"max_rerank": 10})
        print(f"\n{'stage':<22}{'queries':>8}{'MRR@10':>9}{'top-1':>8}")
        print(f"{'BM25':<22}{len(queries):>8}{lexical_mrr:>9.3f}{lexical_top1:>8.1%}")
        print(f"{'BM25 + GPT-2 (k=10)':<22}{len(reranked):>8}{rerank_mrr:>9.3f}{rerank_top1:>8.1%}")

        print(f"\n{'search':<22}{'queries':>8}{'p50 s':>9}{'p90 s':>8}")
        timed = queries[: args.latency_queries]
        p50, p90 = latency(base, timed, {"max_rerank": 10, "rerank_weight": 0})
        print(f"{'BM25 only':<22}{len(timed):>8}{p50:>9.3f}{p90:>8.3f}")
        for k in (10, 50, 200):
            timed = queries[: max(1, args.latency_queries // 4) if k == 200 else args.latency_queries]
            p50, p90 = latency(base, timed, {"max_rerank": k})
            print(f"{f'max_rerank {k}':<22}{len(timed):>8}{p50:>9.3f}{p90:>8.3f}", flush=True)
    finally:
        process.terminate()
        process.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
