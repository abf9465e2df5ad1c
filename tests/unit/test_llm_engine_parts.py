"""The LLM engine's pure parts: block pool, scheduler (admission, chunked prefill, preemption),
the packed step (positions, slots, the decode mask), sampling, incremental detokenization with
stop strings, and the OpenAI request validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kubemaas_runtime.llm.detok import Detokenizer, decoder, encoder
from kubemaas_runtime.llm.kv_cache import BlockPool, KVStore, OutOfBlocks
from kubemaas_runtime.llm.pacing import chunk_reads
from kubemaas_runtime.llm.packing import pack
from kubemaas_runtime.llm.sampling import SampleState, SamplingParams, penalize, sample
from kubemaas_runtime.llm.scheduler import Scheduler, Sequence, Step
from kubemaas_runtime.settings import parse_bytes


def seq(rid: int, prompt_len: int, max_tokens: int = 8) -> Sequence:
    return Sequence(rid, list(range(1, prompt_len + 1)), SamplingParams(max_tokens=max_tokens),
                    sink=lambda _: None, detok=Detokenizer(None))


def test_block_pool_lends_and_takes_back() -> None:
    pool = BlockPool(5, 16)  # block 0 is the scratch block
    assert (pool.usable, pool.free, pool.blocks_for(17)) == (4, 4, 2)
    got = pool.allocate(3)
    assert 0 not in got and pool.usage() == 0.75
    with pytest.raises(OutOfBlocks):
        pool.allocate(2)
    pool.release(got)
    assert got == [] and pool.free == 4


def test_admission_waits_for_blocks_and_seats() -> None:
    pool = BlockPool(1 + 6, 4)
    sched = Scheduler(pool, max_num_seqs=2, max_num_batched_tokens=64)
    a, b, c = seq(1, 10), seq(2, 3), seq(3, 2)
    for s in (a, b, c):
        sched.add(s)
    step = sched.schedule()
    # a takes 3 blocks (10 tokens + 1); b needs 1 + a watermark of 1 per running sequence
    assert sched.running == [a, b] and list(sched.waiting) == [c]  # max_num_seqs = 2
    assert [(s.rid, n) for s, n in step.prefill] == [(1, 10), (2, 3)] and step.decode == []
    sched.remove(a)
    assert pool.free == 5


def test_chunked_prefill_shares_the_step_with_decodes() -> None:
    pool = BlockPool(1 + 64, 16)
    sched = Scheduler(pool, max_num_seqs=8, max_num_batched_tokens=16)
    short, long = seq(1, 4), seq(2, 40)
    sched.add(short)
    sched.add(long)
    step = sched.schedule()
    assert [(s.rid, n) for s, n in step.prefill] == [(1, 4), (2, 12)]
    short.computed, long.computed = 4, 12
    short.ids.append(99)  # short sampled its first token: now it decodes
    step = sched.schedule()
    assert step.decode == [short] and [(s.rid, n) for s, n in step.prefill] == [(2, 15)]


def test_prefill_cap_applies_only_beside_decodes() -> None:
    pool = BlockPool(1 + 64, 16)
    sched = Scheduler(pool, max_num_seqs=8, max_num_batched_tokens=256)
    asked: list[tuple[int, int, int, int]] = []

    def cap(decode_rows: int, prompts: int, decode_reads: int, prefix: int) -> int:
        asked.append((decode_rows, prompts, decode_reads, prefix))
        return 16
    sched.prefill_cap = cap
    first = seq(1, 100)
    sched.add(first)
    step = sched.schedule()
    assert [(s.rid, n) for s, n in step.prefill] == [(1, 100)]  # nobody decodes: no cap
    first.computed = 100
    first.ids.append(7)
    second = seq(2, 100)
    sched.add(second)
    step = sched.schedule()
    assert step.decode == [first] and [(s.rid, n) for s, n in step.prefill] == [(2, 16)]
    # one decode row (attending over its 100 prompt tokens and itself) beside one prompt
    assert asked == [(1, 1, 101, 0)]
    second.computed = 16
    sched.schedule()
    assert asked[-1] == (1, 1, 101, 16)  # the prompt's next chunk starts 16 tokens in


def _paced_500_tokens_in(sched: Scheduler, first_len: int, slide: bool = False
                         ) -> tuple[list[tuple[int, int]], Sequence, Step]:
    """A decoding sequence of ``first_len`` tokens beside a 1000-token prompt read in chunks
    (the pacer caps each at 100) until 500 tokens in: the (decode reads, prefix) the pacer was
    told at each step, the prompt's sequence, and the next step."""
    asked: list[tuple[int, int]] = []

    def cap(decode_rows: int, prompts: int, decode_reads: int, prefix: int) -> int:
        asked.append((decode_reads, prefix))
        return 100
    sched.prefill_cap = cap
    first, second = seq(1, first_len), seq(2, 1000)
    sched.add(first)
    sched.schedule()
    first.computed = first_len
    first.ids.append(7)
    sched.add(second)
    while second.computed < 500:
        for s, n in sched.schedule().prefill:
            s.computed += n
            if slide:
                sched.slide(s)
    return asked, second, sched.schedule()


