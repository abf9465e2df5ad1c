"""The language-model path of the runtime: Hugging Face model directories served through an
OpenAI-compatible API by an engine with iteration-level batching over a paged KV cache.

loader (model directory -> transformers model + fast tokenizer) · kv_cache (block pool, per-step
paged cache view) · sampling (logits -> tokens) · scheduler (admission, chunked prefill,
preemption) · engine (the one model thread) · detok (incremental text, stop strings) ·
server (the process around it).
"""
