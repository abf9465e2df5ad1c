"""Tiny language models built offline, for the runtime's tests and the LLM benchmark.

Nothing is downloaded: a byte-level BPE tokenizer is trained with ``tokenizers`` on a small corpus
kept in the repository (``data/llm-corpus.txt``) and wrapped as a ``PreTrainedTokenizerFast`` with a
chat template; the models are ``transformers`` architectures made from their configs with random
weights (``torch.manual_seed(seed)``) and saved with ``save_pretrained``. The same arguments give
the same files.

    from kubemaas_testbed.llm_models import build_llm
    model_dir = build_llm(tmp / "tiny-llama")                 # ~0.8 M parameters, < 1 s
    model_dir = build_llm(tmp / "small", size="small")        # ~190 M parameters (Llama)
    model_dir = build_llm(tmp / "thinking", think_tokens=True)  # <think>, </think> one token each
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

FAMILIES = ("llama", "gpt2", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3",
            "gemma3_text", "olmo2", "granite", "mixtral", "qwen3_moe")
# the sliding window of the tiny windowed families: shorter than the tests' prompts
TINY_WINDOW = 8
SIZES = ("tiny", "small", "1b")
DTYPES = ("float32", "bfloat16", "float16")

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|tool|>")
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK, *ROLE_TOKENS)
VOCAB_SIZE = 1024
THINK_TOKENS = ("<think>", "</think>")  # added as reasoning models have them: not special
# every message: <|role|>\ncontent</s>\n ; the generation prompt opens the assistant's turn
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

# hidden, layers, heads, kv heads, intermediate, max positions
_SHAPES: dict[str, tuple[int, int, int, int, int, int]] = {
    "tiny": (128, 4, 4, 2, 256, 2048),
    "small": (1024, 16, 16, 8, 2816, 4096),
    "1b": (2048, 16, 32, 8, 8192, 4096),  # ~0.98 B: the GPU check (bench/llm/gpu.py)
}


def corpus_text() -> str:
    """The training corpus kept in the repository."""
    return (resources.files("kubemaas_testbed") / "data" / "llm-corpus.txt").read_text("utf-8")


def build_tokenizer(out_dir: Path, vocab_size: int = VOCAB_SIZE, think_tokens: bool = False
                    ) -> None:
    """Train a byte-level BPE on the repository corpus and save it as a fast tokenizer with a chat
    template (bos ``<s>``, eos ``</s>``, pad ``<pad>``) into ``out_dir``; with ``think_tokens``,
    ``<think>`` and ``</think>`` are tokens of their own (kept in decoded text, as Qwen3's and
    DeepSeek-R1's are)."""
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    lines = corpus_text().splitlines()
    tok.train_from_iterator(lines, trainer=trainer)
    if think_tokens:
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS,
                                   pad_token=PAD, unk_token=UNK,
                                   additional_special_tokens=list(ROLE_TOKENS))
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = _SHAPES["small"][5]
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))


