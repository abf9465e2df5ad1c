"""GPU sizing (kubemaas_operator.sizing) against published figures for well-known shapes.

Sources of the figures:
- Shapes: the models' own config.json on Hugging Face —
  meta-llama/Meta-Llama-3-8B (num_hidden_layers 32, hidden_size 4096, num_attention_heads 32,
  num_key_value_heads 8, max_position_embeddings 8192, torch_dtype bfloat16),
  meta-llama/Meta-Llama-3-70B (80 layers, hidden_size 8192, 64 heads, 8 KV heads, 8192),
  meta-llama/Llama-3.1-405B (126 layers, hidden_size 16384, 128 heads, 8 KV heads, 131072);
  parameter counts from the same model pages (8.03 B, 70.6 B, 406 B).
- Memory: Hugging Face's "Llama 3.1 - 405B, 70B & 8B with multilinguality and long context"
  (huggingface.co/blog/llama31, section "Inference Memory Requirements"): weights in FP16/BF16
  16 GB (8B), 140 GB (70B), 810 GB (405B); KV cache in FP16 per 1k (1024) tokens 0.125 GB (8B),
  0.313 GB (70B) — i.e. 2 x layers x kv_heads x head_dim x 2 bytes per token.
- Cross-check of the choices: NVIDIA's NIM support matrix
  (docs.nvidia.com/nim/large-language-models/2.0.0/reference/support-matrix) ships BF16 vLLM
  profiles for llama-3.1-8b-instruct at tensor parallelism 1 only, and for
  llama-3.1-70b-instruct at 2, 4 and 8; the sizing below picks 1 and 4 (on 80 GB GPUs, 2 leaves
  no room for a KV cache of four 8k sequences).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from kubemaas_operator.api import GPUSizing, ModelShape, SpecError, parse_spec
from kubemaas_operator.engines import KUBEMAAS_LLM, VLLM, probes
from kubemaas_operator.scheduling import MEMORY_LABEL, PRODUCT_LABEL, NodeInfo, check_capacity
from kubemaas_operator.sizing import (
    GiB,
    GPUType,
    Need,
    choose,
    gpu_types,
    need_of,
    pools,
    shape_from_cache,
    size_gpus,
    startup_budget_s,
)
from kubemaas_runtime.fetch import shape

LLAMA3_8B = ModelShape(architecture="LlamaForCausalLM", parameters=8_030_261_248,
                       weight_bytes=16_060_522_496, num_layers=32, hidden_size=4096,
                       num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                       max_position_embeddings=8192, dtype="bfloat16")
LLAMA3_70B = ModelShape(architecture="LlamaForCausalLM", parameters=70_553_706_496,
                        num_layers=80, hidden_size=8192, num_attention_heads=64,
                        num_key_value_heads=8, max_position_embeddings=8192, dtype="bfloat16")
LLAMA31_405B = ModelShape(architecture="LlamaForCausalLM", parameters=405_853_388_800,
                          num_layers=126, hidden_size=16384, num_attention_heads=128,
                          num_key_value_heads=8, head_dim=128, max_position_embeddings=131072,
                          dtype="bfloat16")

H100 = GPUType("NVIDIA-H100-80GB-HBM3", 81559, 8)
A100_40 = GPUType("NVIDIA-A100-SXM4-40GB", 40960, 8)
A100_80_TWO = GPUType("NVIDIA-A100-SXM4-80GB", 81920, 2)  # the testbed's MIG node: 2 whole
TESTBED = (A100_40, A100_80_TWO, H100)


def _shape_json(shape: ModelShape) -> dict[str, object]:
    return {f.metadata["json"]: getattr(shape, f.name) for f in dataclasses.fields(shape)
            if getattr(shape, f.name) is not None}


def test_kv_cache_per_token_matches_the_published_figures() -> None:
    # 0.125 GB (GiB) per 1024 tokens for 8B, 0.313 for 70B (blog/llama31)
    one_seq_1k = {"max_model_len": 1024, "max_num_seqs": 1}
    assert need_of(LLAMA3_8B, **one_seq_1k).kv_cache == GiB // 8
    assert need_of(LLAMA3_70B, **one_seq_1k).kv_cache / GiB == pytest.approx(0.3125)
    # so at 8k context one sequence is 1 GiB (8B) and 2.5 GiB (70B)
    assert need_of(LLAMA3_8B, max_model_len=8192, max_num_seqs=1).kv_cache == GiB
    assert need_of(LLAMA3_70B, max_model_len=8192, max_num_seqs=1).kv_cache == 5 * GiB // 2


def test_weights_match_the_published_figures() -> None:
    # 16 GB, 140 GB, 810 GB in BF16 (decimal GB, blog/llama31)
    assert need_of(LLAMA3_8B).weights / 1e9 == pytest.approx(16, rel=0.01)
    assert need_of(LLAMA3_70B).weights / 1e9 == pytest.approx(141, rel=0.01)
    assert need_of(LLAMA31_405B, max_model_len=8192).weights / 1e9 == pytest.approx(810,
                                                                                     rel=0.01)
    # weights stored as float32 but served in bfloat16 take half the bytes
    fp32 = dataclasses.replace(LLAMA3_8B, parameters=None, weight_bytes=32_121_044_992,
                               dtype="float32")
    assert need_of(fp32).weights == LLAMA3_8B.weight_bytes
    # an explicit dtype counts from the parameters
    assert need_of(LLAMA3_8B, dtype="float32").weights == 4 * LLAMA3_8B.parameters


def test_llama3_8b_at_8k_fits_one_gpu_of_each_kind() -> None:
    need = need_of(LLAMA3_8B, max_model_len=8192)
    assert need.sequences == 4
    assert need.kv_cache == 4 * GiB
    # per GPU: 15.0 GiB weights + 4 GiB KV + 2 GiB overhead = 21 GiB < 0.9 x 40 GiB
    assert need.per_gpu(1) / GiB == pytest.approx(21.0, abs=0.1)
    choice = choose(need, TESTBED)
    assert not isinstance(choice, GPUSizing)
    assert choice.count == 1
    assert choice.products == tuple(sorted(t.product for t in TESTBED))


def test_llama3_70b_at_8k_needs_four_h100_or_eight_a100_40gb() -> None:
    need = need_of(LLAMA3_70B, max_model_len=8192)
    # 131.4 GiB weights + 10 GiB KV (4 x 2.5 GiB)
    assert need.total / GiB == pytest.approx(141.4, abs=0.1)
    # 2 x H100 is not enough within 0.9 of 79.6 GiB (65.7 + 5 + 2 = 72.7 GiB per GPU)
    assert not need.fits(2, H100.memory_mib)
    assert need.fits(4, H100.memory_mib)
    choice = choose(need, TESTBED)
    assert not isinstance(choice, GPUSizing)
    assert (choice.count, choice.products) == (4, (H100.product,))
    only_a100 = choose(need, [A100_40])
    assert not isinstance(only_a100, GPUSizing)
    assert only_a100.count == 8


def test_llama31_405b_fits_no_node_type_and_says_why_with_numbers() -> None:
    need = need_of(LLAMA31_405B, max_model_len=8192)
    refused = choose(need, TESTBED)
    assert isinstance(refused, GPUSizing)
    assert refused.reason == "ModelTooLarge"
    assert "needs 771.7 GiB per replica (weights 756.0 GiB + KV cache 15.8 GiB" in refused.message
    assert "16 x A100-SXM4-80GB would hold it, but no node offers more than 8 GPUs" in (
        refused.message)
    assert "8 x H100-80GB-HBM3 (81559 MiB)" in refused.message
    assert refused.summary.startswith("ModelTooLarge: needs 771.7 GiB/replica")
    # with only 40 GB GPUs even 16 is not enough: it says what 16 would need per GPU
    small = choose(need, [A100_40])
    assert isinstance(small, GPUSizing)
    assert "not even 16 x A100-SXM4-40GB" in small.message
    nothing = choose(need, [])
    assert isinstance(nothing, GPUSizing) and "no node offers whole GPUs" in nothing.message


def test_pooling_models_need_no_kv_cache() -> None:
    """An embedding model or a reranker holds no KV cache: sized by its weights alone. The
    same 32k-context Qwen3 with its LM head needs 18 GiB of KV cache more."""
    qwen3 = ModelShape(architecture="Qwen3Model", parameters=7_567_295_488, num_layers=36,
                       hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
                       head_dim=128, max_position_embeddings=32768, dtype="bfloat16")
    embedding = need_of(qwen3)
    generating = need_of(dataclasses.replace(qwen3, architecture="Qwen3ForCausalLM"))
    assert embedding.kv_cache == 0 and generating.kv_cache == 18 * GiB
    assert "no KV cache: a pooling model" in embedding.words()
    one = choose(embedding, [A100_40])
    assert not isinstance(one, GPUSizing) and one.count == 1
    # a reranker's shape needs neither KV heads nor layers (BERT-like configs have no KV heads)
    reranker = ModelShape(architecture="XLMRobertaForSequenceClassification",
                          parameters=567_755_777, num_attention_heads=16,
                          max_position_embeddings=514, dtype="float32")
    need = need_of(reranker)
    assert (need.kv_cache, need.weights, need.degrees(4)) == (0, 2 * 567_755_777, [1, 2, 4])
    assert [pools(a) for a in ("BertModel", "LlamaForCausalLM", "GPT2LMHeadModel",
                               "Qwen2ForSequenceClassification", None,
                               "LlavaForConditionalGeneration")] == [
        True, False, False, True, False, False]


def test_tensor_parallel_degrees_divide_the_heads_as_vllm_requires() -> None:
    need = Need(weights=1, kv_cache=1, sequences=1, max_model_len=1, heads=40, kv_heads=8,
                utilization=0.9)
    # 40 heads: 1, 2, 4, 5, 8, 10 divide them; the KV heads (8) rule out 5 and 10
    assert need.degrees() == [1, 2, 4, 8]
    assert dataclasses.replace(need, heads=32, kv_heads=8).degrees() == [1, 2, 4, 8, 16]
    assert dataclasses.replace(need, heads=None).degrees() == [1]
    # beyond the KV heads each GPU keeps a copy of one: the KV cache splits no further
    wide = dataclasses.replace(need, weights=16 * GiB, kv_cache=8 * GiB, kv_heads=2, heads=16)
    kv_part = {t: wide.per_gpu(t) - wide.weights // t for t in (1, 2, 8)}
    assert kv_part[1] - kv_part[2] == 4 * GiB
    assert kv_part[8] == kv_part[2]


def test_gpu_types_from_node_labels() -> None:
    def node(name: str, product: str, mib: str, gpus: int) -> NodeInfo:
        return NodeInfo(name=name, labels={PRODUCT_LABEL: product, MEMORY_LABEL: mib},
                        allocatable={"nvidia.com/gpu": gpus})

    types = gpu_types([node("a", "P", "1000", 4), node("b", "P", "1000", 8),
                       node("c", "Q", "2000", 2), node("d", "R", "bad", 8),
                       node("e", "S", "3000", 0), NodeInfo(name="cpu")])
    assert types == (GPUType("P", 1000, 8), GPUType("Q", 2000, 2))


def _auto_spec(**gpu: object) -> dict[str, object]:
    return {"model": {"uri": "pvc://store/llama", "format": "hf",
                      "shape": _shape_json(LLAMA3_70B)},
            "runtime": {"llm": {"maxModelLen": 8192}},
            "gpu": {"count": "auto", **gpu}}


def test_size_gpus_sets_count_and_products_and_the_capacity_check_uses_them() -> None:
    spec = size_gpus(parse_spec(_auto_spec()), TESTBED)
    assert spec.gpu is not None and spec.gpu.sizing is not None
    assert (spec.gpu.count, spec.gpu.products) == (4, (H100.product,))
    assert "4 x H100-80GB-HBM3 holds it" in spec.gpu.sizing.need
    nodes = [NodeInfo(name="h100-0", labels={PRODUCT_LABEL: H100.product,
                                             MEMORY_LABEL: str(H100.memory_mib)},
                      allocatable={"nvidia.com/gpu": 8})]
    busy = check_capacity(spec, nodes, {"h100-0": {"nvidia.com/gpu": 7}}, 1)
    assert busy.reason == "InsufficientGPU" and not busy.never
    assert busy.message.startswith("needs 141.4 GiB per replica")
    assert "room for 0 replica(s) now" in busy.message
    assert check_capacity(spec, nodes, {}, 2).fits


def test_size_gpus_honours_products_and_min_memory() -> None:
    a100 = size_gpus(parse_spec(_auto_spec(products=[A100_40.product])), TESTBED)
    assert a100.gpu is not None and (a100.gpu.count, a100.gpu.products) == (8, (A100_40.product,))
    big = size_gpus(parse_spec(_auto_spec(minMemory="80Gi")), TESTBED)
    assert big.gpu is not None and big.gpu.sizing is not None
    assert big.gpu.sizing.reason == "ModelTooLarge"  # only the 2-GPU A100-80GB node qualifies


def test_products_or_memory_no_node_offers_are_said_as_such() -> None:
    """gpu.products naming a product no node has said 'ModelTooLarge ... no node offers whole
    GPUs with the labels ...' although GPU nodes are there: the filter matched none."""
    b200 = size_gpus(parse_spec(_auto_spec(products=["NVIDIA-B200"])), TESTBED)
    assert b200.gpu is not None and b200.gpu.sizing is not None
    assert b200.gpu.sizing.reason == "UnknownGPUProduct", b200.gpu.sizing
    assert "no node offers NVIDIA-B200" in b200.gpu.sizing.message
    assert "H100-80GB-HBM3" in b200.gpu.sizing.message  # what the nodes offer
    cap = check_capacity(b200, [], {}, 1)
    assert cap.never and cap.reason == "UnknownGPUProduct"
    huge = size_gpus(parse_spec(_auto_spec(minMemory="1000Gi")), TESTBED)
    assert huge.gpu is not None and huge.gpu.sizing is not None
    assert "minMemory 1024000 MiB" in huge.gpu.sizing.message, huge.gpu.sizing
    assert "no node offers whole GPUs" not in huge.gpu.sizing.message


