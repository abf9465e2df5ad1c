"""Convert a Hugging Face model directory to GGUF (f32) with llama.cpp's own converter.

    <llamacpp venv>/bin/python bench/llm/peers/to_gguf.py --llama-cpp DIR --model HF_DIR \\
        --out F.gguf

``DIR`` is llama.cpp's source tree as vendored in the llama-cpp-python sdist (the converter,
``convert_hf_to_gguf.py`` with its ``conversion/`` package, and ``gguf-py``). The converter runs
with the ``gguf-py`` beside it, as it does by default: PyPI's ``gguf`` 0.19.0 (installed in the
venv too) lacks ``gguf.LazyChunkedTensor``, which this converter uses
(``AttributeError: module 'gguf' has no attribute 'LazyChunkedTensor'``), although the copy in
the sdist carries the same version number.

One patch: the converter identifies a byte-level BPE's pre-tokenizer by hashing the tokens of a
test string and refuses hashes it does not know ("BPE pre-tokenizer was not recognized"). The
benchmark's tokenizer is trained in the repository, so its hash is new; its pre-tokenizer is
``ByteLevel`` with GPT-2's split regex, which is llama.cpp's ``gpt-2`` pre-tokenizer type, so the
converter is told that.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-cpp", type=Path, required=True)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    os.environ.pop("NO_LOCAL_GGUF", None)
    sys.path.insert(0, str(a.llama_cpp))
    import convert_hf_to_gguf
    from conversion import base

    def gpt2_pre(self: object, tokenizer: object) -> str:
        return "gpt-2"

    base.TextModel.get_vocab_base_pre = gpt2_pre  # type: ignore[method-assign]
    sys.argv = ["convert_hf_to_gguf.py", str(a.model), "--outfile", str(a.out), "--outtype", "f32"]
    convert_hf_to_gguf.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
