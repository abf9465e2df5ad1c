"""GPU sizing of language models whose layers attend within a sliding window.

Shapes from the models' own config.json on Hugging Face:
- mistralai/Mistral-7B-v0.1: 32 layers, hidden_size 4096, 32 heads, 8 KV heads,
  max_position_embeddings 32768, sliding_window 4096 (every layer), 7.24 B parameters;
- google/gemma-2-9b: 42 layers, head_dim 256, 16 heads, 8 KV heads, 8192 positions,
  sliding_window 4096 on every other layer (21), 9.24 B parameters;
- google/gemma-3-27b-it (text_config): 62 layers, head_dim 128, 32 heads, 16 KV heads, 131072
  positions, sliding_window 1024 on 5 of every 6 layers (52), 27.4 B parameters;
- Qwen/Qwen2-7B: 28 layers, 28 heads, 4 KV heads, head_dim 128, 32768 positions; its
  use_sliding_window is false (windows nothing): here turned on with max_window_layers 21 (the
  last 7 layers windowed), as transformers' Qwen2 reads it.

Before this sizing counted the window, every layer's KV cache was counted for the whole
maxModelLen; now a windowed layer's is counted for min(window + KV_BLOCK, maxModelLen) positions
where the engine keeps only the window (vLLM always, kubemaas where every layer is windowed)."""

from __future__ import annotations

import dataclasses

import pytest

from kubemaas_operator.api import ModelShape, SpecError, parse_shape, parse_spec
from kubemaas_operator.sizing import (
    KV_BLOCK,
    GiB,
    GPUType,
    holds_window_only,
    need_of,
    shape_from_cache,
    size_gpus,
)
from kubemaas_runtime.fetch import shape as fetch_shape

MISTRAL_7B_V01 = ModelShape(architecture="MistralForCausalLM", parameters=7_241_732_096,
                            num_layers=32, hidden_size=4096, num_attention_heads=32,
                            num_key_value_heads=8, head_dim=128, max_position_embeddings=32768,
                            dtype="bfloat16", sliding_window=4096, sliding_window_layers=32)
GEMMA2_9B = ModelShape(architecture="Gemma2ForCausalLM", parameters=9_241_705_984,
                       num_layers=42, hidden_size=3584, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=256, max_position_embeddings=8192,
                       dtype="bfloat16", sliding_window=4096, sliding_window_layers=21)
GEMMA3_27B = ModelShape(architecture="Gemma3ForConditionalGeneration",
                        parameters=27_432_406_640, num_layers=62, hidden_size=5376,
                        num_attention_heads=32, num_key_value_heads=16, head_dim=128,
                        max_position_embeddings=131072, dtype="bfloat16", sliding_window=1024,
                        sliding_window_layers=52)
QWEN2_7B_WINDOWED = ModelShape(architecture="Qwen2ForCausalLM", parameters=7_615_616_512,
                               num_layers=28, hidden_size=3584, num_attention_heads=28,
                               num_key_value_heads=4, head_dim=128,
                               max_position_embeddings=32768, dtype="bfloat16",
                               sliding_window=4096, sliding_window_layers=7)

H100 = GPUType("NVIDIA-H100-80GB-HBM3", 81559, 8)
A100_40 = GPUType("NVIDIA-A100-SXM4-40GB", 40960, 8)


def _per_layer_token(shape: ModelShape) -> int:
    assert shape.num_key_value_heads is not None and shape.head_dim is not None
    return 2 * shape.num_key_value_heads * shape.head_dim * 2  # K and V, bfloat16