def _config(family: str, size: str, vocab: int, ids: dict[str, int], dtype: str) -> Any:
    import transformers

    hidden, layers, heads, kv_heads, inter, max_pos = _SHAPES[size]
    common: dict[str, Any] = {
        "vocab_size": vocab, "bos_token_id": ids["bos"], "eos_token_id": ids["eos"],
        "pad_token_id": ids["pad"], "tie_word_embeddings": False, "dtype": dtype,
        # a wider spread than the default 0.02 makes the random logits peaked enough that
        # greedy decoding has clear winners (batched and unbatched arithmetic agree on them)
        "initializer_range": 0.1,
    }
    if family == "gpt2":
        return transformers.GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads,
                                       n_inner=inter, n_positions=max_pos, **common)
    llama_like = {
        "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "intermediate_size": inter,
        "max_position_embeddings": max_pos, **common,
    }
    if family == "llama":
        return transformers.LlamaConfig(**llama_like)
    if family == "mistral":
        return transformers.MistralConfig(sliding_window=None, **llama_like)
    if family == "qwen2":
        return transformers.Qwen2Config(use_sliding_window=False, **llama_like)
    if family == "qwen3":
        return transformers.Qwen3Config(use_sliding_window=False, head_dim=hidden // heads,
                                        **llama_like)
    return _more_config(family, llama_like, hidden // heads)


def _more_config(family: str, llama_like: dict[str, Any], head_dim: int) -> Any:
    """The families beyond the first five (the windowed ones window every other layer, or
    three of four, with ``TINY_WINDOW``)."""
    import transformers

    layers = int(llama_like["num_hidden_layers"])
    if family == "gemma":
        return transformers.GemmaConfig(head_dim=head_dim, **llama_like)
    if family == "gemma2":
        types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
        return transformers.Gemma2Config(
            head_dim=head_dim, query_pre_attn_scalar=head_dim // 2, sliding_window=TINY_WINDOW,
            layer_types=types, attn_logit_softcapping=5.0, final_logit_softcapping=20.0,
            **llama_like)
    if family == "gemma3_text":
        types = ["full_attention" if i % 4 == 3 else "sliding_attention" for i in range(layers)]
        return transformers.Gemma3TextConfig(
            head_dim=head_dim, query_pre_attn_scalar=head_dim, sliding_window=TINY_WINDOW,
            layer_types=types, **llama_like)
    if family == "phi3":
        return transformers.Phi3Config(**llama_like)
    if family == "olmo2":
        return transformers.Olmo2Config(**llama_like)
    if family == "granite":
        return transformers.GraniteConfig(embedding_multiplier=4.0, logits_scaling=0.5,
                                          residual_multiplier=0.5, attention_multiplier=0.1,
                                          **llama_like)
    moe = {**llama_like, "intermediate_size": llama_like["intermediate_size"] // 2}
    if family == "mixtral":
        return transformers.MixtralConfig(num_local_experts=4, num_experts_per_tok=2, **moe)
    if family == "qwen3_moe":
        return transformers.Qwen3MoeConfig(num_experts=4, num_experts_per_tok=2,
                                           moe_intermediate_size=moe["intermediate_size"],
                                           head_dim=head_dim, norm_topk_prob=True, **moe)
    raise ValueError(f"unknown family {family!r}; one of {', '.join(FAMILIES)}")


def build_llm(out_dir: Path, family: str = "llama", size: str = "tiny", seed: int = 0,
              dtype: str = "float32", think_tokens: bool = False) -> Path:
    """Write a random-weight causal LM of ``family`` and ``size`` with the repository tokenizer into
    ``out_dir`` (config.json, model.safetensors, generation_config.json, tokenizer files) and
    return ``out_dir``. Deterministic for the same arguments."""
    import torch
    import transformers

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; one of {', '.join(FAMILIES)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; one of {', '.join(SIZES)}")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; one of {', '.join(DTYPES)}")
    out_dir = Path(out_dir)
    build_tokenizer(out_dir, think_tokens=think_tokens)
    tok = transformers.AutoTokenizer.from_pretrained(str(out_dir))
    ids = {"bos": tok.bos_token_id, "eos": tok.eos_token_id, "pad": tok.pad_token_id}
    vocab = -(-len(tok) // 64) * 64  # room for every token, rounded up like real checkpoints
    config = _config(family, size, vocab, ids, dtype)
    torch.manual_seed(seed)
    with torch.device("cpu"):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    model.to(getattr(torch, dtype))
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"],
        do_sample=False)
    model.save_pretrained(str(out_dir))
    return out_dir


def num_parameters(model_dir: Path) -> int:
    """Parameters stored in a model directory's safetensors files."""
    from safetensors import safe_open

    total = 0
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                shape = f.get_slice(key).get_shape()
                n = 1
                for d in shape:
                    n *= d
                total += n
    return total
