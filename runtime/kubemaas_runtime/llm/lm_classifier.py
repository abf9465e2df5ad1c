"""A causal language model served as a classifier from its own output head, as vLLM converts
one when ``--hf-overrides`` asks (Qwen3-Reranker, mxbai-rerank-v2, bge-reranker-v2-gemma):

    --hf-overrides '{"architectures": ["Qwen3ForSequenceClassification"],
                     "classifier_from_token": ["no", "yes"], "is_original_qwen3_reranker": true}'

``method`` ``from_2_way_softmax`` (what ``is_original_qwen3_reranker`` means): one label whose
logit is the output head's "yes" row minus its "no" row, so its sigmoid is the softmax of the
two tokens' logits, P(yes), which these rerankers are trained to answer. ``no_post_processing``:
one label per token, each its row of the output head. The head is built once at load; the
model's full output head is dropped. Such a model joins a pair by concatenating the two texts
(vLLM's ``use_pad_token`` false: the query and document carry the model's prompt template
themselves), where a cross-encoder uses its tokenizer's pair.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import StartupError

METHODS = ("from_2_way_softmax", "no_post_processing")


def lm_head_method(config: dict[str, Any]) -> str | None:
    """The conversion config.json (with --hf-overrides) asks for, or None; vLLM's reading of
    ``is_original_qwen3_reranker`` fills in its method and tokens."""
    if config.get("is_original_qwen3_reranker"):
        config.setdefault("method", "from_2_way_softmax")
        config.setdefault("classifier_from_token", ["no", "yes"])
    method = config.get("method")
    if method is None:
        return None
    if method not in METHODS:
        raise StartupError(f"method {method!r} is not served; one of {', '.join(METHODS)}")
    tokens = config.get("classifier_from_token")
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise StartupError("classifier_from_token must list the tokens whose logits classify")
    if method == "from_2_way_softmax" and len(tokens) != 2:
        raise StartupError("from_2_way_softmax takes two tokens: the false one, then the true")
    config["num_labels"] = 1 if method == "from_2_way_softmax" else len(tokens)
    if method == "no_post_processing":
        config.setdefault("id2label", {str(i): t for i, t in enumerate(tokens)})
    config.setdefault("use_pad_token", False)  # vLLM's default for an LLM as a reranker
    return str(method)


class HeadClassifier(torch.nn.Module):
    """A causal LM's base model and a ``score`` head made of rows of its output head: what
    classify.classifier_rows runs as a decoder classifier."""

    def __init__(self, base: torch.nn.Module, score: torch.nn.Linear) -> None:
        super().__init__()
        self.base_model = base
        self.score = score
        self.config = base.config


def from_lm_head(causal_lm: Any, tokenizer: Any, config: dict[str, Any], method: str
                 ) -> HeadClassifier:
    tokens = list(config["classifier_from_token"])
    ids = [tokenizer.convert_tokens_to_ids(t) for t in tokens]
    unknown = [t for t, i in zip(tokens, ids, strict=True)
               if i is None or i == tokenizer.unk_token_id]
    if unknown:
        raise StartupError(f"classifier_from_token {unknown} are not tokens of the tokenizer")
    rows = causal_lm.get_output_embeddings().weight.detach().float()
    weight = rows[[ids[1]]] - rows[[ids[0]]] if method == "from_2_way_softmax" else rows[ids]
    # float32, as vLLM keeps a pooling model's head: the difference of two bf16 rows is small
    head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device)
    with torch.no_grad():
        head.weight.copy_(weight)
    return HeadClassifier(causal_lm.base_model, head).eval()
