"""Attention logit soft-capping (Gemma 2: transformers passes ``softcap=`` to the attention
function): the engine's attention caps the scores as transformers' eager attention does, on
every path of an engine step (decode rows over blocks, in width groups and over lanes; prompt
chunks alone and in batches: tests/unit/test_llm_chunk_batch.py; whole models:
tests/runtime/test_llm_families.py and test_llm_sliding_window.py)."""

from __future__ import annotations

import types

import pytest
import torch
from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward

from kubemaas_runtime.llm import attention
from kubemaas_runtime.llm.attention import PagedStep, paged_attention
from kubemaas_runtime.llm.kv_cache import KVStore

BLOCK, HEADS, KV_HEADS, DIM, CAP = 4, 4, 2, 8, 2.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_capped_scores_as_transformers_eager_attention(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    q = torch.randn(1, HEADS, 5, DIM, dtype=dtype) * 3
    k, v = (torch.randn(1, KV_HEADS, 9, DIM, dtype=dtype) * 3 for _ in range(2))
    mask = torch.rand(1, 1, 5, 9) > 0.3
    mask[..., 0] = True
    module = types.SimpleNamespace(num_key_value_groups=HEADS // KV_HEADS, training=False)
    additive = torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)
    want, _ = eager_attention_forward(module, q, k, v, additive, dropout=0.0, scaling=0.3,
                                      softcap=CAP)
    got = attention.sdpa(q, k, v, mask, 0.3, CAP, gqa=True)
    torch.testing.assert_close(got.transpose(1, 2), want)


def _decode_step(rows: int, lengths: list[int], store: KVStore) -> PagedStep:
    width = -(-max(lengths) // BLOCK)
    blocks = torch.zeros(rows, width, dtype=torch.long)
    for r, n in enumerate(lengths):
        first = 1 + r * width
        blocks[r, :-(-n // BLOCK)] = torch.arange(first, first - (-n // BLOCK))
    keys = torch.arange(width * BLOCK)
    mask = keys[None, :] < torch.tensor(lengths)[:, None]
    return PagedStep(store, BLOCK, torch.zeros(rows, dtype=torch.long), decode_rows=rows,
                     decode_blocks=blocks, decode_mask=mask[:, None, None, :])


@pytest.mark.parametrize("groups", [None, [(1, 3), (1, 1)]])
def test_decode_rows_cap_their_scores(groups: list[tuple[int, int]] | None) -> None:
    torch.manual_seed(1)
    lengths = [11, 3]
    store = KVStore(1, 1 + 2 * 3, BLOCK, KV_HEADS, DIM, torch.float32, torch.device("cpu"))
    store.keys[0].normal_(std=3)
    store.values[0].normal_()
    step = _decode_step(2, lengths, store)
    step.decode_groups = groups
    query = torch.randn(1, HEADS, 2, DIM) * 3
    module = types.SimpleNamespace(num_key_value_groups=HEADS // KV_HEADS)
    got, _ = paged_attention(module, query, store.keys[0], store.values[0], None, scaling=0.3,
                             kubemaas_step=step, softcap=CAP)
    for r, n in enumerate(lengths):
        assert step.decode_blocks is not None
        slots = (step.decode_blocks[r, :, None] * BLOCK + torch.arange(BLOCK)).flatten()[:n]
        k = store.keys[0][slots].transpose(0, 1)[None]       # [1, kvH, n, d]
        v = store.values[0][slots].transpose(0, 1)[None]
        want, _ = eager_attention_forward(
            types.SimpleNamespace(num_key_value_groups=HEADS // KV_HEADS, training=False),
            query[:, :, r:r + 1], k, v, None, dropout=0.0, scaling=0.3, softcap=CAP)
        torch.testing.assert_close(got[0, r], want[0, 0])