def test_a_windowed_prompt_is_paced_by_the_keys_its_chunks_read() -> None:
    """Window 64, blocks of 16: a chunk 500 tokens into a prompt reads the keys from its
    window's first block (position 432: packing's Chunk.first), so the pacer is told a prefix
    of 68 and the step's reads count those (it was told 500: caps that shrank down the prompt
    while its chunks' cost no longer grows)."""
    sched = Scheduler(BlockPool(1 + 200, 16), max_num_seqs=8, max_num_batched_tokens=256,
                      window=64)
    asked, second, step = _paced_500_tokens_in(sched, first_len=10, slide=True)
    assert second.computed == 500 and step.prefill == [(second, 100)]
    assert asked[-1][1] == 500 - 432
    assert step.reads() == 11 + chunk_reads(68, 100)


def test_preemption_frees_the_newest_sequence() -> None:
    pool = BlockPool(1 + 2, 4)
    sched = Scheduler(pool, max_num_seqs=4, max_num_batched_tokens=64)
    a, b = seq(1, 3), seq(2, 3)
    sched.add(a)
    sched.add(b)
    sched.schedule()
    assert sched.running == [a]  # b waits: no block beyond the watermark
    a.computed = 3
    a.ids.append(5)
    a.computed = 4
    a.ids.append(6)  # a now needs a second block: the free one
    step = sched.schedule()
    assert step.decode == [a] and len(a.blocks) == 2 and pool.free == 0


def test_priority_orders_the_queue_and_chooses_whom_to_preempt() -> None:
    pool = BlockPool(1 + 3, 4)
    sched = Scheduler(pool, max_num_seqs=1, max_num_batched_tokens=64, priority=True)
    first, low, high, high_later = seq(1, 3), seq(2, 3), seq(3, 3), seq(4, 3)
    low.priority, high.priority, high_later.priority = 5, -1, -1
    for s in (first, low, high, high_later):
        sched.add(s)
    assert list(sched.waiting) == [high, high_later, first, low]  # priority, then arrival
    sched.schedule()
    assert sched.running == [high]
    # the cache full: the running sequence that comes last in the order gives way
    sched.max_num_seqs = 2
    sched.remove(high)
    sched.schedule()
    assert sched.running == [high_later, first]
    victim_first = Scheduler(pool, max_num_seqs=4, max_num_batched_tokens=64, priority=True)
    a, b = seq(5, 3), seq(6, 3)
    a.priority, b.priority = 9, 0  # a is admitted first but ranks last
    victim_first.running = [a, b]
    assert victim_first._preempt(keep=b) and victim_first.running == [b]
    assert list(victim_first.waiting) == [a]
    fcfs = Scheduler(pool, max_num_seqs=4, max_num_batched_tokens=64)
    fcfs.running = [a, b]
    assert fcfs._preempt(keep=a) and fcfs.running == [a]  # the newest, whatever its priority


def test_a_batch_holds_at_most_max_loras_adapters() -> None:
    pool = BlockPool(1 + 32, 4)
    sched = Scheduler(pool, max_num_seqs=8, max_num_batched_tokens=64, max_loras=2)
    base, a1, b1, c1, a2, base2 = (seq(i, 3) for i in range(1, 7))
    a1.lora, b1.lora, c1.lora, a2.lora = 1, 2, 3, 1
    for s in (base, a1, b1, c1, a2, base2):
        sched.add(s)
    sched.schedule()
    # c1's adapter would be a third: it waits, and those behind it are admitted
    assert sched.running == [base, a1, b1, a2, base2] and list(sched.waiting) == [c1]
    sched.remove(b1)
    sched.schedule()
    assert c1 in sched.running and not sched.waiting