@pytest.mark.parametrize(("shape", "length", "before_gib", "after_positions"), [
    # every layer windowed: 32 x 4112 positions instead of 32 x 32768
    (MISTRAL_7B_V01, 32768, 16.0, 32 * (4096 + KV_BLOCK)),
    # half the layers: 21 x 8192 + 21 x 4112
    (GEMMA2_9B, 8192, 10.5, 21 * 8192 + 21 * (4096 + KV_BLOCK)),
    # 10 full layers x 131072 + 52 x 1040
    (GEMMA3_27B, 131072, 248.0, 10 * 131072 + 52 * (1024 + KV_BLOCK)),
    # 21 full layers + the last 7 windowed
    (QWEN2_7B_WINDOWED, 32768, 7.0, 21 * 32768 + 7 * (4096 + KV_BLOCK)),
])
def test_vllm_counts_a_windowed_layer_for_its_window_only(
        shape: ModelShape, length: int, before_gib: float, after_positions: int) -> None:
    before = need_of(shape, max_model_len=length)  # no engine: the whole context, as before
    assert before.kv_cache == before_gib * GiB and before.windowed_layers == 0
    after = need_of(shape, max_model_len=length, engine="vllm")
    assert after.kv_cache == _per_layer_token(shape) * 4 * after_positions  # 4 sequences
    assert after.kv_cache < before.kv_cache and after.weights == before.weights
    words = after.words()
    assert (f"{shape.sliding_window_layers} of {shape.num_layers} layers' sliding window "
            f"counted at {shape.sliding_window + KV_BLOCK} positions") in words  # type: ignore[operator]
    assert "sliding window" not in before.words()


def test_engine_kubemaas_keeps_the_window_only_of_windowed_layers() -> None:
    mistral = need_of(MISTRAL_7B_V01, max_model_len=32768, engine="kubemaas")
    assert mistral.kv_cache == need_of(MISTRAL_7B_V01, max_model_len=32768, engine="vllm").kv_cache
    # layers that mix windows: the windowed ones' window too (KUBEMAAS_WINDOWS_MIXED_LAYERS:
    # the runtime's --hybrid-kv-cache, on by default, gives their blocks back as vLLM does)
    gemma = need_of(GEMMA2_9B, max_model_len=8192, engine="kubemaas")
    assert gemma.kv_cache == need_of(GEMMA2_9B, max_model_len=8192, engine="vllm").kv_cache
    assert gemma.kv_cache < 10.5 * GiB and gemma.windowed_layers == 21
    assert holds_window_only("vllm", 21, 42) and holds_window_only("kubemaas", 21, 42)
    assert holds_window_only("kubemaas", 42, 42) and not holds_window_only(None, 42, 42)


def test_a_window_at_least_the_context_changes_nothing() -> None:
    short = need_of(MISTRAL_7B_V01, max_model_len=4096, engine="vllm")
    assert short.kv_cache == 2 * GiB and short.windowed_layers == 0  # 32 x 4096 x 4 x 4096 B
    assert "sliding window" not in short.words()
    llama_like = dataclasses.replace(MISTRAL_7B_V01, sliding_window=None,
                                     sliding_window_layers=None)
    assert need_of(llama_like, max_model_len=32768, engine="vllm").kv_cache == 16 * GiB


def _spec(shape: ModelShape, engine: str, length: int) -> dict[str, object]:
    raw = {f.metadata["json"]: getattr(shape, f.name) for f in dataclasses.fields(shape)
           if getattr(shape, f.name) is not None}
    return {"model": {"uri": "pvc://store/gemma", "format": "hf", "shape": raw},
            "runtime": {"engine": engine, "llm": {"maxModelLen": length}},
            "gpu": {"count": "auto"}}


def test_gemma3_27b_at_128k_on_h100s_needs_two_gpus_not_eight() -> None:
    """Counted for the whole 131072 positions on all 62 layers, its KV cache for 4 sequences
    was 248 GiB and vLLM was given 8 H100s; with 52 layers at 1040 positions it is 41.7 GiB,
    and 2 H100s hold the replica (25.5 GiB of weights + 20.8 GiB of KV cache + 2 GiB each)."""
    whole = dataclasses.replace(GEMMA3_27B, sliding_window=None, sliding_window_layers=None)
    before = size_gpus(parse_spec(_spec(whole, "vllm", 131072)), (A100_40, H100))
    assert before.gpu is not None and before.gpu.count == 8
    after = size_gpus(parse_spec(_spec(GEMMA3_27B, "vllm", 131072)), (A100_40, H100))
    assert after.gpu is not None and after.gpu.sizing is not None
    assert (after.gpu.count, after.gpu.products) == (2, (H100.product,))
    assert "2 x H100-80GB-HBM3 holds it" in after.gpu.sizing.need
    assert "52 of 62 layers' sliding window counted at 1040 positions" in after.gpu.sizing.need


