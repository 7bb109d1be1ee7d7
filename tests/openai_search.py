"""The search call of the example this product comes from, with the `openai` Python client 0.25
(the last with `Engine.search`), pointed at a running textgen that loaded a corpus.

    python tests/openai_search.py http://127.0.0.1:PORT QUERY EXPECTED_ID

Run by tests/textgen_http.rs when TEXTGEN_TEST_PYTHON_OPENAI_V0 names a Python with
`openai==0.25.0` (.ci/run makes one); prints one JSON line with what it saw, exits 1 unless the
answer has three results, best first, each with document, score, text and metadata, and the
document with id EXPECTED_ID first.
"""

import json
import sys

import openai

base, query, expected_id = sys.argv[1], sys.argv[2], sys.argv[3]
openai.api_base = f"{base}/v1"
openai.api_key = "not-needed"

answer = openai.Engine("davinci").search(
    search_model="ada", query=query, max_rerank=3, return_metadata=True, sort="relevance"
)
data = answer["data"]
scores = [result["score"] for result in data]
print(json.dumps({
    "object": answer["object"],
    "model": answer["model"],
    "results": [
        {"document": r["document"], "score": r["score"], "id": r["metadata"]["id"], "text": r["text"][:60]}
        for r in data
    ],
}))
ok = (
    len(data) == 3
    and all({"document", "score", "text", "metadata"} <= set(r.keys()) for r in data)
    and scores == sorted(scores, reverse=True)
    and data[0]["metadata"]["id"] == expected_id
)
sys.exit(0 if ok else 1)
