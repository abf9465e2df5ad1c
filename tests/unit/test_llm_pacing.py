"""The prefill pacer (runtime llm/pacing.py): a step's prompt tokens beside running decodes
capped from a fit of measured step times, the attention over a prompt already read counted."""

from __future__ import annotations

from kubemaas_runtime.llm.pacing import PrefillPacer, chunk_reads


def test_prefill_pacer_caps_from_the_fitted_step_time() -> None:
    pacer = PrefillPacer(share=1.0, floor=16, ceiling=512)
    assert pacer.cap(0) is None  # nobody decodes: no cap
    assert pacer.cap(20) == 20  # nothing measured: share x decode rows
    pacer.observe(0.100, 20)
    assert pacer.cap(20) == 20  # one step size: no fixed cost known yet, the cautious cap
    for tokens in (20, 60, 100, 20, 60, 100):  # 50 ms fixed + 2.5 ms per token
        pacer.observe(0.050 + 0.0025 * tokens, tokens)
    cost = pacer.fit()
    assert cost is not None and cost.per_read == 0  # no reads recorded: tokens alone
    assert abs(cost.fixed - 0.050) < 1e-6 and abs(cost.per_token - 0.0025) < 1e-9
    assert pacer.cap(20) == 40  # 1.0 x (50 + 20 x 2.5) ms / 2.5 ms per token
    assert pacer.cap(4) == 24
    # more prompts waiting than streams decoding: no cap (the prompts are most of the requests
    # in service; the few streams wait longer for a step that starts many)
    assert pacer.cap(4, prompts=12) is None and pacer.cap(4, prompts=4) == 24
    assert PrefillPacer(share=0.1, floor=16, ceiling=512).cap(4) == 16  # never below a block
    for _ in range(64):  # the window forgets: now size does not matter
        pacer.observe(0.2, 50)
        pacer.observe(0.2, 10)
    assert pacer.cap(4) == 512  # no per-token cost: only the token budget
    assert PrefillPacer(share=0, floor=16, ceiling=512).cap(16) is None


def test_prefill_pacer_counts_the_attention_over_a_prompt_already_read() -> None:
    pacer = PrefillPacer(share=1.0, floor=16, ceiling=512)
    # 8 decodes of ~80 positions each beside chunks further and further into a long prompt:
    # 20 ms fixed, 1 ms per row, 0.5 us per KV position attended over
    def step_s(tokens: int, reads: int) -> float:
        return 0.020 + 0.001 * tokens + 0.0000005 * reads

    decode_reads = 8 * 80
    for prefix in range(0, 1024, 32):
        for t in (24, 32):
            reads = decode_reads + chunk_reads(prefix, t)
            pacer.observe(step_s(8 + t, reads), 8 + t, reads)
        pacer.observe(step_s(8, decode_reads), 8, decode_reads)
    cost = pacer.fit()
    assert cost is not None
    assert abs(cost.per_read - 0.0000005) < 1e-11 and abs(cost.per_token - 0.001) < 1e-7
    decodes_s = step_s(8, decode_reads)
    caps = {prefix: pacer.cap(8, 1, decode_reads, prefix) for prefix in (0, 500, 1000)}
    assert caps == {0: 28, 500: 22, 1000: 18}  # later chunks attend over more: fewer tokens
    for prefix, t in caps.items():  # a chunk at the cap adds about the decodes' time, no more
        assert t is not None
        extra = step_s(8 + t, decode_reads + chunk_reads(prefix, t)) - decodes_s
        assert 0.95 * decodes_s < extra <= decodes_s
    # reads that only ever grow with the tokens tell nothing apart: tokens alone
    flat = PrefillPacer(share=1.0, floor=16, ceiling=512)
    for t in (8, 16, 32, 8, 16, 32):
        flat.observe(0.010 + 0.001 * t, t, 10 * t)
    cost = flat.fit()
    assert cost is not None and cost.per_read == 0 and abs(cost.per_token - 0.001) < 1e-9