def test_packed_step_addresses_each_rows_own_slots() -> None:
    a, b, c = seq(1, 3), seq(2, 5), seq(3, 6)
    a.blocks, b.blocks, c.blocks = [2], [3, 4], [5, 6]
    a.computed = 2  # a feeds its last prompt token (a decode row); b its whole prompt;
    c.computed = 4  # c the rest of its prompt after 4 cached tokens
    store = KVStore(1, 7, 4, 1, 2, torch.float32, torch.device("cpu"))
    step = pack([a], [(b, 5), (c, 2)], store, block_size=4)
    assert step.input_ids.tolist() == [[3, 1, 2, 3, 4, 5, 5, 6]]  # no padding
    assert step.position_ids.tolist() == [[2, 0, 1, 2, 3, 4, 4, 5]]
    assert step.paged.write_slots.tolist() == [10, 12, 13, 14, 15, 16, 24, 25]
    assert step.keep.tolist() == [0, 5, 7] and step.sampled == [a, b, c]  # every row ends
    assert step.paged.decode_rows == 1
    assert step.paged.decode_blocks is not None and step.paged.decode_mask is not None
    assert step.paged.decode_blocks.tolist() == [[2]]  # slots 8..11, the last one masked
    assert step.paged.decode_mask.flatten().tolist() == [True, True, True, False]
    first, rest = step.paged.chunks
    assert (first.start, first.length, first.offset, first.mask) == (1, 5, 0, None)  # causal
    assert first.blocks.tolist() == [3, 4]  # slots 12..19, the first 5 attended
    assert (rest.start, rest.length, rest.offset) == (6, 2, 4)
    assert rest.blocks.tolist() == [5, 6]
    assert rest.mask is not None and rest.mask.int().tolist() == [[1, 1, 1, 1, 1, 0],
                                                                  [1, 1, 1, 1, 1, 1]]


def test_a_chunk_that_does_not_end_its_prompt_is_not_sampled() -> None:
    a = seq(1, 10)
    a.blocks = [1, 2, 3]
    store = KVStore(1, 4, 4, 1, 2, torch.float32, torch.device("cpu"))
    step = pack([], [(a, 4)], store, block_size=4)
    assert step.sampled == [] and step.keep.tolist() == [3]  # a forward needs one logit row


def test_sampling_greedy_seeded_and_filtered() -> None:
    logits = torch.tensor([[0.0, 5.0, 1.0, 0.5], [3.0, 0.0, 0.0, 2.9]])
    greedy = SamplingParams(temperature=0.0, logprobs=2)
    tokens, infos, failed = sample(logits, [SampleState(greedy), SampleState(greedy)])
    assert not failed
    assert tokens == [1, 0]
    assert infos[0] is not None and infos[0].top[0][0] == 1 and len(infos[0].top) == 2
    seeded = SamplingParams(temperature=1.0, seed=3)
    runs = [sample(logits, [SampleState(seeded), SampleState(seeded)])[0] for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]
    top1 = SamplingParams(temperature=1.0, top_k=1)
    assert sample(logits, [SampleState(top1)] * 2)[0] == [1, 0]
    nucleus = SamplingParams(temperature=1.0, top_p=0.01)
    assert sample(logits, [SampleState(nucleus)] * 2)[0] == [1, 0]
    biased = SamplingParams(temperature=0.0, logprobs=0, logit_bias=((3, 100.0), (1, -100.0)))
    tokens, infos, _ = sample(logits, [SampleState(biased), SampleState(greedy)])
    assert tokens == [3, 0]  # the bias moves greedy choices, in its own row only
    assert infos[0] is not None and infos[0].logprob > -0.01


def test_a_vanishing_temperature_is_greedy() -> None:
    """Logits divided by 1e-40 overflow to infinity and the softmax to NaN; such a row must not
    raise (a sampling error fails every request in the step): it is greedy, as in vLLM."""
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, 0.0, 3.0]])
    tiny = [SampleState(SamplingParams(temperature=t, seed=1)) for t in (1e-40, 1e-300)]
    assert sample(logits, tiny)[0] == [1, 2]


def test_a_row_whose_sampling_fails_fails_alone() -> None:
    """A request's state that makes the sampler raise (here a bias for a token the vocabulary
    lacks, which validation refuses before it gets this far) fails that row only."""
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, 0.0, 3.0], [3.0, 0.0, 0.0]])
    broken = SampleState(SamplingParams(temperature=0.0, logit_bias=((99, 1.0),)))
    fine = SampleState(SamplingParams(temperature=1.0, seed=5, logprobs=1))
    tokens, infos, failed = sample(logits, [SampleState(SamplingParams(temperature=0.0)),
                                            broken, fine])
    assert list(failed) == [1] and isinstance(failed[1], IndexError)
    assert tokens[0] == 1 and infos[2] is not None and infos[2].token == tokens[2]
    alone = sample(logits[2:].clone(), [SampleState(SamplingParams(temperature=1.0, seed=5,
                                                                   logprobs=1))])
    assert alone.tokens == [tokens[2]]  # the failure drew nothing from the others' generators


