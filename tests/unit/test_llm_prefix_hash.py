"""The prefix cache's block hashes: a hit is taken on the hash alone, so two different blocks must
never hash alike, and requests with different cache salts must never share blocks."""

from __future__ import annotations

from kubemaas_runtime.llm.kv_cache import UNSALTED, BlockPool, cache_root

# Two 16-token blocks (ids < 1024, as from a small tokenizer) with the same Python tuple hash,
# found by hack/tuple-hash-collision.c (integers hash to themselves, and the tuple hash is a
# public, invertible mix): what a client could do to be served another request's keys and
# values if blocks were keyed by ``hash()``.
TAIL = [5, 6, 7, 8, 9, 10, 11, 12, 13]
COLLIDING_A = [216, 83, 373, 866, 977, 988, 10, *TAIL]
COLLIDING_B = [45, 881, 537, 932, 274, 238, 1, *TAIL]


def registered(pool: BlockPool, tokens: list[int], root: bytes = UNSALTED) -> list[int]:
    blocks = pool.allocate(pool.blocks_for(len(tokens)))
    assert pool.register(blocks, tokens, 0, len(tokens), root) == len(tokens) // pool.block_size
    return blocks


def test_blocks_that_collide_under_pythons_hash_are_not_shared() -> None:
    assert COLLIDING_A != COLLIDING_B
    assert hash((0, tuple(COLLIDING_A))) == hash((0, tuple(COLLIDING_B)))  # the pair is real
    pool = BlockPool(1 + 8, 16, prefix_caching=True)
    registered(pool, [*COLLIDING_A, 1])
    assert pool.lookup([*COLLIDING_A, 2]) != []  # its own prefix is found
    assert pool.lookup([*COLLIDING_B, 2]) == []  # the look-alike is not


def test_cache_salts_keep_prefixes_apart() -> None:
    pool = BlockPool(1 + 16, 4, prefix_caching=True)
    prompt = list(range(1, 11))  # two full blocks and two tokens
    salted = cache_root("tenant-a")
    assert cache_root(None) == UNSALTED and cache_root("tenant-b") not in (salted, UNSALTED)
    registered(pool, prompt, salted)
    assert len(pool.lookup(prompt, salted)) == 2
    assert pool.lookup(prompt, cache_root("tenant-b")) == []
    assert pool.lookup(prompt) == []
    registered(pool, prompt)  # the same tokens without a salt: blocks of their own
    unsalted = pool.lookup(prompt)
    assert len(unsalted) == 2 and set(unsalted).isdisjoint(pool.lookup(prompt, salted))


def test_a_later_block_chains_from_its_own_prefix() -> None:
    """A block's hash covers every token before it: the same block after another prefix is a
    different block."""
    pool = BlockPool(1 + 16, 4, prefix_caching=True)
    registered(pool, [1, 2, 3, 4, 9, 9, 9, 9])
    assert len(pool.lookup([1, 2, 3, 4, 9, 9, 9, 9, 0])) == 2
    assert pool.lookup([5, 6, 7, 8, 9, 9, 9, 9, 0]) == []
    registered(pool, [5, 6, 7, 8])
    assert len(pool.lookup([5, 6, 7, 8, 9, 9, 9, 9, 0])) == 1  # the second block is not its