def test_a_model_too_large_is_never_fit_in_the_capacity_check() -> None:
    raw = _auto_spec()
    raw["model"]["shape"] = _shape_json(LLAMA31_405B)  # type: ignore[index]
    spec = size_gpus(parse_spec(raw), TESTBED)
    cap = check_capacity(spec, [], {}, 1)
    assert not cap.fits and cap.never and cap.reason == "ModelTooLarge"
    assert "would hold it" in cap.message


def test_engine_kubemaas_sizes_one_gpu_only() -> None:
    raw = _auto_spec()
    raw["runtime"] = {"engine": "kubemaas", "image": "img", "llm": {"maxModelLen": 8192}}
    spec = size_gpus(parse_spec(raw), TESTBED)
    assert spec.gpu is not None and spec.gpu.sizing is not None
    assert spec.gpu.sizing.reason == "ModelTooLarge"
    assert "engine kubemaas serves on one GPU" in spec.gpu.sizing.message
    raw["model"]["shape"] = _shape_json(LLAMA3_8B)  # type: ignore[index]
    eight = size_gpus(parse_spec(raw), TESTBED)
    assert eight.gpu is not None and eight.gpu.count == 1 and not eight.gpu.sizing.reason  # type: ignore[union-attr]


def test_an_incomplete_shape_without_a_cache_is_an_invalid_spec() -> None:
    """spec.model.shape without numLayers (and no model cache to record it) was
    ModelShapeUnknown, phase Pending, with a Deployment of 1 GPU of any product: a pod loading a
    model onto a GPU nothing sized, waiting for a record no cache would ever make."""
    raw = _auto_spec()
    del raw["model"]["shape"]["numLayers"]  # type: ignore[index]
    with pytest.raises(SpecError, match=r"numLayers.*gpu\.count auto"):
        size_gpus(parse_spec(raw), TESTBED)
    raw["model"]["cache"] = "llama"  # type: ignore[index]
    del raw["model"]["uri"]  # type: ignore[attr-defined]
    cached = size_gpus(parse_spec(raw), TESTBED)  # the cache may record it: wait
    assert cached.gpu is not None and cached.gpu.sizing is not None
    assert cached.gpu.sizing.reason == "ModelShapeUnknown"


