"""vLLM's pooling tasks beyond embeddings, served by real processes over tiny models built
offline: /score and /rerank from cross-encoders (BERT with token types, XLM-RoBERTa as
bge-reranker is built, ModernBERT as gte-reranker-modernbert) and from an encoder embedding
model (cosine similarity), /classify from a decoder classifier. Every answer equals the
model's own transformers forward over that input alone (the batch it ran in changes
nothing); the activations follow the model's config; bad input is a 4xx and the server keeps
serving."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.runtime.test_llm_bad_input import assert_no_5xx, json_values

from .conftest import Server, start_llm_server, start_server

QUERY = "the quick brown fox"
DOCS = ["birds sing in the morning", "the quick brown fox jumps", "a lazy dog", "once upon a time",
        "the fox", "in the morning the birds sing and the fox sleeps"]
LABELS = ("negative", "neutral", "positive")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from kubemaas_testbed.llm_classifiers import build_decoder_classifier, build_encoder

    out = tmp_path_factory.mktemp("scores")
    return {"bert": build_encoder(out / "bert-ce", "bert"),
            "xlm-roberta": build_encoder(out / "xlmr-ce", "xlm-roberta"),
            "modernbert": build_encoder(out / "modernbert-ce", "modernbert"),
            "bert-embed": build_encoder(out / "bert-embed", "bert", head=False),
            "classifier": build_decoder_classifier(out / "llama-cls", labels=LABELS)}


@pytest.fixture(scope="module")
def cross_encoder(models: dict[str, Path]) -> Iterator[Server]:
    server = start_llm_server(models["bert"], "--max-num-seqs", "4")
    yield server
    assert server.stop() == 0


def reference_scores(model_dir: Path, query: str, docs: list[str], activation: bool = True
                     ) -> list[float]:
    """Each pair alone through transformers' model, as sentence-transformers' CrossEncoder
    runs it (the tokenizer's pair, the logit through a sigmoid)."""
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(model_dir))
    out = []
    with torch.inference_mode():
        for doc in docs:
            logit = model.eval()(**tok(query, text_pair=doc, return_tensors="pt")).logits[0, 0]
            out.append(float(torch.sigmoid(logit) if activation else logit))
    return out


def pair_tokens(model_dir: Path, query: str, docs: list[str]) -> int:
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    return sum(len(tok(query, text_pair=d)["input_ids"]) for d in docs)


def ok(server: Server, path: str, doc: dict[str, Any]) -> dict[str, Any]:
    status, body = server.post_json(path, doc)
    assert status == 200, body
    return body  # type: ignore[no-any-return]


@pytest.mark.parametrize("family", ["bert", "xlm-roberta", "modernbert"])
def test_cross_encoder_scores_and_ranks_as_the_model_does(models: dict[str, Path],
                                                          family: str) -> None:
    want = reference_scores(models[family], QUERY, DOCS)
    server = start_llm_server(models[family], "--max-num-seqs", "4")
    try:
        ready = server.ready_log()
        assert (ready["task"], ready["score_activation"]) == ("classify", "sigmoid")
        got = ok(server, "/score", {"model": "tiny", "text_1": QUERY, "text_2": DOCS})
        assert [d["index"] for d in got["data"]] == list(range(len(DOCS)))
        assert {d["object"] for d in got["data"]} == {"score"}
        assert [d["score"] for d in got["data"]] == pytest.approx(want, abs=1e-5)
        tokens = pair_tokens(models[family], QUERY, DOCS)
        assert got["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
        pairs = ok(server, "/v1/score", {"text_1": DOCS[:2], "text_2": DOCS[2:4]})
        assert [d["score"] for d in pairs["data"]] == pytest.approx(
            [reference_scores(models[family], a, [b])[0]
             for a, b in zip(DOCS[:2], DOCS[2:4], strict=True)], abs=1e-5)
        ranked = ok(server, "/v1/rerank", {"query": QUERY, "documents": DOCS, "top_n": 3})
        order = sorted(range(len(DOCS)), key=lambda i: -want[i])[:3]
        assert [r["index"] for r in ranked["results"]] == order
        assert [r["document"]["text"] for r in ranked["results"]] == [DOCS[i] for i in order]
        assert [r["relevance_score"] for r in ranked["results"]] == pytest.approx(
            [want[i] for i in order], abs=1e-5)
        bare = ok(server, "/v2/rerank", {"query": QUERY, "documents": [{"text": d} for d in DOCS],
                                         "return_documents": False})
        assert len(bare["results"]) == len(DOCS) and "document" not in bare["results"][0]
    finally:
        assert server.stop() == 0


def test_concurrent_requests_do_not_change_any_score(cross_encoder: Server,
                                                     models: dict[str, Path]) -> None:
    """Twelve reranks of different queries and document sets at once (batches of up to four
    pairs, padded to each other): each equals the model's own forward pair by pair."""
    jobs = [(DOCS[i % len(DOCS)], DOCS[:1 + i % len(DOCS)]) for i in range(12)]
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda job: ok(cross_encoder, "/rerank", {
            "query": job[0], "documents": job[1]}), jobs))
    for (query, docs), answer in zip(jobs, answers, strict=True):
        want = reference_scores(models["bert"], query, docs)
        got = {r["index"]: r["relevance_score"] for r in answer["results"]}
        assert [got[i] for i in range(len(docs))] == pytest.approx(want, abs=1e-5)


