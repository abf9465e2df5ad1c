"""Classifiers' rules read from config.json (labels, vLLM's activations) and the parsing of
score and rerank requests."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from kubemaas_runtime.errors import StartupError
from kubemaas_runtime.llm.classify import activate, classifier_of
from kubemaas_runtime.protocol.openai_errors import ApiError
from kubemaas_runtime.protocol.openai_scores import parse_score


@pytest.mark.parametrize(("config", "labels", "classify", "score", "source"), [
    ({"num_labels": 1}, ("LABEL_0",), "sigmoid", "sigmoid", "default"),
    ({"id2label": {"0": "no", "1": "yes"}}, ("no", "yes"), "softmax", "softmax", "default"),
    ({"id2label": {"0": "a", "1": "b"}, "problem_type": "multi_label_classification"},
     ("a", "b"), "sigmoid", "softmax", "default"),
    ({"num_labels": 1, "problem_type": "regression"}, ("LABEL_0",), "identity", "sigmoid",
     "default"),
    ({"num_labels": 1, "sentence_transformers": {
        "activation_fn": "torch.nn.modules.linear.Identity"}},
     ("LABEL_0",), "sigmoid", "identity", "sentence_transformers.activation_fn"),
    ({"num_labels": 1, "sbert_ce_default_activation_function":
      "torch.nn.modules.activation.Tanh"},
     ("LABEL_0",), "sigmoid", "tanh", "sbert_ce_default_activation_function"),
])
def test_classifier_rules(config: dict[str, Any], labels: tuple[str, ...], classify: str,
                          score: str, source: str) -> None:
    found = classifier_of(config)
    assert (found.labels, found.classify_activation, found.score_activation,
            found.score_activation_from) == (labels, classify, score, source)


@pytest.mark.parametrize("name", ["os.system", "torch.nn.modules.activation.GELU",
                                  "builtins.eval"])
def test_only_torch_activations_are_read(name: str) -> None:
    with pytest.raises(StartupError, match="is not served"):
        classifier_of({"num_labels": 1, "sentence_transformers": {"activation_fn": name}})


def test_activations() -> None:
    logits = torch.tensor([[0.5, -1.0, 2.0]])
    torch.testing.assert_close(activate(logits, "softmax"), torch.softmax(logits, -1))
    torch.testing.assert_close(activate(logits, "sigmoid"), torch.sigmoid(logits))
    torch.testing.assert_close(activate(logits, "tanh"), torch.tanh(logits))
    assert activate(logits, "identity") is logits


def test_score_requests_pair_one_to_many_or_many_to_many() -> None:
    one = parse_score({"text_1": "q", "text_2": ["a", "b"]}, "text_1", "text_2")
    assert (one.first, one.second, one.use_activation) == (["q"], ["a", "b"], True)
    many = parse_score({"text_1": ["q", "r"], "text_2": ["a", "b"], "activation": False},
                       "text_1", "text_2")
    assert (many.first, many.use_activation) == (["q", "r"], False)
    docs = parse_score({"query": "q", "documents": [{"text": "a"}, "b"]}, "query", "documents")
    assert docs.second == ["a", "b"]
    with pytest.raises(ApiError, match="1:1, 1:N or N:N"):
        parse_score({"text_1": ["q", "r"], "text_2": ["a"]}, "text_1", "text_2")
    with pytest.raises(ApiError, match="'documents' must be a string or a list"):
        parse_score({"query": "q", "documents": [{"text": 1}]}, "query", "documents")