def test_unknown_shape_waits_and_a_fixed_count_is_left_alone() -> None:
    raw = _auto_spec()
    del raw["model"]["shape"]  # type: ignore[attr-defined]
    with pytest.raises(SpecError, match=r"is needed for gpu\.count auto"):
        parse_spec(raw)
    # a model cache that has not recorded the shape yet: sized once it has
    with_shape = parse_spec(_auto_spec())
    waiting = dataclasses.replace(with_shape, model=dataclasses.replace(with_shape.model,
                                                                         shape=None))
    spec = size_gpus(waiting, TESTBED)
    assert spec.gpu is not None and spec.gpu.sizing is not None
    assert spec.gpu.sizing.reason == "ModelShapeUnknown"
    cap = check_capacity(spec, [], {}, 1)
    assert cap.reason == "ModelShapeUnknown" and not cap.never
    # the cache's record, when there is one, is the shape
    recorded = size_gpus(waiting, TESTBED, LLAMA3_8B)
    assert recorded.gpu is not None and recorded.gpu.count == 1
    partial = _auto_spec()
    partial["model"]["shape"] = {"parameters": 10}  # type: ignore[index]
    with pytest.raises(SpecError, match="numLayers"):  # no cache will record it: InvalidSpec
        size_gpus(parse_spec(partial), TESTBED)
    fixed = _auto_spec(count=2)
    fixed_spec = parse_spec(fixed)
    assert size_gpus(fixed_spec, TESTBED) is fixed_spec


