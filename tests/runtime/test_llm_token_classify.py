"""vLLM's token_classify task, served by real processes over tiny token classifiers built
offline (``*ForTokenClassification``: BERT, XLM-RoBERTa, ModernBERT, Llama, Qwen2): POST
/pooling answers one row per token, each equal to transformers' own ``model(...).logits``
(through a softmax) over that input alone, whatever the batch it ran in; the other pooling
routes refuse the model with a 400 naming its task; bad input is a 4xx and the server keeps
serving."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.runtime.test_llm_bad_input import assert_no_5xx, assert_openai_error, json_values

from .conftest import Server, start_llm_server

LABELS = ("O", "B-PER", "I-PER", "B-LOC")
TEXTS = ["the quick brown fox", "birds sing in the morning and the fox sleeps", "a lazy dog",
         "once upon a time there was a fox in the morning"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from kubemaas_testbed.llm_classifiers import build_token_classifier

    out = tmp_path_factory.mktemp("token-classify")
    return {family: build_token_classifier(out / family, family, LABELS, seed=7)
            for family in ("bert", "xlm-roberta", "modernbert", "llama", "qwen2")}


@pytest.fixture(scope="module")
def server(models: dict[str, Path]) -> Iterator[Server]:
    server = start_llm_server(models["bert"], "--max-num-seqs", "4")
    yield server
    assert server.stop() == 0


def reference(model_dir: Path) -> tuple[Any, Any]:
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    model = transformers.AutoModelForTokenClassification.from_pretrained(str(model_dir))
    return tok, model.eval()


def rows_alone(model: Any, ids: list[int], activation: bool = True) -> torch.Tensor:
    """transformers' logits for this input alone (a batch of one), [tokens, labels]."""
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    return torch.softmax(logits, -1) if activation else logits


