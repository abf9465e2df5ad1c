#!/bin/sh
# Install part of the lock into /opt/kubemaas (runtime/Dockerfile's deps stage; docs/images.md).
#
#   install-locked.sh PATTERN
#
# The first call makes the virtualenv and installs requirements/build.txt (the locked pip and
# setuptools, so that the venv's own pip is replaced in the same layer, not weighed twice). Each
# call installs the packages of requirements/$VARIANT.txt whose requirement line matches PATTERN
# (an awk regular expression; '' for all of them), with --require-hashes --no-deps: exactly the
# lock, every file checked against its sha256; what an earlier call installed is skipped. The Dockerfile calls it once per layer, so that the
# language-model variant's 4.5 GB of dependencies come in three layers of about 1.5 GB: a
# build's commit holds up to three more copies of the layer it commits (podman's diff and its
# copy in /var/tmp, the new layer) beside the container's, so smaller layers need less free disk.
#
# Then, in the same layer (a file deleted by a later layer still weighs in this one), it deletes
# what only compiles code and is never loaded by a running server (242 MB in runtime-llm): C/C++
# and CUDA headers (torch/include, nvidia/*/include: the image has no compiler), static
# libraries (*.a), NVSHMEM's device bitcode (nvidia/nvshmem/lib/*.bc: linked only into kernels
# compiled at run time, by triton, which runtime-llm leaves out), torch's protoc and onnx's
# backend test data. Every shared library stays: GPU nodes need all of them.
set -eu
pattern=$1
req=/tmp/requirements
venv=/opt/kubemaas
# pip byte-compiles what it installs (skipping what this Python cannot compile, such as torch's
# Python 3.12-only test helpers, which a plain compileall fails on).
if [ ! -x "$venv/bin/python" ]; then
  python -m venv "$venv"
  "$venv/bin/pip" install -q --require-hashes --no-deps -r "$req/build.txt"
fi
# A requirement starts on a line of its own (name==version ; marker \); its --hash lines and
# "# via" comments follow, indented.
awk -v pattern="$pattern" '/^[^ #]/ { keep = ($0 ~ pattern) } keep' \
  "$req/$VARIANT.txt" >"$req/part.txt"
if [ -s "$req/part.txt" ]; then
  "$venv/bin/pip" install -q --require-hashes --no-deps -r "$req/part.txt"
fi
site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
rm -rf "$site"/torch/include "$site"/nvidia/*/include "$site"/nvidia/nvshmem/lib/*.bc \
  "$site"/torch/bin/protoc "$site"/torch/bin/protoc-* "$site"/onnx/backend/test/data
find "$venv" -name '*.a' -type f -delete
rm -rf "$req/part.txt" /root/.cache