def test_mistral_at_32k_fits_one_l4_for_engine_kubemaas() -> None:
    """Engine kubemaas serves on one GPU: Mistral 7B v0.1 at 32768 positions was sized at
    13.5 GiB of weights + 16 GiB of KV cache + 2 GiB, too large for an L4 (0.9 x 22.5 GiB);
    with every layer windowed its KV cache is 2 GiB and one L4 holds it."""
    l4 = GPUType("NVIDIA-L4", 23034, 1)
    whole = dataclasses.replace(MISTRAL_7B_V01, sliding_window=None, sliding_window_layers=None)
    for shape, reason in ((whole, "ModelTooLarge"), (MISTRAL_7B_V01, None)):
        raw = _spec(shape, "kubemaas", 32768)
        raw["runtime"]["image"] = "img"  # type: ignore[index]
        spec = size_gpus(parse_spec(raw), (l4,))
        assert spec.gpu is not None and spec.gpu.sizing is not None
        assert (spec.gpu.sizing.reason or None) == reason, spec.gpu.sizing
    assert spec.gpu.count == 1 and "32 of 32 layers' sliding window" in spec.gpu.sizing.need


@pytest.mark.parametrize(("raw", "path", "says"), [
    ({"numLayers": 32, "slidingWindow": 4096}, "slidingWindowLayers", "is needed with"),
    ({"numLayers": 32, "slidingWindowLayers": 32}, "slidingWindow", "is needed with"),
    ({"numLayers": 32, "slidingWindow": 4096, "slidingWindowLayers": 33}, "slidingWindowLayers",
     "33 is more than numLayers"),
    ({"slidingWindow": 0, "slidingWindowLayers": 1}, "slidingWindow", "between 1 and"),
    ({"slidingWindow": 4096, "slidingWindowLayers": 0}, "slidingWindowLayers", "between 1 and"),
    ({"slidingWindow": "4k", "slidingWindowLayers": 1}, "slidingWindow", "must be an integer"),
])
def test_parse_shape_refuses_a_window_it_cannot_size(raw: dict[str, object], path: str,
                                                     says: str) -> None:
    with pytest.raises(SpecError, match=says) as err:
        parse_shape(raw)
    assert err.value.path == f"spec.model.shape.{path}"


def test_parse_shape_reads_the_window() -> None:
    got = parse_shape({"numLayers": 42, "slidingWindow": 4096, "slidingWindowLayers": 21})
    assert got is not None and (got.sliding_window, got.sliding_window_layers) == (4096, 21)


def test_what_the_cache_pod_records_sizes_the_window() -> None:
    """config.json (as the cache pod reads it) -> status.model -> the sizing."""
    config = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
              "text_config": {"model_type": "gemma3_text", "num_hidden_layers": 62,
                              "hidden_size": 5376, "num_attention_heads": 32,
                              "num_key_value_heads": 16, "head_dim": 128,
                              "max_position_embeddings": 131072, "sliding_window": 1024,
                              "sliding_window_pattern": 6, "torch_dtype": "bfloat16"}}
    record = fetch_shape.model_shape(config, [("BF16", [27_432_406_640])])
    recorded = shape_from_cache({"status": {"model": record}})
    assert recorded == dataclasses.replace(GEMMA3_27B, weight_bytes=2 * GEMMA3_27B.parameters)  # type: ignore[operator]


def test_a_cache_record_with_a_window_it_cannot_size_keeps_the_rest() -> None:
    base = {"numLayers": 32, "numAttentionHeads": 32, "headDim": 128,
            "maxPositionEmbeddings": 32768, "weightBytes": 14 * GiB}
    alone = shape_from_cache({"status": {"model": {**base, "slidingWindow": 4096}}})
    assert alone is not None and alone.sliding_window is None and alone.num_layers == 32
    over = shape_from_cache({"status": {"model": {**base, "slidingWindow": 4096,
                                                  "slidingWindowLayers": 40}}})
    assert over is not None and over.sliding_window is None and over.sliding_window_layers is None
    assert over.head_dim == 128  # the rest kept: the whole context is counted
    fine = shape_from_cache({"status": {"model": {**base, "slidingWindow": 4096,
                                                  "slidingWindowLayers": 32}}})
    assert fine is not None and (fine.sliding_window, fine.sliding_window_layers) == (4096, 32)
