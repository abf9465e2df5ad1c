"""A model's sentence-transformers files read as sentence-transformers and vLLM read them: a
CrossEncoder's activation (its logit as is with Identity; a name outside the allowed
activations refuses to start), ``sentence_bert_config.json``'s ``max_seq_length`` (the
model's length) and ``do_lower_case`` (each text lower-cased first). Real servers over tiny
models built offline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from .conftest import start_llm_server, start_server
from .test_llm_scores import DOCS, QUERY, ok, reference_scores


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from kubemaas_testbed.llm_classifiers import build_encoder

    out = tmp_path_factory.mktemp("st-config")
    return {"xlm-roberta": build_encoder(out / "xlmr-ce", "xlm-roberta"),
            "bert-embed": build_encoder(out / "bert-embed", "bert", head=False)}


def test_sentence_transformers_activation(models: dict[str, Path], tmp_path: Path) -> None:
    """A CrossEncoder saved with an Identity activation scores by its raw logit; /classify
    keeps the classification rule (one label: sigmoid)."""
    from kubemaas_testbed.llm_classifiers import build_encoder

    identity = build_encoder(tmp_path / "ce-identity", "bert", extra_config={
        "sentence_transformers": {"activation_fn": "torch.nn.modules.linear.Identity"}})
    server = start_llm_server(identity)
    try:
        got = ok(server, "/score", {"text_1": QUERY, "text_2": DOCS[:3]})
        assert [d["score"] for d in got["data"]] == pytest.approx(
            reference_scores(identity, QUERY, DOCS[:3], activation=False), abs=1e-5)
        probs = ok(server, "/classify", {"input": QUERY})["data"][0]
        assert 0 < probs["probs"][0] < 1 and probs["num_classes"] == 1
    finally:
        assert server.stop() == 0
    bad = build_encoder(tmp_path / "ce-bad", "bert", extra_config={
        "sbert_ce_default_activation_function": "os.system"})
    refused = start_server(["--model-uri", str(bad), "--format", "hf"], ready=False)
    assert refused.proc.wait(120) == 1
    refused.stop()
    errors = [d["msg"] for d in refused.logs() if d.get("level") == "error"]
    assert errors and "'os.system' is not served" in errors[0], refused.lines[-5:]


def test_sentence_transformers_max_seq_length_is_the_models_length(models: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    """sentence_bert_config.json's max_seq_length (all-MiniLM: 256 of BERT's 512 positions) is
    the model's length, as vLLM derives it: a longer input was embedded whole, a vector the
    model was never trained to give; now it is a 400, and a --max-model-len over it refuses to
    start."""
    path = tmp_path / "st-bert"
    shutil.copytree(models["bert-embed"], path)
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 16,
                                                                "do_lower_case": False}))
    server = start_server(["--model-uri", str(path), "--format", "hf", "--name", "tiny",
                           "--intra-op-threads", "1", "--log-level", "warning"])
    try:
        assert server.get_json("/v1/models")[1]["data"][0]["max_model_len"] == 16
        status, body = server.post_json("/v1/embeddings", {"input": list(range(5, 22))})
        assert status == 400 and body["error"]["code"] == "context_length_exceeded", body
        assert "maximum context length is 16 tokens" in body["error"]["message"]
        assert ok(server, "/v1/embeddings", {"input": list(range(5, 21))})["data"]
    finally:
        assert server.stop() == 0
    server = start_server(["--model-uri", str(path), "--format", "hf", "--max-model-len", "32"],
                          ready=False)
    try:
        assert server.proc.wait(60) == 1
    finally:
        server.stop()
    errors = [d["msg"] for d in server.logs() if d.get("level") == "error"]
    assert errors and "over the model's limit of 16 (sentence-transformers' max_seq_length)" \
        in errors[0], server.lines[-5:]


def test_a_cross_encoder_reads_do_lower_case(models: dict[str, Path], tmp_path: Path) -> None:
    """XLM-RoBERTa's tokenizer is cased: with sentence-transformers' do_lower_case each pair
    is lower-cased before it is joined, as vLLM does (it was scored as sent)."""
    path = tmp_path / "xlmr-lower"
    shutil.copytree(models["xlm-roberta"], path)
    (path / "sentence_bert_config.json").write_text(json.dumps({"do_lower_case": True}))
    want = reference_scores(models["xlm-roberta"], QUERY, DOCS[:3])
    assert reference_scores(models["xlm-roberta"], QUERY.upper(), [DOCS[0].upper()]) != \
        pytest.approx(want[:1], abs=1e-5)
    server = start_llm_server(path)
    try:
        got = ok(server, "/score", {"text_1": QUERY.upper(), "text_2": [d.upper()
                                                                         for d in DOCS[:3]]})
        assert [d["score"] for d in got["data"]] == pytest.approx(want, abs=1e-5)
    finally:
        assert server.stop() == 0


def test_truncation_keeps_an_encoders_special_tokens(models: dict[str, Path]) -> None:
    """truncate_prompt_tokens on an encoder embedding model cut the tokenized text from the
    left, special tokens included: 4 kept ``w w w [SEP]`` (no [CLS], which it pools), 1 kept
    ``[SEP]`` alone. Now, as vLLM's tokenizer call (truncation, max_length, from the left):
    [CLS], the text's last tokens, [SEP]; a cut to the 2 special tokens or fewer is a 400.
    Token ids sent are cut as they are (vLLM's)."""
    import torch
    import transformers

    path = models["bert-embed"]
    tok = transformers.AutoTokenizer.from_pretrained(str(path))
    model = transformers.AutoModel.from_pretrained(str(path)).eval()
    text = "the quick brown fox jumps over the lazy dog"
    full = tok(text)["input_ids"]
    server = start_llm_server(path)
    try:
        for keep in (3, 4, 7):
            got = ok(server, "/v1/embeddings", {"input": text, "truncate_prompt_tokens": keep,
                                                "normalize": False})
            ids = [full[0], *full[1:-1][-(keep - 2):], full[-1]]
            assert got["usage"]["prompt_tokens"] == keep
            with torch.inference_mode():
                want = model(torch.tensor([ids])).last_hidden_state[0, 0]
            torch.testing.assert_close(torch.tensor(got["data"][0]["embedding"]), want,
                                       rtol=1e-5, atol=1e-5)
        short = ok(server, "/v1/embeddings", {"input": "fox", "truncate_prompt_tokens": 3})
        assert short["usage"]["prompt_tokens"] == len(tok("fox")["input_ids"])
        for keep in (1, 2):
            status, body = server.post_json("/v1/embeddings", {
                "input": text, "truncate_prompt_tokens": keep})
            assert status == 400 and body["error"]["param"] == "truncate_prompt_tokens" and \
                "takes 2 special tokens" in body["error"]["message"], body
        raw = ok(server, "/v1/embeddings", {"input": full, "truncate_prompt_tokens": 1})
        assert raw["usage"]["prompt_tokens"] == 1
    finally:
        assert server.stop() == 0
