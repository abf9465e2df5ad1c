"""Embedding models (--runner pooling) on /v1/embeddings: each vector equals the model's own
forward over that input alone, pooled as the model says (last token by default, the mean of the
tokens by a sentence-transformers Pooling module) and normalized, whatever the inputs batched
beside it; the openai client's base64 and float answers; dimensions for a Matryoshka model;
bad input is a 400 and the server keeps serving."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.runtime.test_llm_bad_input import assert_no_5xx, json_values

from . import llm_reference as ref
from .conftest import Server, start_llm_server

TEXTS = ["Once upon a time", "the lazy dog jumps over the fox", "birds", "a b c d e f g h i j",
         "the quick brown fox", "in the morning the birds sing"]


@pytest.fixture(scope="module")
def base_model(tiny_llama: Path) -> Any:
    import transformers

    return transformers.AutoModel.from_pretrained(str(tiny_llama)).eval()


def expected(base_model: Any, ids: list[int], kind: str = "LAST", normalize: bool = True
             ) -> torch.Tensor:
    """The model's forward over this input alone, pooled."""
    with torch.inference_mode():
        hidden = base_model(torch.tensor([ids])).last_hidden_state[0]
    vector = hidden[-1] if kind == "LAST" else hidden.mean(0)
    return torch.nn.functional.normalize(vector, dim=-1) if normalize else vector