def test_vllms_other_score_field_names(cross_encoder: Server, models: dict[str, Path]) -> None:
    """vLLM's /score takes queries/documents, queries/items and data_1/data_2 as well as
    text_1/text_2 (the others were a 400 "'text_1' must be a string")."""
    want = reference_scores(models["bert"], QUERY, DOCS[:3])
    for first, second in (("queries", "documents"), ("queries", "items"), ("data_1", "data_2")):
        got = ok(cross_encoder, "/v1/score", {first: QUERY, second: DOCS[:3]})
        assert [d["score"] for d in got["data"]] == pytest.approx(want, abs=1e-5)
    status, body = cross_encoder.post_json("/score", {"queries": QUERY})
    assert status == 400 and body["error"]["param"] == "documents", body


def test_the_cohere_client_reranks(cross_encoder: Server, models: dict[str, Path]) -> None:
    """Cohere's own client (v1 and v2), pointed at the runtime as vLLM documents for its
    /rerank: the same order and scores as the model's forward."""
    import cohere
    import httpx

    want = reference_scores(models["bert"], QUERY, DOCS)
    order = sorted(range(len(DOCS)), key=lambda i: -want[i])[:3]
    with httpx.Client() as http:
        for client in (
                cohere.Client(api_key="unused", base_url=cross_encoder.base, httpx_client=http),
                cohere.ClientV2(api_key="unused", base_url=cross_encoder.base,
                                httpx_client=http)):
            got = client.rerank(model="tiny", query=QUERY, documents=DOCS, top_n=3)
            assert [r.index for r in got.results] == order
            assert [r.relevance_score for r in got.results] == pytest.approx(
                [want[i] for i in order], abs=1e-5)