def test_a_refused_model_asks_for_gpus_no_node_has() -> None:
    """Its pods wait unscheduled (what would hold it, as a minimum GPU memory) rather than
    loading onto GPUs that are too small."""
    raw = _auto_spec()
    raw["model"]["shape"] = _shape_json(LLAMA31_405B)  # type: ignore[index]
    spec = size_gpus(parse_spec(raw), TESTBED)
    assert spec.gpu is not None and spec.gpu.count == 16  # 16 x 80 GB would hold it
    least = spec.gpu.min_memory_mib
    assert least is not None and not any(t.gpus >= 16 and t.memory_mib >= least
                                         for t in TESTBED)
    # engine kubemaas: one GPU, with more memory than any has
    raw["model"]["shape"] = _shape_json(LLAMA3_70B)  # type: ignore[index]
    raw["runtime"] = {"engine": "kubemaas", "image": "img", "llm": {"maxModelLen": 8192}}
    one = size_gpus(parse_spec(raw), TESTBED)
    assert one.gpu is not None and one.gpu.count == 1 and one.gpu.min_memory_mib is not None
    assert one.gpu.min_memory_mib > max(t.memory_mib for t in TESTBED)


def test_shape_from_a_model_cache_record() -> None:
    record = {**_shape_json(LLAMA3_8B), "files": 4, "somethingNew": "ignored"}
    cache = {"apiVersion": "serving.kubemaas.io/v1alpha1", "kind": "ModelCache",
             "status": {"phase": "Ready", "model": record}}
    assert shape_from_cache(cache) == LLAMA3_8B
    assert shape_from_cache(None) is None  # none named, or the CRD is not installed
    assert shape_from_cache({"status": {"phase": "Downloading"}}) is None  # not recorded yet
    assert shape_from_cache({"status": None}) is None
    assert shape_from_cache({"status": {"model": {"numLayers": "many"}}}) is None  # unreadable
    assert shape_from_cache({"status": {"model": []}}) is None


