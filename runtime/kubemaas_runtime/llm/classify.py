"""Classifiers and cross-encoders (vLLM's classify and score tasks): a transformers
``*ForSequenceClassification`` model, one row of logits per input.

A decoder classifier (Llama, Qwen, Mistral, GPT-2: a linear ``score`` head) is run as vLLM runs
it: the base model's hidden state at each input's own last token, through the head, so an
answer never depends on the padding of the batch it ran in (transformers' own forward finds the
last token by looking for the pad id, which a prompt may hold). An encoder (BERT, RoBERTa,
XLM-RoBERTa, ModernBERT) runs its own forward with the attention mask and, when its tokenizer
makes them and the model reads them, the token types of a pair.

The activation follows vLLM's rules: ``/classify`` by ``problem_type`` (regression: none,
multi-label: sigmoid, otherwise softmax, or sigmoid for a single label); ``/score`` and
``/rerank`` by the sentence-transformers ``activation_fn`` in config.json (or the older
``sbert_ce_default_activation_function``), otherwise sigmoid. A request's ``use_activation``
false answers the raw logits.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import StartupError

ACTIVATIONS = ("sigmoid", "softmax", "identity", "tanh")
# sentence-transformers' activation classes (only torch.nn's, as vLLM allows) -> ours
_ST_ACTIVATIONS = {"Sigmoid": "sigmoid", "Identity": "identity", "Tanh": "tanh",
                   "Softmax": "softmax"}

# (ids [B, T], attention mask [B, T], token types [B, T] or None, lengths) -> [B, X] float32
RowFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None", list[int]], torch.Tensor]


@dataclass(frozen=True)
class Classifier:
    labels: tuple[str, ...]       # id2label, in label order
    classify_activation: str
    score_activation: str
    score_activation_from: str    # config.json's key, or "default"
    tokenizer_pairs: bool = True  # a pair as the tokenizer joins two texts; else concatenated
    per_token: bool = False       # a token classifier (token_classify.py): a row per token

    @property
    def task(self) -> str:
        """vLLM's name of what it is served for."""
        return "token_classify" if self.per_token else "classify"

    @property
    def num_labels(self) -> int:
        return len(self.labels)


def _st_activation(name: str, key: str) -> str:
    short = name.rsplit(".", 1)[-1]
    if not name.startswith("torch.nn.modules.") or short not in _ST_ACTIVATIONS:
        raise StartupError(f"config.json {key} {name!r} is not served; one of torch.nn's "
                           f"{', '.join(sorted(_ST_ACTIVATIONS))}")
    return _ST_ACTIVATIONS[short]


def classifier_of(config: dict[str, Any], per_token: bool = False) -> Classifier:
    """The labels and activations a classifier's config.json gives (``per_token``: a token
    classifier's, whose activation is the same as vLLM's)."""
    id2label = config.get("id2label") or {}
    num = int(config.get("num_labels") or len(id2label) or 2)
    labels = tuple(str(id2label.get(str(i), f"LABEL_{i}")) for i in range(num))
    problem = config.get("problem_type")
    classify = "identity" if problem == "regression" else "sigmoid" if (
        problem == "multi_label_classification" or num == 1) else "softmax"
    score, source = "sigmoid" if num == 1 else "softmax", "default"
    st = config.get("sentence_transformers")
    if isinstance(st, dict) and st.get("activation_fn"):
        score, source = _st_activation(str(st["activation_fn"]),
                                       "sentence_transformers.activation_fn"), \
            "sentence_transformers.activation_fn"
    elif config.get("sbert_ce_default_activation_function"):
        key = "sbert_ce_default_activation_function"
        score, source = _st_activation(str(config[key]), key), key
    return Classifier(labels, classify, score, source, bool(config.get("use_pad_token", True)),
                      per_token)


def activate(logits: torch.Tensor, kind: str) -> torch.Tensor:
    """[B, L] logits -> [B, L] under the activation."""
    if kind == "sigmoid":
        return torch.sigmoid(logits)
    if kind == "softmax":
        return torch.softmax(logits, dim=-1)
    if kind == "tanh":
        return torch.tanh(logits)
    return logits


def classifier_rows(model: Any) -> RowFn:
    """How a loaded ``*ForSequenceClassification`` model turns a padded batch into logits."""
    head = getattr(model, "score", None)
    if isinstance(head, torch.nn.Module):  # a decoder: the last token through the head
        base = model.base_model
        # the head's own dtype (a head repacked for oneDNN keeps it as weight_dtype)
        head_dtype = getattr(head, "weight_dtype", None) or head.weight.dtype

        def decoder(ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor | None,
                    lengths: list[int]) -> torch.Tensor:
            hidden = base(input_ids=ids, attention_mask=mask).last_hidden_state
            last = torch.tensor([n - 1 for n in lengths], device=hidden.device)
            rows = hidden[torch.arange(len(lengths), device=hidden.device), last]
            logits: torch.Tensor = head(rows.to(head_dtype))
            return logits.float()

        return decoder

    reads_types = "token_type_ids" in inspect.signature(model.forward).parameters

    def encoder(ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor | None,
                lengths: list[int]) -> torch.Tensor:
        extra = {"token_type_ids": types} if types is not None and reads_types else {}
        logits: torch.Tensor = model(input_ids=ids, attention_mask=mask, **extra).logits
        return logits.float()

    return encoder