def test_raw_logits_truncation_and_the_token_types(cross_encoder: Server,
                                                   models: dict[str, Path]) -> None:
    raw = ok(cross_encoder, "/score", {"text_1": QUERY, "text_2": DOCS[:2],
                                       "use_activation": False})
    assert [d["score"] for d in raw["data"]] == pytest.approx(
        reference_scores(models["bert"], QUERY, DOCS[:2], activation=False), abs=1e-5)
    long_doc = "the quick brown fox jumps over the lazy dog " * 80
    status, body = cross_encoder.post_json("/score", {"text_1": QUERY, "text_2": long_doc})
    assert status == 400 and body["error"]["code"] == "context_length_exceeded", body
    cut = ok(cross_encoder, "/score", {"text_1": QUERY, "text_2": long_doc,
                                       "truncate_prompt_tokens": 64})
    assert cut["usage"]["prompt_tokens"] == 64
    whole = ok(cross_encoder, "/score", {"text_1": QUERY, "text_2": long_doc,
                                         "truncate_prompt_tokens": -1})  # vLLM's: the model's
    assert whole["usage"]["prompt_tokens"] == 512
    # a cut to the pair's special tokens or fewer: scored [CLS][SEP][SEP] alone (3), or not
    # cut at all (1: the tokenizer warns and keeps the whole pair); now a 400
    for path, doc in (("/score", {"text_1": QUERY, "text_2": DOCS[0]}),
                      ("/rerank", {"query": QUERY, "documents": DOCS[:1]})):
        for tokens in (1, 3):
            status, body = cross_encoder.post_json(path, {**doc,
                                                          "truncate_prompt_tokens": tokens})
            assert status == 400 and body["error"]["param"] == "truncate_prompt_tokens" and \
                "takes 3 special tokens" in body["error"]["message"], body
    assert ok(cross_encoder, "/score", {"text_1": QUERY, "text_2": DOCS[0],
                                        "truncate_prompt_tokens": 4})["usage"][
        "prompt_tokens"] == 4
    # BERT's pair carries token types 0 then 1: sent as all zeros, the score would differ
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(models["bert"]))
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        str(models["bert"])).eval()
    enc = tok(QUERY, text_pair=DOCS[0], return_tensors="pt")
    with torch.inference_mode():
        no_types = torch.sigmoid(model(input_ids=enc["input_ids"]).logits[0, 0]).item()
    served = ok(cross_encoder, "/score", {"text_1": QUERY, "text_2": DOCS[0]})
    assert abs(served["data"][0]["score"] - no_types) > 1e-4
    # more documents than the queue holds (--max-queue-size 256): taken while nothing waits
    many = ok(cross_encoder, "/rerank", {"query": QUERY, "documents": DOCS * 50, "top_n": 2})
    assert len(many["results"]) == 2 and many["results"][0]["relevance_score"] == pytest.approx(
        max(reference_scores(models["bert"], QUERY, DOCS)), abs=1e-5)


def test_a_decoder_classifier_classifies_each_input_alone(models: dict[str, Path]) -> None:
    import transformers

    path = models["classifier"]
    tok = transformers.AutoTokenizer.from_pretrained(str(path))
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
    with torch.inference_mode():
        want = [model(**tok(text, return_tensors="pt")).logits[0] for text in DOCS]
    server = start_llm_server(path, "--max-num-seqs", "4")
    try:
        got = ok(server, "/classify", {"model": "tiny", "input": DOCS})
        for row, logits in zip(got["data"], want, strict=True):
            probs = torch.softmax(logits, -1)
            assert row["probs"] == pytest.approx(probs.tolist(), abs=1e-5)
            assert row["label"] == LABELS[int(probs.argmax())] and row["num_classes"] == 3
        assert got["usage"]["prompt_tokens"] == sum(len(tok(t)["input_ids"]) for t in DOCS)
        raw = ok(server, "/classify", {"input": tok(DOCS[0])["input_ids"],
                                       "use_activation": False})
        assert raw["data"][0]["probs"] == pytest.approx(want[0].tolist(), abs=1e-5)
        chat = ok(server, "/classify", {"messages": [{"role": "user", "content": DOCS[1]}]})
        ids = tok.apply_chat_template([{"role": "user", "content": DOCS[1]}], tokenize=True,
                                      add_generation_prompt=False, return_dict=False)
        with torch.inference_mode():
            chat_probs = torch.softmax(model(torch.tensor([list(ids)])).logits[0], -1)
        assert chat["data"][0]["probs"] == pytest.approx(chat_probs.tolist(), abs=1e-5)
        pooled = ok(server, "/pooling", {"input": DOCS})  # vLLM's: a row per input
        assert pooled["object"] == "list" and pooled["id"].startswith("pool-")
        assert [(d["index"], d["object"]) for d in pooled["data"]] == [
            (i, "pooling") for i in range(len(DOCS))]
        assert [d["data"] for d in pooled["data"]] == [d["probs"] for d in got["data"]]
        assert pooled["usage"] == got["usage"]
        packed = ok(server, "/pooling", {"input": DOCS[0], "task": "classify",
                                         "use_activation": False, "encoding_format": "base64"})
        row = np.frombuffer(base64.b64decode(packed["data"][0]["data"]), dtype="<f4")
        assert row.tolist() == pytest.approx(want[0].tolist(), abs=1e-5)
        for task in ("embed", "token_embed", "token_classify"):
            status, body = server.post_json("/pooling", {"input": "a", "task": task})
            assert status == 400 and body["error"]["param"] == "task", body
        for key, value in (("dimensions", 2), ("normalize", False)):  # embed's, not ignored
            status, body = server.post_json("/pooling", {"input": "a", key: value})
            assert status == 400 and body["error"]["param"] == key, body
        status, body = server.post_json("/score", {"text_1": "a", "text_2": "b"})
        assert status == 400 and "use /classify" in body["error"]["message"]
        for path in ("/v1/embeddings", "/v1/completions"):  # it answers /classify alone
            status, body = server.post_json(path, {"input": "a", "prompt": "a"})
            assert status == 400 and "it answers /classify, not" in body["error"]["message"]
    finally:
        assert server.stop() == 0