def test_a_cache_record_with_an_unusable_value_keeps_the_others() -> None:
    """config.json's values as the cache recorded them: a quantized model's dtype (int8,
    float8_e4m3fn) or a 0 used to void the whole record, so a Ready cache left the model at
    ModelShapeUnknown ("wait for the model cache to record it") for ever."""
    record = {"architecture": "LlamaForCausalLM", "weightBytes": 8_500_000_000,
              "numLayers": 32, "hiddenSize": 4096, "numAttentionHeads": 32,
              "numKeyValueHeads": 0, "headDim": 128, "maxPositionEmbeddings": 8192,
              "dtype": "float8_e4m3fn"}
    shape = shape_from_cache({"status": {"model": record}})
    assert shape is not None
    assert (shape.weight_bytes, shape.num_layers, shape.head_dim) == (8_500_000_000, 32, 128)
    assert shape.dtype is None and shape.num_key_value_heads is None
    assert need_of(shape).kv_heads == 32  # the attention heads stand in


def test_the_spec_completes_a_cache_record_key_by_key() -> None:
    """A record without a usable numLayers (a 0 in config.json) took the place of the whole of
    spec.model.shape, so the numLayers the user set there to fix it was never read and the
    model stayed ModelShapeUnknown, its message naming spec.model.shape."""
    raw = _auto_spec()
    raw["model"]["cache"] = "llama"  # type: ignore[index]
    del raw["model"]["uri"]  # type: ignore[attr-defined]
    raw["model"]["shape"] = {"numLayers": 32}  # type: ignore[index]
    record = {**_shape_json(LLAMA3_8B), "numLayers": 0}
    shape = shape_from_cache({"status": {"model": record}})
    assert shape is not None and shape.num_layers is None
    spec = size_gpus(parse_spec(raw), TESTBED, shape)
    assert spec.gpu is not None and spec.gpu.sizing is not None
    assert spec.gpu.sizing.reason == "", spec.gpu.sizing
    assert spec.gpu.count == size_gpus(parse_spec(raw), TESTBED, LLAMA3_8B).gpu.count  # type: ignore[union-attr]
    # the record's own values win over the spec's
    raw["model"]["shape"] = {"numLayers": 32, "weightBytes": 1}  # type: ignore[index]
    assert startup_budget_s(parse_spec(raw), shape) == startup_budget_s(parse_spec(raw),
                                                                         LLAMA3_8B)
    # neither has it: the message says the spec completes the record
    del raw["model"]["shape"]  # type: ignore[attr-defined]
    missing = size_gpus(parse_spec(raw), TESTBED, shape)
    assert missing.gpu is not None and missing.gpu.sizing is not None
    assert missing.gpu.sizing.reason == "ModelShapeUnknown"
    assert "completing the model cache's status.model" in missing.gpu.sizing.message