@pytest.fixture(scope="module")
def matryoshka_dir(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama as a sentence-transformers model that pools by the mean, normalizes, and
    was trained to be cut to 16 or 32 dimensions."""
    out = tmp_path_factory.mktemp("embed") / "st-llama"
    shutil.copytree(tiny_llama, out)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "matryoshka_dimensions": [16, 32]}))
    (out / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize",
         "type": "sentence_transformers.models.Normalize"}]))
    (out / "1_Pooling").mkdir()
    (out / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": config["hidden_size"], "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
        "pooling_mode_lasttoken": False}))
    return out


@pytest.fixture(scope="module")
def server(tiny_llama: Path) -> Iterator[Server]:
    server = start_llm_server(tiny_llama, "--runner", "pooling", "--max-num-seqs", "4")
    yield server
    assert server.stop() == 0


def embed(server: Server, doc: dict[str, Any]) -> dict[str, Any]:
    status, body = server.post_json("/v1/embeddings", doc)
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def test_the_openai_client_gets_each_inputs_own_vector(server: Server, client: openai.OpenAI,
                                                       base_model: Any, tiny_llama: Path
                                                       ) -> None:
    got = client.embeddings.create(model="tiny", input=TEXTS)  # base64 on the wire
    floats = client.embeddings.create(model="tiny", input=TEXTS, encoding_format="float")
    assert got.model == "tiny" and [d.index for d in got.data] == list(range(len(TEXTS)))
    assert got.usage.prompt_tokens == sum(len(ref.prompt_ids(tiny_llama, t)) for t in TEXTS)
    for text, a, b in zip(TEXTS, got.data, floats.data, strict=True):
        want = expected(base_model, ref.prompt_ids(tiny_llama, text))
        torch.testing.assert_close(torch.tensor(a.embedding), want, rtol=1e-5, atol=1e-5)
        assert a.embedding == b.embedding  # the same float32 values either way


def test_concurrent_requests_do_not_change_any_vector(server: Server, base_model: Any,
                                                      tiny_llama: Path) -> None:
    jobs = [TEXTS[i % len(TEXTS)] * (1 + i % 3) for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        docs = list(pool.map(lambda text: embed(server, {"input": text}), jobs))
    for text, doc in zip(jobs, docs, strict=True):
        want = expected(base_model, ref.prompt_ids(tiny_llama, text))
        torch.testing.assert_close(torch.tensor(doc["data"][0]["embedding"]), want,
                                   rtol=1e-5, atol=1e-5)


def test_token_ids_truncation_and_raw_vectors(server: Server, base_model: Any,
                                              tiny_llama: Path) -> None:
    ids = ref.prompt_ids(tiny_llama, "the lazy dog jumps over the fox")
    doc = embed(server, {"input": [ids, ids[:3]], "encoding_format": "float"})
    torch.testing.assert_close(torch.tensor(doc["data"][1]["embedding"]),
                               expected(base_model, ids[:3]), rtol=1e-5, atol=1e-5)
    doc = embed(server, {"input": ids, "truncate_prompt_tokens": 4, "normalize": False})
    assert doc["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
    torch.testing.assert_close(torch.tensor(doc["data"][0]["embedding"]),
                               expected(base_model, ids[-4:], normalize=False),
                               rtol=1e-5, atol=1e-5)
    assert server.get_json("/v1/models")[1]["data"][0]["id"] == "tiny"
    metrics = server.metrics()
    assert 'vllm:prompt_tokens_total{model_name="tiny"}' in metrics
    assert "vllm:cache_config_info{" not in metrics  # no KV cache to describe


def test_vllms_pooling_route_answers_each_inputs_vector(server: Server) -> None:
    """vLLM's POST /pooling (task embed, or none: the model's): the vector /v1/embeddings
    answers, as PoolingResponse rows; it was a 404."""
    want = embed(server, {"input": TEXTS[:3], "encoding_format": "float", "dimensions": None})
    status, got = server.post_json("/pooling", {"input": TEXTS[:3]})
    assert status == 200, got
    assert got["id"].startswith("pool-") and got["object"] == "list" and got["model"] == "tiny"
    assert [(d["index"], d["object"]) for d in got["data"]] == [(i, "pooling") for i in range(3)]
    assert [d["data"] for d in got["data"]] == [d["embedding"] for d in want["data"]]
    assert got["usage"] == want["usage"]
    packed = server.post_json("/pooling", {"input": TEXTS[0], "task": "embed",
                                           "encoding_format": "base64", "normalize": False})[1]
    raw = embed(server, {"input": TEXTS[0], "normalize": False, "encoding_format": "base64"})
    assert packed["data"][0]["data"] == raw["data"][0]["embedding"]
    messages = [{"role": "user", "content": "hi"}]
    chat = server.post_json("/pooling", {"messages": messages})
    assert chat[0] == 200 and chat[1]["data"][0]["data"] == embed(server, {
        "messages": messages, "encoding_format": "float"})["data"][0]["embedding"], chat
    for bad, param in (({"task": "classify"}, "task"), ({"task": "token_classify"}, "task"),
                       ({"task": 3}, "task"), ({"encoding_format": "bytes"},
                                               "encoding_format"),
                       ({"use_activation": False}, "use_activation")):
        status, body = server.post_json("/pooling", {"input": "a", **bad})
        assert status == 400 and body["error"]["param"] == param, body
    status, body = server.post_json("/pooling", ["a"])
    assert status == 400, body


def token_states(base_model: Any, ids: list[int], normalize: bool = True) -> torch.Tensor:
    """Each token's last hidden state from the model's forward over this input alone."""
    with torch.inference_mode():
        hidden = base_model(torch.tensor([ids])).last_hidden_state[0]
    return torch.nn.functional.normalize(hidden, dim=-1) if normalize else hidden


def test_pooling_token_embed_answers_each_tokens_state(server: Server, base_model: Any,
                                                       tiny_llama: Path) -> None:
    """vLLM's task token_embed: per input, each token's hidden state in order, normalized each
    (it was a 400); batched with other requests' inputs, it equals the input's own forward."""
    jobs = [TEXTS[i % len(TEXTS)] * (1 + i % 2) for i in range(12)]

    def ask(i: int) -> dict[str, Any]:
        doc = {"input": [jobs[i], TEXTS[0]], "task": "token_embed"} if i % 3 else \
            {"input": jobs[i]}  # an embed request batched beside them
        status, body = server.post_json("/pooling", doc)
        assert status == 200, body
        return body  # type: ignore[no-any-return]

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(ask, range(12)))
    for i, answer in enumerate(answers):
        ids = ref.prompt_ids(tiny_llama, jobs[i])
        if i % 3 == 0:
            torch.testing.assert_close(torch.tensor(answer["data"][0]["data"]),
                                       expected(base_model, ids), rtol=1e-5, atol=1e-5)
            continue
        first = ref.prompt_ids(tiny_llama, TEXTS[0])
        assert answer["usage"]["prompt_tokens"] == len(ids) + len(first)
        for row, want in zip(answer["data"], (ids, first), strict=True):
            torch.testing.assert_close(torch.tensor(row["data"]), token_states(base_model, want),
                                       rtol=1e-5, atol=1e-5)
    ids = ref.prompt_ids(tiny_llama, TEXTS[1])
    status, packed = server.post_json("/pooling", {"input": ids, "task": "token_embed",
                                                   "encoding_format": "base64",
                                                   "normalize": False})
    assert status == 200, packed
    raw = np.frombuffer(base64.b64decode(packed["data"][0]["data"]), dtype="<f4")
    torch.testing.assert_close(torch.tensor(raw.reshape(len(ids), -1)),
                               token_states(base_model, ids, normalize=False),
                               rtol=1e-5, atol=1e-5)
    for bad, param in (({"dimensions": 4}, "dimensions"), ({"use_activation": True},
                                                           "use_activation"),
                       ({"input": ""}, "input"), ({"input": [[]]}, "input")):
        status, body = server.post_json("/pooling", {"input": "a", "task": "token_embed",
                                                     **bad})
        assert status == 400 and body["error"]["param"] == param, body


def test_truncate_prompt_tokens_minus_one_is_the_models_length(server: Server, base_model: Any,
                                                              tiny_llama: Path) -> None:
    """vLLM's rule: -1 keeps the last --max-model-len tokens; a length over the model's is a
    400 (it was a 400 for -1, and a silent no-op past the model's length)."""
    ids = ref.prompt_ids(tiny_llama, "the lazy dog jumps over the fox " * 120)
    assert len(ids) > 512
    doc = embed(server, {"input": ids, "truncate_prompt_tokens": -1, "normalize": False})
    assert doc["usage"]["prompt_tokens"] == 512
    torch.testing.assert_close(torch.tensor(doc["data"][0]["embedding"]),
                               expected(base_model, ids[-512:], normalize=False),
                               rtol=1e-4, atol=1e-4)
    status, body = server.post_json("/v1/embeddings", {"input": "birds",
                                                       "truncate_prompt_tokens": 513})
    assert status == 400 and body["error"]["param"] == "truncate_prompt_tokens", body
    assert "greater than the model's maximum length (512)" in body["error"]["message"]
    status, body = server.post_json("/score", {"text_1": "birds", "text_2": "a b",
                                               "truncate_prompt_tokens": -1})
    assert status == 200, body


def test_a_chat_embedding_request_and_tokenize(server: Server, base_model: Any) -> None:
    """vLLM's: ``messages`` instead of ``input``, rendered by the chat template (without a
    generation prompt unless asked); /tokenize and /detokenize answer on an embedding server
    too."""
    messages = [{"role": "user", "content": "the lazy dog"}]
    status, tokens = server.post_json("/tokenize", {"messages": messages,
                                                    "add_generation_prompt": False})
    assert status == 200, tokens
    doc = embed(server, {"messages": messages, "encoding_format": "float"})
    assert doc["usage"]["prompt_tokens"] == tokens["count"]
    torch.testing.assert_close(torch.tensor(doc["data"][0]["embedding"]),
                               expected(base_model, tokens["tokens"]), rtol=1e-5, atol=1e-5)
    opened = embed(server, {"messages": messages, "add_generation_prompt": True})
    status, with_prompt = server.post_json("/tokenize", {"messages": messages})
    assert opened["usage"]["prompt_tokens"] == with_prompt["count"] > tokens["count"]
    status, text = server.post_json("/detokenize", {"tokens": tokens["tokens"]})
    assert status == 200 and "the lazy dog" in text["prompt"]
    status, body = server.post_json("/v1/embeddings", {"messages": messages, "input": "a"})
    assert status == 400 and "not both" in body["error"]["message"]
    # null is absent, as for every other field (it was a 400 "'messages' must be a list")
    assert embed(server, {"messages": None, "input": "a"})["data"]


@pytest.mark.parametrize(("doc", "status", "words"), [
    ({"input": []}, 400, "'input' must be"),
    ({"input": ""}, 400, "empty string"),
    ({"input": [1, "a"]}, 400, "'input' must be"),
    ({"input": [[1, 2], []]}, 400, "'input' must be"),
    ({"input": [99999]}, 400, "token ids must be in"),
    ({"input": "a", "encoding_format": "int8"}, 400, "encoding_format"),
    ({"input": "a", "dimensions": 16}, 400, "cannot be cut to 16"),
    ({"input": "a", "normalize": "yes"}, 400, "'normalize' must be a boolean"),
    ({"input": "a", "model": "other"}, 404, "does not exist"),
    ({"input": "word " * 600, "add_special_tokens": None}, 400, "maximum context length"),
    ({"input": "word " * 600}, 400, "maximum context length is 512"),
])
def test_bad_input(server: Server, doc: dict[str, Any], status: int, words: str) -> None:
    got, body = server.post_json("/v1/embeddings", doc)
    assert got == status and words in body["error"]["message"], body
    assert embed(server, {"input": "still serving"})["data"]


embedding_docs = st.fixed_dictionaries(
    {"input": st.text(max_size=40) | st.lists(st.integers(-3, 1100), max_size=8)
     | st.lists(st.text(max_size=10), max_size=3)
     | st.lists(st.lists(st.integers(-3, 1100), max_size=4), max_size=3) | json_values},
    optional={"model": st.sampled_from(["tiny", "other"]) | json_values,
              "encoding_format": st.sampled_from(["float", "base64", "int8"]) | json_values,
              "dimensions": st.integers(-2, 80) | json_values,
              "truncate_prompt_tokens": st.integers(-2, 8) | json_values,
              "add_special_tokens": st.booleans() | json_values,
              "normalize": st.booleans() | json_values, "user": json_values})


@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(embedding_docs)
def test_fuzz_no_5xx(server: Server, doc: dict[str, Any]) -> None:
    assert_no_5xx(server, "/v1/embeddings", doc)


def test_the_request_id_names_pooling_answers(server: Server) -> None:
    """The X-Request-Id header (else the body's request_id) names each kind of answer."""
    for path, doc, prefix in (("/v1/embeddings", {"input": "birds"}, "embd-"),
                              ("/score", {"text_1": "birds", "text_2": "a b"}, "score-"),
                              ("/rerank", {"query": "birds", "documents": ["a b"]}, "rerank-")):
        status, headers, body = server.request(
            "POST", path, json.dumps(doc).encode(),
            {"Content-Type": "application/json", "X-Request-Id": f"p{path}"})
        assert status == 200 and json.loads(body)["id"] == f"{prefix}p{path}", body
        assert headers["x-request-id"] == f"p{path}"
    assert embed(server, {"input": "birds", "request_id": "e-1"})["id"] == "embd-e-1"


def test_an_embedding_server_generates_nothing(server: Server) -> None:
    status, body = server.post_json("/v1/completions", {"prompt": "a", "max_tokens": 2})
    assert status == 400 and "it answers /v1/embeddings, /score and /rerank, not generation" \
        in body["error"]["message"]
    assert server.request("GET", "/v1/embeddings")[0] == 405


def test_sentence_transformers_pooling_and_matryoshka(matryoshka_dir: Path, base_model: Any,
                                                      tiny_llama: Path) -> None:
    server = start_llm_server(matryoshka_dir)  # --runner auto: modules.json says pooling
    try:
        ready = server.ready_log()
        assert (ready["runner"], ready["pooling_type"], ready["normalize"]) == (
            "pooling", "MEAN", True)
        ids = ref.prompt_ids(tiny_llama, "the quick brown fox")
        whole = embed(server, {"input": ids, "encoding_format": "float"})
        torch.testing.assert_close(torch.tensor(whole["data"][0]["embedding"]),
                                   expected(base_model, ids, "MEAN"), rtol=1e-5, atol=1e-5)
        cut = embed(server, {"input": ids, "dimensions": 16, "encoding_format": "float"})
        raw = expected(base_model, ids, "MEAN", normalize=False)[:16]
        torch.testing.assert_close(torch.tensor(cut["data"][0]["embedding"]),
                                   torch.nn.functional.normalize(raw, dim=-1),
                                   rtol=1e-5, atol=1e-5)
        status, body = server.post_json("/v1/embeddings", {"input": "a", "dimensions": 20})
        assert status == 400 and "[16, 32]" in body["error"]["message"]
    finally:
        assert server.stop() == 0


def _with_modules(matryoshka_dir: Path, path: Path, extra: list[str]) -> None:
    """The sentence-transformers copy of the tiny Llama with the modules ``extra`` (their
    type names) between its Pooling and its Normalize."""
    shutil.copytree(matryoshka_dir, path)
    modules = json.loads((path / "modules.json").read_text())
    added = [{"idx": 2 + i, "name": str(2 + i), "path": f"{2 + i}_{kind}",
              "type": f"sentence_transformers.models.{kind}"} for i, kind in enumerate(extra)]
    modules[2:2] = added
    modules[-1] = {**modules[-1], "idx": len(modules) - 1, "path": "Normalize"}
    (path / "modules.json").write_text(json.dumps(modules))


def test_sentence_transformers_dense_modules_are_applied(matryoshka_dir: Path,
                                                         base_model: Any, tiny_llama: Path,
                                                         tmp_path: Path) -> None:
    """A Dense projection after the pooling (LaBSE, sentence-t5, stella): the server refused
    to start; now each Dense (linear, then its activation) is applied to the pooled vector
    before Normalize, as sentence-transformers does, and the vectors have its out_features.
    sentence-transformers is not installed here: the reference is the same computation in
    torch (Dense.forward: activation(linear(sentence_embedding)))."""
    from safetensors.torch import save_file

    path = tmp_path / "st-dense"
    _with_modules(matryoshka_dir, path, ["Dense", "Dense"])
    hidden = base_model.config.hidden_size
    torch.manual_seed(7)
    first = torch.nn.Linear(hidden, 24)
    second = torch.nn.Linear(24, 12, bias=False)
    for name, linear, act, weights in (
            ("2_Dense", first, "torch.nn.modules.activation.Tanh", "safetensors"),
            ("3_Dense", second, "torch.nn.modules.linear.Identity", "bin")):
        (path / name).mkdir()
        (path / name / "config.json").write_text(json.dumps({
            "in_features": linear.in_features, "out_features": linear.out_features,
            "bias": linear.bias is not None, "activation_function": act}))
        state = {f"linear.{k}": v.detach().clone() for k, v in linear.state_dict().items()}
        if weights == "safetensors":
            save_file(state, str(path / name / "model.safetensors"))
        else:
            torch.save(state, str(path / name / "pytorch_model.bin"))
    server = start_llm_server(path)
    try:
        assert server.ready_log()["dimensions"] == 12
        ids = ref.prompt_ids(tiny_llama, "the quick brown fox")
        got = embed(server, {"input": [ids, ids[:2]], "encoding_format": "float"})
        pooled = expected(base_model, ids, "MEAN", normalize=False)
        with torch.inference_mode():
            want = torch.nn.functional.normalize(second(torch.tanh(first(pooled))), dim=-1)
        vector = torch.tensor(got["data"][0]["embedding"])
        assert vector.shape == (12,)
        torch.testing.assert_close(vector, want, rtol=1e-5, atol=1e-5)
        status, body = server.post_json("/v1/embeddings", {"input": "a", "dimensions": 20})
        assert status == 400, body
        status, tokens = server.post_json("/pooling", {"input": ids, "task": "token_embed"})
        with torch.inference_mode():  # vLLM's token_embed: each token through the Dense
            states = second(torch.tanh(first(token_states(base_model, ids, False))))
        torch.testing.assert_close(torch.tensor(tokens["data"][0]["data"]),
                                   torch.nn.functional.normalize(states, dim=-1),
                                   rtol=1e-5, atol=1e-5)
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize(("extra", "config", "message"), [
    (["LayerNorm"], None, "not served: sentence_transformers.models.LayerNorm"),
    (["Dense"], {"in_features": 64, "out_features": 8,
                 "activation_function": "os.system"},
     "activation_function 'os.system' is not served"),
    (["Dense"], {"in_features": 5, "out_features": 8}, "in_features 5 is not the width"),
    (["Dense"], {"in_features": 64, "out_features": 8}, "has neither model.safetensors"),
])
def test_a_sentence_transformers_module_not_served_refuses_to_start(
        matryoshka_dir: Path, tmp_path: Path, extra: list[str], config: dict[str, Any] | None,
        message: str) -> None:
    """A module that would change the vectors and is not served (a LayerNorm), or a Dense
    that cannot be served as written, refuses to start and says why."""
    from .conftest import start_server

    path = tmp_path / "st-other"
    _with_modules(matryoshka_dir, path, extra)
    if config is not None:
        hidden = json.loads((path / "config.json").read_text())["hidden_size"]
        if config["in_features"] == 64:
            config = {**config, "in_features": hidden}
        (path / "2_Dense").mkdir()
        (path / "2_Dense" / "config.json").write_text(json.dumps(config))
    server = start_server(["--model-uri", str(path), "--format", "hf"], ready=False)
    try:
        assert server.proc.wait(60) == 1
    finally:
        server.stop()
    errors = [d["msg"] for d in server.logs() if d.get("level") == "error"]
    assert errors and message in errors[0], server.lines[-5:]


def test_sentence_transformers_do_lower_case(matryoshka_dir: Path, base_model: Any,
                                             tiny_llama: Path, tmp_path: Path) -> None:
    """sentence_bert_config.json's do_lower_case: sentence-transformers and vLLM lower-case
    each text before a cased tokenizer reads it; it was ignored (another vector)."""
    path = tmp_path / "st-lower"
    shutil.copytree(matryoshka_dir, path)
    (path / "sentence_bert_config.json").write_text(json.dumps({"do_lower_case": True}))
    lower, upper = "the quick brown fox", "The QUICK Brown Fox"
    assert ref.prompt_ids(tiny_llama, lower) != ref.prompt_ids(tiny_llama, upper)
    server = start_llm_server(path)
    try:
        got = embed(server, {"input": [upper, lower], "encoding_format": "float"})
        want = expected(base_model, ref.prompt_ids(tiny_llama, lower), "MEAN")
        for row in got["data"]:
            torch.testing.assert_close(torch.tensor(row["embedding"]), want, rtol=1e-5,
                                       atol=1e-5)
        status, body = server.post_json("/score", {"text_1": upper, "text_2": lower})
        assert status == 200 and body["data"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    finally:
        assert server.stop() == 0


def test_gpt2_pools_its_last_token(tiny_gpt2: Path) -> None:
    import transformers

    model = transformers.AutoModel.from_pretrained(str(tiny_gpt2)).eval()
    server = start_llm_server(tiny_gpt2, "--runner", "pooling")
    try:
        ids = ref.prompt_ids(tiny_gpt2, "the lazy dog")
        doc = embed(server, {"input": ids, "encoding_format": "float"})
        torch.testing.assert_close(torch.tensor(doc["data"][0]["embedding"]),
                                   expected(model, ids), rtol=1e-5, atol=1e-5)
    finally:
        assert server.stop() == 0


def test_auto_runner_reads_the_architecture(tmp_path: Path, tiny_llama: Path,
                                            tiny_gpt2: Path) -> None:
    from kubemaas_runtime.llm.loader import pooling_runner

    assert not pooling_runner(tiny_llama) and not pooling_runner(tiny_gpt2)  # LM heads
    base = tmp_path / "base"
    shutil.copytree(tiny_llama, base)
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "architectures": ["LlamaModel"]}))
    assert pooling_runner(base)


def test_a_generating_server_has_no_embeddings(tiny_llama: Path) -> None:
    server = start_llm_server(tiny_llama)  # --runner auto: a causal LM generates
    try:
        status, body = server.post_json("/v1/embeddings", {"input": "a"})
        assert status == 400 and "--runner pooling" in body["error"]["message"]
    finally:
        assert server.stop() == 0


def test_lora_adapters_with_an_embedding_model_are_refused(tiny_llama: Path) -> None:
    from .conftest import start_server

    server = start_server(["--model-uri", str(tiny_llama), "--format", "hf", "--runner",
                           "pooling", "--enable-lora"], ready=False)
    assert server.proc.wait(120) == 1
    server.stop()
    errors = [d["msg"] for d in server.logs() if d.get("level") == "error"]
    assert errors and "not with --runner pooling" in errors[0], server.lines[-5:]