def test_an_embedding_model_scores_by_cosine_similarity(models: dict[str, Path]) -> None:
    """A BERT base model (no sentence-transformers files) pools its CLS token, as vLLM does for
    encoders; /score and /rerank answer the cosine similarity of the two texts' vectors."""
    import transformers

    path = models["bert-embed"]
    tok = transformers.AutoTokenizer.from_pretrained(str(path))
    model = transformers.AutoModel.from_pretrained(str(path)).eval()

    def vector(text: str) -> torch.Tensor:
        with torch.inference_mode():
            return model(**tok(text, return_tensors="pt")).last_hidden_state[0, 0]

    server = start_llm_server(path)
    try:
        ready = server.ready_log()
        assert (ready["task"], ready["pooling_type"]) == ("embed", "CLS")
        got = ok(server, "/v1/embeddings", {"input": QUERY})["data"][0]["embedding"]
        torch.testing.assert_close(torch.tensor(got), torch.nn.functional.normalize(
            vector(QUERY), dim=-1), rtol=1e-5, atol=1e-5)
        want = [torch.nn.functional.cosine_similarity(vector(QUERY), vector(d), dim=0).item()
                for d in DOCS]
        scores = ok(server, "/score", {"text_1": QUERY, "text_2": DOCS})
        assert [d["score"] for d in scores["data"]] == pytest.approx(want, abs=1e-5)
        tokens = sum(len(tok(t)["input_ids"]) for t in [QUERY, *DOCS])  # the query once
        assert scores["usage"]["prompt_tokens"] == tokens
        ranked = ok(server, "/rerank", {"query": QUERY, "documents": DOCS, "top_n": 2})
        assert [r["index"] for r in ranked["results"]] == sorted(
            range(len(DOCS)), key=lambda i: -want[i])[:2]
        # an error names the text in the request's own terms (it said "input 2" here)
        status, body = server.post_json("/rerank", {"query": "a",
                                                    "documents": ["b", "word " * 600]})
        assert status == 400 and body["error"]["param"] == "documents", body
        assert "documents[1] has 1202 tokens" in body["error"]["message"]
        status, body = server.post_json("/classify", {"input": "a"})
        assert status == 400 and "it answers /v1/embeddings, /score and /rerank; /classify " \
            "needs a classifier" in body["error"]["message"]
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize(("path", "doc", "status", "words"), [
    ("/score", {"text_1": ["a", "b"], "text_2": ["a", "b", "c"]}, 400, "1:1, 1:N or N:N"),
    ("/score", {"text_1": [], "text_2": "a"}, 400, "at least one text"),
    ("/score", {"text_1": "a"}, 400, "'text_2' must be a string"),
    ("/score", {"text_1": "a", "text_2": [1]}, 400, "'text_2' must be a string"),
    ("/score", {"text_1": "a", "text_2": "b", "truncate_prompt_tokens": 0}, 400,
     "'truncate_prompt_tokens' must be at least 1, or -1"),
    ("/rerank", {"query": "a", "documents": ["b", "word " * 600]}, 400,
     "pair 1 (query with documents[1]) has"),
    ("/rerank", {"query": "a", "documents": ["b"], "truncate_prompt_tokens": 513}, 400,
     "greater than the model's maximum length (512)"),
    ("/score", {"text_1": "a", "text_2": "b", "use_activation": "no"}, 400,
     "'use_activation' must be a boolean"),
    ("/score", {"text_1": "a", "text_2": "b", "model": "other"}, 404, "does not exist"),
    ("/rerank", {"query": ["a"], "documents": ["b"]}, 400, "'query' must be a string"),
    ("/rerank", {"query": "a", "documents": []}, 400, "at least one text"),
    ("/rerank", {"query": "a", "documents": ["b"], "top_n": -1}, 400, "'top_n'"),
    ("/rerank", {"query": "a", "documents": ["b"], "top_n": "2"}, 400, "'top_n'"),
    ("/rerank", {"query": "a", "documents": ["b"] * 2049}, 400, "more than 2048"),
    ("/rerank", [1, 2], 400, "JSON object"),
    ("/classify", {"input": []}, 400, "'input' must be"),
    # no chat template: a pooling server has no /v1/completions to send the text to
    ("/classify", {"messages": [{"role": "user", "content": "a"}]}, 400,
     "no chat template: send the text itself ('input'"),
    ("/classify", {"messages": None, "input": "a"}, 200, ""),  # null is absent
    ("/classify", {"input": "a", "add_special_tokens": 1}, 400, "'add_special_tokens'"),
    # null is the default (the fuzz found a 500 here: None reached the tokenizer)
    ("/classify", {"input": "a", "add_special_tokens": None, "top_n": None}, 200, ""),
    ("/v1/embeddings", {"input": "a", "add_special_tokens": None}, 400,
     "is a classifier: it answers /classify, /score and /rerank, not embeddings"),
])
def test_bad_input(cross_encoder: Server, path: str, doc: Any, status: int, words: str
                   ) -> None:
    got, body = cross_encoder.post_json(path, doc)
    assert got == status and (status == 200 or words in body["error"]["message"]), body
    assert ok(cross_encoder, "/rerank", {"query": "still", "documents": ["serving"]})["results"]