def test_startup_budget_grows_with_the_weights() -> None:
    def budget(shape: ModelShape | None) -> int:
        spec = parse_spec(_auto_spec())
        model = dataclasses.replace(spec.model, shape=shape)
        return startup_budget_s(dataclasses.replace(spec, model=model))

    assert budget(None) == 600
    assert 600 < budget(LLAMA3_8B) < budget(LLAMA3_70B) < budget(LLAMA31_405B)
    assert budget(LLAMA3_8B) == 600 + 77  # 16.06 GB at 200 MiB/s


def test_the_startup_probe_of_a_hostile_shape_stays_an_int32() -> None:
    """weightBytes 2^62 (the CRD's limit) made failureThreshold 2.2e9, past int32: the API
    server refused the Deployment (Rejected) where the sizing's ModelTooLarge should speak."""
    spec = parse_spec(_auto_spec())
    huge = dataclasses.replace(LLAMA3_8B, weight_bytes=2**62, parameters=None)
    budget = startup_budget_s(dataclasses.replace(
        spec, model=dataclasses.replace(spec.model, shape=huge)))
    for engine in (VLLM, KUBEMAAS_LLM):
        threshold = probes(engine, budget)["startup"]["failureThreshold"]
        assert 1 <= threshold <= 2**31 - 1, threshold


def test_a_hidden_size_below_the_heads_is_no_head_dim() -> None:
    """hiddenSize 1 with 32 heads made headDim 1 // 32 = 0: a KV cache of 0 bytes, and one
    small GPU chosen for a model whose cache was never counted."""
    shape = dataclasses.replace(LLAMA3_8B, hidden_size=1, head_dim=None)
    with pytest.raises(SpecError, match="headDim"):
        need_of(shape)


def test_a_fixed_count_vllm_cannot_split_the_heads_over_is_refused() -> None:
    """gpu.count 3 with engine vllm is --tensor-parallel-size 3: vLLM exits at once for 32
    heads, so the pod crash-looped on 3 GPUs; now InvalidSpec names the counts that work."""
    raw = _auto_spec(count=3)
    with pytest.raises(SpecError, match=r"tensor-parallel-size 3.*use 1, 2, 4, 8, 16"):
        size_gpus(parse_spec(raw), TESTBED)
    fine = parse_spec(_auto_spec(count=4))
    assert size_gpus(fine, TESTBED) is fine
    raw["runtime"] = {"engine": "kubemaas", "image": "img"}  # not vLLM's rule (and refused
    raw["gpu"] = {"count": 1}                                # above one GPU anyway)
    one = parse_spec(raw)
    assert size_gpus(one, TESTBED) is one


def test_kv_heads_that_do_not_divide_the_heads_are_refused() -> None:
    """numKeyValueHeads 80 for 8 heads (a typo of 8) sized a KV cache ten times over; no model
    has it (each KV head serves heads / kv query heads)."""
    raw = _auto_spec()
    raw["model"]["shape"] = {**_shape_json(LLAMA3_8B), "numKeyValueHeads": 80}  # type: ignore[index]
    with pytest.raises(SpecError, match="numKeyValueHeads") as err:
        parse_spec(raw)
    assert err.value.path == "spec.model.shape.numKeyValueHeads"
    # a cache's record with them: the heads stand in, the rest is kept
    record = {**_shape_json(LLAMA3_8B), "numKeyValueHeads": 5}
    shape = shape_from_cache({"status": {"model": record}})
    assert shape is not None and shape.num_key_value_heads is None
    assert shape.num_layers == LLAMA3_8B.num_layers