def test_min_p_and_min_tokens() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0]])  # probabilities 0.67, 0.24, 0.09
    only_top = SamplingParams(temperature=1.0, min_p=0.5)
    assert {sample(logits, [SampleState(only_top)])[0][0] for _ in range(30)} == {0}
    held = SampleState(SamplingParams(temperature=0.0, min_tokens=2), held_back=frozenset({0}))
    picks = [sample(logits.clone(), [held])[0][0] for _ in range(3)]
    assert picks == [1, 1, 0] and held.emitted == 3  # token 0 (EOS here) from the third on
    everything = SampleState(SamplingParams(temperature=1.0, min_tokens=5),
                             held_back=frozenset({0, 1, 2}))
    assert sample(logits.clone(), [everything])[0][0] in (0, 1, 2)  # nothing left to hold


def test_penalties_follow_vllms_definitions() -> None:
    row = torch.tensor([2.0, -2.0, 1.0, 0.5, 3.0])
    rep = SampleState(SamplingParams(repetition_penalty=2.0), prompt=frozenset({0, 1}))
    rep.generated[4] += 1
    got = row.clone()
    penalize(got, rep)  # prompt and output tokens: positive logits halved, negative doubled
    assert got.tolist() == [1.0, -4.0, 1.0, 0.5, 1.5]
    freq = SampleState(SamplingParams(frequency_penalty=0.5, presence_penalty=0.25))
    freq.generated.update([2, 2, 3])
    got = row.clone()
    penalize(got, freq)  # only generated tokens: 0.5 x count + 0.25
    assert got.tolist() == [2.0, -2.0, -0.25, -0.25, 3.0]


def test_penalties_steer_sampling_and_count_what_was_sampled() -> None:
    logits = torch.tensor([[1.0, 0.9, 0.0], [1.0, 0.9, 0.0]])
    params = SamplingParams(temperature=0.0, presence_penalty=0.5)
    penalized, plain = SampleState(params), SampleState(SamplingParams(temperature=0.0))
    picks = [sample(logits.clone(), [penalized, plain])[0] for _ in range(3)]
    # the penalized row leaves token 0 once it has it, then 1; the plain row stays on 0
    assert picks == [[0, 0], [1, 0], [0, 0]] and penalized.generated == {0: 2, 1: 1}
    assert not plain.generated  # no counting without penalties