def pool(server: Server, doc: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(f"{server.base}/pooling", json=doc, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


@pytest.mark.parametrize("family", ["bert", "xlm-roberta", "modernbert", "llama", "qwen2"])
def test_each_token_row_is_the_models_own(models: dict[str, Path], family: str) -> None:
    """Inputs of different lengths in one request (one padded batch): each input's rows, one
    per token (special tokens included), equal transformers' softmax of its logits alone."""
    tok, model = reference(models[family])
    server = start_llm_server(models[family], "--max-num-seqs", "4")
    try:
        ready = server.ready_log()
        assert (ready["task"], ready["labels"]) == ("token_classify", list(LABELS))
        assert "score_activation" not in ready, ready  # it answers neither /score nor /rerank
        got = pool(server, {"model": "tiny", "input": TEXTS})
        assert got["id"].startswith("pool-") and got["object"] == "list"
        assert [(d["index"], d["object"]) for d in got["data"]] == [
            (i, "pooling") for i in range(len(TEXTS))]
        ids = [tok(t)["input_ids"] for t in TEXTS]
        for row, want_ids in zip(got["data"], ids, strict=True):
            want = rows_alone(model, want_ids)
            assert len(row["data"]) == len(want_ids)
            assert np.asarray(row["data"]) == pytest.approx(want.numpy(), abs=1e-5)
        used = sum(map(len, ids))
        assert got["usage"] == {"prompt_tokens": used, "total_tokens": used}
    finally:
        assert server.stop() == 0


def test_task_activation_and_base64(server: Server, models: dict[str, Path]) -> None:
    """task token_classify named or not; use_activation false: the logits; base64: every
    row's float32 values, row after row; token ids, add_special_tokens and
    truncate_prompt_tokens as for the other pooling tasks."""
    tok, model = reference(models["bert"])
    ids = tok(TEXTS[1])["input_ids"]
    named = pool(server, {"input": TEXTS[1], "task": "token_classify"})
    assert np.asarray(named["data"][0]["data"]) == pytest.approx(
        rows_alone(model, ids).numpy(), abs=1e-5)
    raw = pool(server, {"input": [ids], "use_activation": False, "encoding_format": "base64"})
    values = np.frombuffer(base64.b64decode(raw["data"][0]["data"]), dtype="<f4")
    assert values.reshape(len(ids), len(LABELS)) == pytest.approx(
        rows_alone(model, ids, activation=False).numpy(), abs=1e-5)
    bare = tok(TEXTS[1], add_special_tokens=False)["input_ids"]
    plain = pool(server, {"input": TEXTS[1], "add_special_tokens": False})
    assert np.asarray(plain["data"][0]["data"]) == pytest.approx(
        rows_alone(model, bare).numpy(), abs=1e-5)
    cut = pool(server, {"input": TEXTS[1], "truncate_prompt_tokens": 4})
    kept = [ids[0], *bare[-2:], ids[-1]]  # the last tokens, between the special tokens
    assert np.asarray(cut["data"][0]["data"]) == pytest.approx(
        rows_alone(model, kept).numpy(), abs=1e-5)
    assert cut["usage"]["prompt_tokens"] == 4


def test_concurrent_requests_do_not_change_any_row(server: Server,
                                                   models: dict[str, Path]) -> None:
    tok, model = reference(models["bert"])
    jobs = [TEXTS[: 1 + i % len(TEXTS)][::-1] for i in range(12)]
    with ThreadPoolExecutor(6) as workers:
        answers = list(workers.map(lambda texts: pool(server, {"input": texts}), jobs))
    for texts, answer in zip(jobs, answers, strict=True):
        for text, row in zip(texts, answer["data"], strict=True):
            assert np.asarray(row["data"]) == pytest.approx(
                rows_alone(model, tok(text)["input_ids"]).numpy(), abs=1e-5)


def test_other_routes_tasks_and_parameters_are_refused(server: Server) -> None:
    """/v1/embeddings, /classify, /score, /rerank: a 400 naming the model's task; another
    task or another task's parameter on /pooling: 400; the server keeps serving."""
    for path, doc in (("/v1/embeddings", {"input": "a"}), ("/classify", {"input": "a"}),
                      ("/score", {"text_1": "a", "text_2": "b"}),
                      ("/rerank", {"query": "a", "documents": ["b"]}),
                      ("/v1/completions", {"prompt": "a"})):
        response = httpx.post(f"{server.base}{path}", json=doc, timeout=30)
        assert_openai_error(response.status_code, response.json(), 400)
        assert "token_classify" in response.json()["error"]["message"], (path, response.text)
    for bad, param in (({"task": "classify"}, "task"), ({"task": "embed"}, "task"),
                       ({"task": "token_embed"}, "task"), ({"task": "nope"}, "task"),
                       ({"dimensions": 2}, "dimensions"), ({"normalize": True}, "normalize"),
                       ({"use_activation": "no"}, "use_activation"),
                       ({"encoding_format": "bytes"}, "encoding_format"),
                       ({"truncate_prompt_tokens": 0}, "truncate_prompt_tokens"),
                       ({"truncate_prompt_tokens": 2}, "truncate_prompt_tokens"),
                       ({"input": ""}, "input"), ({"input": [[10 ** 6]]}, "input")):
        response = httpx.post(f"{server.base}/pooling", json={"input": "a", **bad}, timeout=30)
        assert_openai_error(response.status_code, response.json(), 400)
        assert response.json()["error"]["param"] == param, response.text
    assert len(pool(server, {"input": "a fox"})["data"][0]["data"]) == 4


def test_models_card_names_the_task(server: Server) -> None:
    card = httpx.get(f"{server.base}/v1/models", timeout=30).json()["data"][0]
    assert (card["id"], card["task"]) == ("tiny", "token_classify")


pooling_docs = st.fixed_dictionaries(
    {"input": st.text(max_size=30) | st.lists(st.integers(-3, 1100), max_size=8)
     | st.lists(st.text(max_size=10), max_size=3) | json_values},
    optional={"task": st.sampled_from(["token_classify", "classify", "x"]) | json_values,
              "use_activation": st.booleans() | json_values,
              "encoding_format": st.sampled_from(["float", "base64"]) | json_values,
              "truncate_prompt_tokens": st.integers(-2, 8) | json_values,
              "add_special_tokens": st.booleans() | json_values})


@settings(max_examples=100, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(pooling_docs)
def test_fuzz_no_5xx(server: Server, doc: dict[str, Any]) -> None:
    assert_no_5xx(server, "/pooling", doc)
