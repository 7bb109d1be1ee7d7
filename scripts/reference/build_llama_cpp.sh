#!/usr/bin/env bash
# Builds llama.cpp's llama-bench (CPU) from the llama.cpp that PyPI's llama-cpp-python source
# package carries under vendor/llama.cpp, and converts a Hugging Face GPT-2 directory to GGUF in
# f32 and bf16, for scripts/reference/bench_gpt2.py --llama-cpp. Nothing it writes is committed.
#
#   bash scripts/reference/build_llama_cpp.sh /tmp/gpt2-124m /tmp/llama
#   python scripts/reference/bench_gpt2.py /tmp/gpt2-124m --llama-cpp /tmp/llama
#
# Needs cmake and a C++ compiler (apt-get install cmake), and a Python with torch and
# transformers for the converter (PYTHON, default python3). About 10 minutes on 2 cores.
set -euo pipefail

model_dir=$(realpath "${1:?usage: build_llama_cpp.sh HF_GPT2_DIR OUT_DIR}")
out=$(realpath -m "${2:?usage: build_llama_cpp.sh HF_GPT2_DIR OUT_DIR}")
python=${PYTHON:-python3}
version=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
mkdir -p "$out"

src="$out/llama_cpp_python-$version/vendor/llama.cpp"
if [ ! -d "$src" ]; then
    # The source package, through pip's own client (no binary, no dependencies).
    "$python" -m pip download --quiet --no-deps --no-binary :all: \
        "llama-cpp-python==$version" -d "$out/sdist"
    tar xzf "$out/sdist/llama_cpp_python-$version.tar.gz" -C "$out"
fi

if [ ! -x "$src/build/bin/llama-bench" ]; then
    cmake -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF > "$out/cmake.log"
    cmake --build "$src/build" -j "$(nproc)" --target llama-bench > "$out/build.log"
fi
ln -sfn "$src/build/bin/llama-bench" "$out/llama-bench"

# The converter reads GPT-2's context length from `n_ctx`, which the Hugging Face config
# written by transformers no longer has: convert from a copy of the config that does.
staging="$out/hf"
mkdir -p "$staging"
for f in model.safetensors vocab.json merges.txt tokenizer.json; do
    [ -e "$model_dir/$f" ] && ln -sfn "$model_dir/$f" "$staging/$f"
done
"$python" - "$model_dir/config.json" "$staging/config.json" <<'PY'
import json, sys
config = json.load(open(sys.argv[1]))
config.setdefault("n_ctx", config["n_positions"])
json.dump(config, open(sys.argv[2], "w"), indent=2)
PY
for type in f32 bf16; do
    PYTHONPATH="$src/gguf-py" "$python" "$src/convert_hf_to_gguf.py" "$staging" --outtype "$type" \
        --outfile "$out/model-$type.gguf" 2>&1 | tail -1
done
echo "llama-bench and model-{f32,bf16}.gguf in $out"
