"""The examples of the write-up this product comes from, as it has them, with the `openai` Python
client it pins (0.7.0) or 0.25 (the last with `Engine.search`), pointed at a running textgen
that loaded a corpus: the search call and its `["document"]["content"]` line, then
`Completion.create(engine=...)`, plain and streamed. Only the write-up's
`from openai import engine` line is left out: it fails with 0.7.0 itself.

    python tests/openai_v0_example.py http://127.0.0.1:PORT QUERY EXPECTED_ID

Run by tests/textgen_http.rs with the Pythons named by TEXTGEN_TEST_PYTHON_OPENAI_0_7 and
TEXTGEN_TEST_PYTHON_OPENAI_0_25 (.ci/run makes both). Prints what the example prints, then one
JSON line with what it saw; exits 1 unless the best document is EXPECTED_ID, the results are
best first, and the streamed completion equals the plain one.
"""

import json
import sys
from pprint import pprint

import openai
from openai.version import VERSION

base, query, expected_id = sys.argv[1], sys.argv[2], sys.argv[3]
# 0.7.0 writes `/v1` into its paths itself; later 0.x clients expect it in `api_base`.
openai.api_base = base if VERSION == "0.7.0" else f"{base}/v1"
openai.api_key = "not-needed"

# The write-up's search example.
engine = openai.Engine("text-davinci-001")
response = engine.search(search_model="ada", query=query, max_rerank=3, return_metadata=True, sort="relevance")
pprint(json.dumps(response["data"][0]["document"]["content"], indent=4))

# The write-up's completion, plain and streamed.
prompt = "Once upon a time"
completion = openai.Completion.create(engine="davinci", prompt=prompt, max_tokens=8, temperature=0)
streamed = "".join(
    chunk["choices"][0]["text"]
    for chunk in openai.Completion.create(engine="davinci", prompt=prompt, max_tokens=8, temperature=0, stream=True)
)

data = response["data"]
scores = [result["score"] for result in data]
best = data[0]["document"]
print(json.dumps({
    "openai": VERSION,
    "results": [{"_id": r["document"]["_id"], "_score": r["document"]["_score"], "index": r["document"]["index"]} for r in data],
    "content": best["content"][:60],
    "completion": completion["choices"][0]["text"],
    "streamed": streamed,
}))
ok = (
    len(data) == 3
    and scores == sorted(scores, reverse=True)
    and all(r["document"]["_score"] == r["score"] and r["document"]["content"] == r["text"] for r in data)
    and best["_id"] == expected_id
    and completion["choices"][0]["finish_reason"] == "length"
    and streamed == completion["choices"][0]["text"]
)
sys.exit(0 if ok else 1)
