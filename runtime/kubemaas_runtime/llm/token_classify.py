"""Token classifiers (vLLM's ``token_classify`` task): a transformers
``*ForTokenClassification`` model (BERT, RoBERTa, XLM-RoBERTa, ModernBERT; Llama, Mistral,
Qwen2, Qwen3, GPT-2), one row of logits per token the model read.

The model runs its own forward over the padded batch with its attention mask: an encoder's
padding is masked out, a decoder's is right of every real token (its causal attention never
reads it), so a token's row never depends on the batch it ran in. Each input's rows are its
own tokens' (special tokens included), in order, as vLLM's ``TokenClassifierPoolerHead``
answers them; the activation is the classifier's (classify.py: by ``problem_type``, softmax
over the labels by default), applied by the endpoint.
"""

from __future__ import annotations

from typing import Any

import torch

TOKEN_CLASSIFIER_SUFFIX = "ForTokenClassification"


class TokenRows:
    """A loaded ``*ForTokenClassification`` model over a padded batch: ``tokens`` each
    input's [tokens, labels] logits (float32); called as a RowFn (the warm-up), the padded
    [B, T, labels] logits."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def _logits(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.model(input_ids=ids, attention_mask=mask).logits
        return logits.float()

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor | None,
                 lengths: list[int]) -> torch.Tensor:
        return self._logits(ids, mask)

    def tokens(self, ids: torch.Tensor, mask: torch.Tensor, lengths: list[int],
               flags: list[bool]) -> list[torch.Tensor]:
        logits = self._logits(ids, mask)
        return [logits[i, :n] for i, n in enumerate(lengths)]
