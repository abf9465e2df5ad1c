"""Tiny classification models built offline, for the runtime's tests of vLLM's pooling tasks
(``/classify``, ``/score``, ``/rerank``) and of encoder embedding models.

As in llm_models.py nothing is downloaded: the tokenizers are trained with ``tokenizers`` on the
repository corpus and the models are ``transformers`` architectures with random weights
(``torch.manual_seed(seed)``) saved with ``save_pretrained``; the same arguments give the same
files.

    from kubemaas_testbed.llm_classifiers import build_encoder, build_decoder_classifier
    build_encoder(tmp / "ce", "bert")                     # a cross-encoder: one label, pairs
    build_encoder(tmp / "xlmr", "xlm-roberta")            # bge-reranker's architecture
    build_encoder(tmp / "mini", "bert", head=False)       # an encoder embedding model (BertModel)
    build_decoder_classifier(tmp / "cls", labels=("negative", "neutral", "positive"))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .llm_models import build_tokenizer, corpus_text

ENCODERS = ("bert", "xlm-roberta", "modernbert")
_SPECIAL = {"bert": ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
            "xlm-roberta": ("<s>", "<pad>", "</s>", "<unk>", "<mask>")}
_SPECIAL["modernbert"] = _SPECIAL["bert"]  # its pairs are BERT's, without token types
# hidden, layers, heads, intermediate, max positions
_SHAPES = {"tiny": (64, 2, 4, 128, 512),
           "minilm": (384, 6, 12, 1536, 512)}  # ms-marco-MiniLM-L6's shape: ~22 M parameters


def build_encoder_tokenizer(out_dir: Path, family: str, vocab_size: int = 1024) -> None:
    """BERT's WordPiece (``[CLS] a [SEP] b [SEP]``, token types 0 then 1; ModernBERT's pairs
    are the same without token types) or XLM-RoBERTa's layout (``<s> a </s></s> b </s>``, no
    token types), trained on the repository corpus."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    special = _SPECIAL[family]
    lines = corpus_text().splitlines()
    if family in ("bert", "modernbert"):
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        tok.train_from_iterator(lines, trainer=trainers.WordPieceTrainer(
            vocab_size=vocab_size, special_tokens=list(special), show_progress=False))
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
        names = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
                 "sep_token": "[SEP]", "mask_token": "[MASK]"}
        inputs = ["input_ids", "token_type_ids", "attention_mask"] if family == "bert" else \
            ["input_ids", "attention_mask"]
    else:
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        tok.train_from_iterator(lines, trainer=trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=list(special), show_progress=False))
        eos, bos = tok.token_to_id("</s>"), tok.token_to_id("<s>")
        assert eos is not None and bos is not None
        tok.post_processor = processors.RobertaProcessing(("</s>", eos), ("<s>", bos))
        names = {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>",
                 "unk_token": "<unk>", "cls_token": "<s>", "sep_token": "</s>",
                 "mask_token": "<mask>"}
        inputs = ["input_ids", "attention_mask"]
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_input_names=inputs, **names)
    fast.model_max_length = _SHAPES["tiny"][4]
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))