score_docs = st.fixed_dictionaries(
    {"text_1": st.text(max_size=30) | st.lists(st.text(max_size=10), max_size=3) | json_values,
     "text_2": st.text(max_size=30) | st.lists(st.text(max_size=10), max_size=4) | json_values},
    optional={"model": st.sampled_from(["tiny", "other"]) | json_values,
              "truncate_prompt_tokens": st.integers(-2, 8) | json_values,
              "use_activation": st.booleans() | json_values})
rerank_docs = st.fixed_dictionaries(
    {"query": st.text(max_size=30) | json_values,
     "documents": st.lists(st.text(max_size=20) | st.fixed_dictionaries(
         {"text": st.text(max_size=10)}) | json_values, max_size=5) | json_values},
    optional={"top_n": st.integers(-2, 8) | json_values,
              "return_documents": st.booleans() | json_values,
              "truncate_prompt_tokens": st.integers(-2, 8) | json_values})
classify_docs = st.fixed_dictionaries(
    {"input": st.text(max_size=30) | st.lists(st.integers(-3, 1100), max_size=8)
     | st.lists(st.text(max_size=10), max_size=3) | json_values},
    optional={"use_activation": st.booleans() | json_values,
              "truncate_prompt_tokens": st.integers(-2, 8) | json_values,
              "add_special_tokens": st.booleans() | json_values})


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.tuples(st.just("/score"), score_docs) | st.tuples(st.just("/rerank"), rerank_docs)
       | st.tuples(st.sampled_from(["/classify", "/pooling"]), classify_docs))
def test_fuzz_no_5xx(cross_encoder: Server, case: tuple[str, Any]) -> None:
    assert_no_5xx(cross_encoder, *case)


def test_a_generating_server_neither_scores_nor_classifies(tiny_llama: Path) -> None:
    server = start_llm_server(tiny_llama)
    try:
        for path, doc in (("/score", {"text_1": "a", "text_2": "b"}),
                          ("/rerank", {"query": "a", "documents": ["b"]}),
                          ("/classify", {"input": "a"}), ("/pooling", {"input": "a"})):
            status, body = server.post_json(path, doc)
            assert status == 400 and "--runner pooling" in body["error"]["message"], body
    finally:
        assert server.stop() == 0


