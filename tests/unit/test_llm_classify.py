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


def test_a_language_models_head_as_a_classifier_reads_as_vllm() -> None:
    from kubemaas_runtime.llm.lm_classifier import lm_head_method

    qwen3 = {"is_original_qwen3_reranker": True}
    assert lm_head_method(qwen3) == "from_2_way_softmax"
    assert (qwen3["classifier_from_token"], qwen3["num_labels"], qwen3["use_pad_token"]) == (
        ["no", "yes"], 1, False)
    assert classifier_of(qwen3).tokenizer_pairs is False
    gemma = {"method": "no_post_processing", "classifier_from_token": ["Yes"]}
    assert lm_head_method(gemma) == "no_post_processing"
    assert classifier_of(gemma).labels == ("Yes",)
    assert lm_head_method({"architectures": ["LlamaForSequenceClassification"]}) is None
    for bad, words in (({"method": "from_3_way"}, "is not served"),
                       ({"method": "from_2_way_softmax", "classifier_from_token": ["a"]},
                        "takes two tokens"),
                       ({"method": "no_post_processing", "classifier_from_token": "yes"},
                        "must list the tokens")):
        with pytest.raises(StartupError, match=words):
            lm_head_method(bad)


def test_hf_overrides_are_a_json_object() -> None:
    from kubemaas_runtime.llm.loader import parse_overrides

    assert parse_overrides(None) == {} and parse_overrides('{"a": 1}') == {"a": 1}
    with pytest.raises(StartupError, match="not JSON"):
        parse_overrides("{a")
    with pytest.raises(StartupError, match="JSON object"):
        parse_overrides("[1]")