def _encoder_config(family: str, size: str, tok: Any, extra: dict[str, Any]) -> Any:
    import transformers

    hidden, layers, heads, inter, max_pos = _SHAPES[size]
    shape = {"vocab_size": -(-len(tok) // 64) * 64, "hidden_size": hidden,
             "num_hidden_layers": layers, "num_attention_heads": heads,
             "intermediate_size": inter, "pad_token_id": tok.pad_token_id, "num_labels": 1,
             "initializer_range": 0.1, **extra}
    if family == "bert":
        return transformers.BertConfig(max_position_embeddings=max_pos, **shape)
    if family == "modernbert":  # its config names its own special tokens
        return transformers.ModernBertConfig(
            max_position_embeddings=max_pos, bos_token_id=tok.cls_token_id,
            cls_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
            sep_token_id=tok.sep_token_id, **shape)
    # RoBERTa's positions start after the padding index
    return transformers.XLMRobertaConfig(
        max_position_embeddings=max_pos + tok.pad_token_id + 1, **shape)


def build_encoder(out_dir: Path, family: str = "bert", head: bool = True, seed: int = 0,
                  extra_config: dict[str, Any] | None = None, size: str = "tiny") -> Path:
    """A random-weight encoder with its tokenizer in ``out_dir``: with ``head``, a
    ``*ForSequenceClassification`` cross-encoder of one label (a reranker); without, the base
    model (``BertModel``: an embedding model). ``extra_config`` joins config.json (for
    example sentence-transformers' ``{"sentence_transformers": {"activation_fn": ...}}``);
    ``size`` tiny (~0.2 M parameters) or minilm (~22 M, the benchmark's)."""
    import torch
    import transformers

    if family not in ENCODERS:
        raise ValueError(f"unknown encoder {family!r}; one of {', '.join(ENCODERS)}")
    out_dir = Path(out_dir)
    build_encoder_tokenizer(out_dir, family)
    tok = transformers.AutoTokenizer.from_pretrained(str(out_dir))
    if size not in _SHAPES:
        raise ValueError(f"unknown size {size!r}; one of {', '.join(_SHAPES)}")
    config = _encoder_config(family, size, tok, extra_config or {})
    torch.manual_seed(seed)
    auto = transformers.AutoModelForSequenceClassification if head else transformers.AutoModel
    model = auto.from_config(config).eval()
    model.save_pretrained(str(out_dir))
    return out_dir


def build_decoder_classifier(out_dir: Path, family: str = "llama",
                             labels: tuple[str, ...] = ("negative", "neutral", "positive"),
                             seed: int = 0, problem_type: str | None = None) -> Path:
    """A random-weight decoder classifier (``LlamaForSequenceClassification``, ...: the last
    token's hidden state through a linear ``score`` head) with the repository's BPE
    tokenizer; ``labels`` become its ``id2label``."""
    import torch
    import transformers

    from .llm_models import _config

    out_dir = Path(out_dir)
    build_tokenizer(out_dir)
    tok = transformers.AutoTokenizer.from_pretrained(str(out_dir))
    ids = {"bos": tok.bos_token_id, "eos": tok.eos_token_id, "pad": tok.pad_token_id}
    config = _config(family, "tiny", -(-len(tok) // 64) * 64, ids, "float32")
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {name: i for i, name in enumerate(labels)}
    if problem_type is not None:
        config.problem_type = problem_type
    torch.manual_seed(seed)
    model = transformers.AutoModelForSequenceClassification.from_config(config).eval()
    model.save_pretrained(str(out_dir))
    return out_dir


def build_token_classifier(out_dir: Path, family: str = "bert",
                           labels: tuple[str, ...] = ("O", "B-PER", "I-PER", "B-LOC"),
                           seed: int = 0, problem_type: str | None = None) -> Path:
    """A random-weight ``*ForTokenClassification`` model (NER's shape: a linear head over
    each token's hidden state) of ``labels`` (its ``id2label``): an encoder (``ENCODERS``,
    with its tokenizer above) or a decoder (llama, qwen2, ...: the repository's BPE
    tokenizer)."""
    import torch
    import transformers

    from .llm_models import _config

    out_dir = Path(out_dir)
    names = {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
             "label2id": {name: i for i, name in enumerate(labels)}}
    if problem_type is not None:
        names["problem_type"] = problem_type
    if family in ENCODERS:
        build_encoder_tokenizer(out_dir, family)
        tok = transformers.AutoTokenizer.from_pretrained(str(out_dir))
        config = _encoder_config(family, "tiny", tok, names)
    else:
        build_tokenizer(out_dir)
        tok = transformers.AutoTokenizer.from_pretrained(str(out_dir))
        ids = {"bos": tok.bos_token_id, "eos": tok.eos_token_id, "pad": tok.pad_token_id}
        config = _config(family, "tiny", -(-len(tok) // 64) * 64, ids, "float32")
        for key, value in names.items():
            setattr(config, key, value)
    torch.manual_seed(seed)
    model = transformers.AutoModelForTokenClassification.from_config(config).eval()
    model.save_pretrained(str(out_dir))
    return out_dir
