"""The official `openai` Python client (1.x), pointed at a running textgen: a completion, the
same completion streamed, a scored text (echo + logprobs, max_tokens 0), and embeddings (the
client asks for base64 by default; the same vectors as floats).

    python tests/openai_client.py http://127.0.0.1:PORT PROMPT

Run by tests/textgen_http.rs when TEXTGEN_TEST_PYTHON names a Python with `openai` installed
(.ci/run makes one); prints one JSON line with what it saw, exits 1 on a mismatch.
"""

import json
import sys

import openai

base, prompt = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=f"{base}/v1", api_key="not-needed")

answer = client.completions.create(model="davinci", prompt=prompt, max_tokens=12, temperature=0)
choice = answer.choices[0]
streamed = "".join(
    chunk.choices[0].text
    for chunk in client.completions.create(model="davinci", prompt=prompt, max_tokens=12, temperature=0, stream=True)
    if chunk.choices
)
scored = client.completions.create(model="davinci", prompt=prompt, max_tokens=0, echo=True, logprobs=1)
texts = [prompt, "A second, different text."]
embedded = client.embeddings.create(model="ada", input=texts)
as_floats = client.embeddings.create(model="ada", input=texts, encoding_format="float")
vectors = [item.embedding for item in embedded.data]
norms = [sum(v * v for v in vector) ** 0.5 for vector in vectors]
print(json.dumps({
    "openai": openai.__version__,
    "text": choice.text,
    "streamed": streamed,
    "finish_reason": choice.finish_reason,
    "usage": answer.usage.model_dump(),
    "model": answer.model,
    "scored_tokens": scored.choices[0].logprobs.tokens,
    "scored_logprobs": scored.choices[0].logprobs.token_logprobs,
    "embedding_dims": [len(vector) for vector in vectors],
    "embedding_norms": norms,
    "embedding_tokens": embedded.usage.prompt_tokens,
}))
ok = (
    streamed == choice.text
    and choice.finish_reason == "length"
    and answer.usage.completion_tokens == 12
    and [item.index for item in embedded.data] == [0, 1]
    and all(
        abs(a - b) < 1e-6 for vector, item in zip(vectors, as_floats.data) for a, b in zip(vector, item.embedding)
    )
    and all(abs(n - 1) < 1e-4 for n in norms)
    and vectors[0] != vectors[1]
)
sys.exit(0 if ok else 1)
