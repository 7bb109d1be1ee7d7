"""The official `openai` Python client (1.x), pointed at a running textgen: a completion, the
same completion streamed, and a scored text (echo + logprobs, max_tokens 0).

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
print(json.dumps({
    "openai": openai.__version__,
    "text": choice.text,
    "streamed": streamed,
    "finish_reason": choice.finish_reason,
    "usage": answer.usage.model_dump(),
    "model": answer.model,
    "scored_tokens": scored.choices[0].logprobs.tokens,
    "scored_logprobs": scored.choices[0].logprobs.token_logprobs,
}))
ok = streamed == choice.text and choice.finish_reason == "length" and answer.usage.completion_tokens == 12
sys.exit(0 if ok else 1)