class CharTokenizer:
    """One character per token id (ord); enough to drive the detokenizer."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i) for i in ids)


def feed(det: Detokenizer, text: str) -> tuple[str, bool]:
    out = ""
    for ch in text:
        piece, stopped = det.add(ord(ch))
        out += piece
        if stopped:
            return out, True
    return out + det.flush(), False


def test_detokenizer_stop_strings_are_never_half_sent() -> None:
    det = Detokenizer(CharTokenizer(), stop=("STOP", "\n\n"))
    sent = []
    for ch in "hello STOP world":
        piece, stopped = det.add(ord(ch))
        sent.append(piece)
        if stopped:
            break
    assert "".join(sent) == "hello " and stopped
    assert all("S" not in p for p in sent)
    assert feed(Detokenizer(CharTokenizer(), ("\n\n",)), "a\nb\n\nc") == ("a\nb", True)
    assert feed(Detokenizer(CharTokenizer()), "plain text") == ("plain text", False)


def test_detokenizer_waits_for_whole_utf8_characters(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from kubemaas_testbed.llm_models import build_tokenizer

    build_tokenizer(tmp_path)
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    text = "Émilie a mangé 猫 🙂 ok"
    ids = tok(text)["input_ids"]
    det = Detokenizer(tok)
    pieces = [det.add(i)[0] for i in ids]
    assert "".join(pieces) + det.flush() == text
    assert not any("\ufffd" in p for p in pieces)


def test_backend_decoder_gives_the_tokenizers_text(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from kubemaas_testbed.llm_models import build_tokenizer

    build_tokenizer(tmp_path)
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    fast = decoder(tok)
    assert fast.__code__ is not decoder(None).__code__  # the backend path was taken
    ids = tok("Émilie a mangé 猫 🙂 ok, ne ? <|im_end|>")["input_ids"] + [tok.eos_token_id]
    for i in range(len(ids)):
        for j in range(i, len(ids) + 1):
            assert fast(ids[i:j]) == tok.decode(ids[i:j], skip_special_tokens=True)


def test_backend_encoder_gives_the_tokenizers_ids(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from kubemaas_testbed.llm_models import build_tokenizer

    build_tokenizer(tmp_path)
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    fast = encoder(tok)
    assert fast.__code__ is not encoder(object()).__code__  # the backend path was taken
    chat = tok.apply_chat_template([{"role": "user", "content": "Émilie a mangé 猫 🙂"}],
                                   add_generation_prompt=True, tokenize=False)
    off_loop = encoder(tok, keep_gil=False)  # the tokenizer's own call (it lets the GIL go)
    assert off_loop.__code__ is encoder(object()).__code__
    for text in (chat, "plain text, ne ? <|im_end|>", "", " leading space"):
        for special in (True, False):
            want = tok(text, add_special_tokens=special)["input_ids"]
            assert fast(text, special) == want and off_loop(text, special) == want


def test_parse_bytes() -> None:
    assert parse_bytes("1024") == 1024
    assert parse_bytes("512Mi") == 512 << 20
    assert parse_bytes("2G") == 2 * 10**9
    assert parse_bytes("1.5Gi") == 3 << 29
    with pytest.raises(ValueError):
        parse_bytes("lots")


def test_prefix_cache_shares_full_blocks_and_evicts_the_oldest() -> None:
    pool = BlockPool(1 + 4, 4, prefix_caching=True)
    prompt = list(range(1, 11))  # 10 tokens: two full blocks and two tokens
    blocks = pool.allocate(3)
    assert pool.register(blocks, prompt, 0, 10) == 2  # the two full blocks
    assert pool.lookup(prompt) == blocks[:2]           # shared while the first still holds them
    assert pool.lookup(prompt[:8]) == blocks[:1]       # the last token is never covered
    assert pool.lookup([99, *prompt[1:]]) == []        # a different first token: nothing
    pool.release(list(blocks[:2]))
    pool.release(list(blocks[:1]))
    pool.release(blocks)
    assert pool.used == 0 and pool.free == 4           # cached blocks count as free...
    again = pool.lookup(prompt)
    assert len(again) == 2 and pool.used == 2          # ...and are found again
    pool.release(again)
    taken = pool.allocate(4)                           # ...until their ids are needed
    assert len(taken) == 4 and pool.lookup(prompt) == []


def test_the_stats_record_of_an_interval() -> None:
    from kubemaas_runtime.llm.stats_log import Totals, stats_fields

    before = Totals(at=10.0, prefill=100, sampled=50, queried=64, hits=0, preemptions=1)
    now = Totals(at=12.0, prefill=300, sampled=250, queried=128, hits=32, preemptions=2)
    assert stats_fields(before, now, running=3, waiting=1, kv_usage=0.1234) == {
        "seconds": 2.0, "prompt_tokens_per_s": 100.0, "generation_tokens_per_s": 100.0,
        "running": 3, "waiting": 1, "kv_cache_usage_perc": 12.3,
        "prefix_cache_hit_rate_perc": 50.0, "preemptions": 1}
    # idle: no record; counts that went back (the metrics were reset) count as none
    assert stats_fields(now, Totals(14.0, 300, 250, 128, 32, 2), 0, 0, 0.0) is None
    assert stats_fields(now, Totals(14.0, 0, 0, 0, 0, 0), 0, 0, 0.0) is None
    waiting_only = stats_fields(now, Totals(14.0, 300, 250, 128, 32, 2), 0, 2, 0.0)
    assert waiting_only is not None and waiting_only["prefix_cache_hit_rate_perc"] is None


def test_a_mixed_window_prompt_is_paced_by_the_layers_average_reads() -> None:
    """Three of four layers windowed (window 64, blocks of 16): those read a chunk's keys from
    its window's first block and a decode row's last 64 (packing.py), the full layer all of
    them, so the pacer is told the layers' average (it was told every key: 500 and 201) and
    the step's reads count that; the sequence keeps every block."""
    sched = Scheduler(BlockPool(1 + 100, 16), max_num_seqs=8, max_num_batched_tokens=256,
                      mixed=(64, 0.75))
    asked, second, step = _paced_500_tokens_in(sched, first_len=200)
    assert second.computed == 500 and step.prefill == [(second, 100)]
    # decode: 201 keys in one layer, 64 in three; the chunk: 500 and 500 - 432
    assert asked[-1] == (round(0.25 * 201 + 0.75 * 64), round(0.25 * 500 + 0.75 * 68))
    assert step.reads() == 98 + chunk_reads(176, 100)
    assert second.blocks.count(0) == 0