def test_a_classifier_is_never_loaded_to_generate(models: dict[str, Path]) -> None:
    """--runner generate would put a random LM head on a classifier: refused at startup."""
    server = start_server(["--model-uri", str(models["classifier"]), "--format", "hf",
                           "--runner", "generate"], ready=False)
    assert server.proc.wait(120) == 1
    server.stop()
    errors = [d["msg"] for d in server.logs() if d.get("level") == "error"]
    assert errors and "a classifier" in errors[0], server.lines[-5:]


def test_a_language_model_as_a_reranker(tmp_path: Path) -> None:
    """vLLM's --hf-overrides conversion (Qwen3-Reranker's): a causal LM whose score is the
    sigmoid of its "true" token's logit minus its "false" token's at the end of the
    concatenated texts, i.e. P(true) of the two; with no_post_processing each token's logit
    is a class of /classify."""
    import transformers

    from kubemaas_testbed.llm_models import build_llm

    path = build_llm(tmp_path / "qwen3", family="qwen3")
    tok = transformers.AutoTokenizer.from_pretrained(str(path))
    lm = transformers.AutoModelForCausalLM.from_pretrained(str(path)).eval()
    no, yes, other = tok.convert_ids_to_tokens([300, 301, 302])

    def last_logits(text: str) -> torch.Tensor:
        with torch.inference_mode():
            return lm(**tok(text, return_tensors="pt")).logits[0, -1]

    seq_cls = {"architectures": ["Qwen3ForSequenceClassification"]}
    server = start_llm_server(path, "--hf-overrides", json.dumps(
        {**seq_cls, "method": "from_2_way_softmax", "classifier_from_token": [no, yes]}))
    try:
        got = ok(server, "/score", {"text_1": QUERY, "text_2": DOCS})
        want = [torch.softmax(last_logits(QUERY + d)[[tok.convert_tokens_to_ids(no),
                                                      tok.convert_tokens_to_ids(yes)]], -1)[1]
                for d in DOCS]
        assert [d["score"] for d in got["data"]] == pytest.approx(
            [float(w) for w in want], abs=1e-5)
        assert got["usage"]["prompt_tokens"] == sum(len(tok(QUERY + d)["input_ids"])
                                                    for d in DOCS)
        ranked = ok(server, "/rerank", {"query": QUERY, "documents": DOCS, "top_n": 1})
        assert ranked["results"][0]["index"] == max(range(len(DOCS)), key=lambda i: want[i])
    finally:
        assert server.stop() == 0
    tokens = [no, yes, other]
    server = start_llm_server(path, "--hf-overrides", json.dumps(
        {**seq_cls, "method": "no_post_processing", "classifier_from_token": tokens}))
    try:
        got = ok(server, "/classify", {"input": DOCS[:2]})
        for row, text in zip(got["data"], DOCS[:2], strict=True):
            logits = last_logits(text)[tok.convert_tokens_to_ids(tokens)]
            assert row["probs"] == pytest.approx(torch.softmax(logits, -1).tolist(), abs=1e-5)
            assert row["label"] == tokens[int(logits.argmax())]
    finally:
        assert server.stop() == 0
    for args, words in (
            (["--hf-overrides", json.dumps({**seq_cls, "is_original_qwen3_reranker": True})],
             "['no', 'yes'] are not tokens of the tokenizer"),  # this tokenizer has neither
            (["--hf-overrides", json.dumps(seq_cls), "--runner", "generate"], "a classifier"),
            (["--hf-overrides", json.dumps({"max_position_embeddings": 256}),
              "--max-model-len", "512"], "over the model's limit of 256"),
            (["--hf-overrides", "[1]"], "takes a JSON object")):
        refused = start_server(["--model-uri", str(path), "--format", "hf", *args],
                               ready=False)
        assert refused.proc.wait(120) == 1
        refused.stop()
        errors = [d["msg"] for d in refused.logs() if d.get("level") == "error"]
        assert errors and words in errors[0], refused.lines[-5:]
