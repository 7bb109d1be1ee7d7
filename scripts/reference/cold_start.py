#!/usr/bin/env python3
"""The PyTorch stack's cold start, for benches/src/cold_start.rs to time beside ours: one fresh
process that imports the framework, loads the same weights and answers once, then prints one
JSON line (its own timings) and exits.

    python scripts/reference/cold_start.py classifier MODEL_DIR IMAGE     # timm MobileNetV2
    python scripts/reference/cold_start.py textgen MODEL_DIR PROMPT       # transformers GPT-2

MODEL_DIR is what the Rust service loads (config.json + model.safetensors in the timm or Hugging
Face layout; for textgen also vocab.json + merges.txt). Threads: torch's default.
"""

import json
import sys
import time

start = time.perf_counter()
kind, model_dir, item = sys.argv[1], sys.argv[2], sys.argv[3]
phases = {}

if kind == "classifier":
    import timm
    import torch
    from PIL import Image
    from safetensors.torch import load_file

    phases["import"] = time.perf_counter() - start
    t = time.perf_counter()
    config = json.load(open(f"{model_dir}/config.json"))
    model = timm.create_model(
        "mobilenetv2_100", pretrained=False, num_classes=config.get("num_classes", 1000)
    ).eval()
    model.load_state_dict(load_file(f"{model_dir}/model.safetensors"))
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    phases["load"] = time.perf_counter() - t
    t = time.perf_counter()
    with torch.inference_mode():
        probabilities = model(transform(Image.open(item).convert("RGB")).unsqueeze(0)).softmax(-1)
    answer = int(probabilities.argmax())
    phases["first_answer"] = time.perf_counter() - t
elif kind == "textgen":
    import torch
    from transformers import GPT2LMHeadModel, GPT2TokenizerFast

    phases["import"] = time.perf_counter() - start
    t = time.perf_counter()
    model = GPT2LMHeadModel.from_pretrained(model_dir).eval()
    tokenizer = GPT2TokenizerFast.from_pretrained(model_dir)
    phases["load"] = time.perf_counter() - t
    t = time.perf_counter()
    with torch.inference_mode():
        ids = tokenizer(item, return_tensors="pt").input_ids
        answer = tokenizer.decode(model.generate(ids, max_new_tokens=1, do_sample=False, pad_token_id=50256)[0, -1:])
    phases["first_answer"] = time.perf_counter() - t
else:
    sys.exit(f"unknown kind {kind!r}: classifier or textgen")

phases["total_in_process"] = time.perf_counter() - start
print(json.dumps({"answer": answer, "seconds": phases}), flush=True)