# config.json of the other served families (values from the models' own config.json on Hugging
# Face: google/gemma-7b, google/gemma-2-9b, mistralai/Mixtral-8x7B-v0.1, Qwen/Qwen3-30B-A3B):
# Gemma's head_dim is not hidden_size / heads, Qwen3's neither
GEMMA_7B = {"architectures": ["GemmaForCausalLM"], "hidden_size": 3072, "num_hidden_layers": 28,
            "num_attention_heads": 16, "num_key_value_heads": 16, "head_dim": 256,
            "max_position_embeddings": 8192, "torch_dtype": "bfloat16"}
GEMMA2_9B = {"architectures": ["Gemma2ForCausalLM"], "hidden_size": 3584,
             "num_hidden_layers": 42, "num_attention_heads": 16, "num_key_value_heads": 8,
             "head_dim": 256, "max_position_embeddings": 8192, "torch_dtype": "float32"}
MIXTRAL_8X7B = {"architectures": ["MixtralForCausalLM"], "hidden_size": 4096,
                "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
                "num_key_value_heads": 8, "num_local_experts": 8, "vocab_size": 32000,
                "max_position_embeddings": 32768, "torch_dtype": "bfloat16"}
QWEN3_30B_A3B = {"architectures": ["Qwen3MoeForCausalLM"], "hidden_size": 2048,
                 "moe_intermediate_size": 768, "num_hidden_layers": 48,
                 "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128,
                 "num_experts": 128, "vocab_size": 151936, "max_position_embeddings": 40960,
                 "torch_dtype": "bfloat16"}


def _moe_tensors(config: dict[str, Any], experts: int, inter: int) -> list[tuple[str, list[int]]]:
    """The BF16 tensors' shapes of a mixture-of-experts checkpoint, expert by expert, as its
    safetensors files hold them (norms of q and k where head_dim is given: Qwen3)."""
    h, layers = config["hidden_size"], config["num_hidden_layers"]
    d = config.get("head_dim") or h // config["num_attention_heads"]
    q, kv = config["num_attention_heads"] * d, config["num_key_value_heads"] * d
    layer = [[q, h], [kv, h], [kv, h], [h, q], [experts, h], [h], [h]]
    layer += [[d], [d]] if "head_dim" in config else []
    layer += [[inter, h], [h, inter], [inter, h]] * experts
    return [("BF16", s) for s in [[config["vocab_size"], h]] * 2 + [[h]] + layer * layers]


def _sized(config: dict[str, Any], tensors: list[tuple[str, list[int]]] | None = None) -> Need:
    """config.json through the shape the model cache records and the operator reads."""
    record = shape.model_shape(config, tensors or [])
    if not tensors:
        record["parameters"] = 1_000_000_000  # (only the KV cache is looked at)
    found = shape_from_cache({"status": {"model": record}})
    assert found is not None
    return need_of(found, max_model_len=1024, max_num_seqs=1)


@pytest.mark.parametrize(("config", "per_token"), [
    (GEMMA_7B, 2 * 28 * 16 * 256 * 2),    # not 2 x 28 x 16 x 192 (3072 / 16) x 2
    (GEMMA2_9B, 2 * 42 * 8 * 256 * 2),    # not 224 (3584 / 16); served in bfloat16
    (MIXTRAL_8X7B, 2 * 32 * 8 * 128 * 2),
    (QWEN3_30B_A3B, 2 * 48 * 4 * 128 * 2)])  # not 64 (2048 / 32)
def test_the_kv_cache_of_the_other_families_reads_their_head_dim_and_kv_heads(
        config: dict[str, Any], per_token: int) -> None:
    assert _sized(config).kv_cache == per_token * 1024


@pytest.mark.parametrize(("config", "experts", "inter", "published"), [
    (MIXTRAL_8X7B, 8, 14336, 46_702_792_704),    # 46.7 B (the model card)
    (QWEN3_30B_A3B, 128, 768, 30_532_122_624)])  # 30.5 B (the model card)
def test_a_mixture_of_experts_weighs_all_its_experts(
        config: dict[str, Any], experts: int, inter: int, published: int) -> None:
    """Every expert is held in GPU memory, though a token runs only a few of them: the
    parameters counted from the checkpoint's tensors are the whole model's."""
    need = _sized(config, _moe_tensors(config, experts, inter))
    assert need.weights == 2 * published
