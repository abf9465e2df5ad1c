"""LoRA adapters served by the runtime (vLLM's --enable-lora surface): each adapter is a model
in /v1/models; requests of the base model and of adapters, concurrent and sharing prompts (and
so prefix-cache blocks), each get the greedy answer PEFT's model gives; the metrics name the
adapters running; adapters load and unload while serving; an adapter that cannot be served
stops the server with the reason."""

from __future__ import annotations

import http.client
import json
import math
import re
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.runtime.test_llm_bad_input import assert_openai_error, json_values, post
from tests.unit.test_llm_lora import make_adapter

from . import llm_reference as ref
from .conftest import Server, start_llm_server, start_server

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPTS = ["Once upon a time", "the lazy dog", "birds sing in the"]


@pytest.fixture(scope="module")
def adapters(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Adapter name -> its PEFT model (the reference), each saved under adapters/<name>."""
    _, base = ref.load(tiny_llama)
    root = tmp_path_factory.mktemp("adapters")
    return {"sql": make_adapter(base, root / "sql", seed=1, r=4, lora_alpha=8,
                                target_modules=["q_proj", "v_proj"]),
            "chat": make_adapter(base, root / "chat", seed=2, r=8, lora_alpha=16,
                                 target_modules=TARGETS),
            "extra": make_adapter(base, root / "extra", seed=3, r=2,
                                  target_modules=["o_proj", "down_proj"]),
            "extra2": make_adapter(base, root / "extra2", seed=4, r=2,
                                   target_modules=["up_proj"]),
            "root": root}


@pytest.fixture(scope="module")
def server(tiny_llama: Path, adapters: dict[str, Any]) -> Iterator[Server]:
    root = adapters["root"]
    server = start_llm_server(tiny_llama, "--enable-lora", "--lora-modules",
                              f"sql={root / 'sql'}", f"chat={root / 'chat'}",
                              "--max-loras", "1", "--max-lora-rank", "8",
                              "--allow-runtime-lora-updating")
    yield server
    assert server.stop() == 0


def greedy(model: Any, tiny_llama: Path, prompt: list[int], max_new: int) -> list[int]:
    tok, _ = ref.load(tiny_llama)
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=max_new, do_sample=False,
                             eos_token_id=tok.eos_token_id)
    return [int(t) for t in out[0, len(prompt):]]


def reference(name: str, adapters: dict[str, Any], tiny_llama: Path, prompt: list[int],
              max_new: int) -> list[int]:
    if name == "tiny":
        return ref.greedy_ids(tiny_llama, prompt, max_new)
    return greedy(adapters[name], tiny_llama, prompt, max_new)


def complete(server: Server, model: str, prompt: list[int], max_tokens: int) -> dict[str, Any]:
    status, doc = server.post_json("/v1/completions", {
        "model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
        "return_token_ids": True})
    assert status == 200, doc
    return doc  # type: ignore[no-any-return]


def test_the_adapters_are_models_of_their_own(server: Server, adapters: dict[str, Any],
                                              tiny_llama: Path) -> None:
    status, doc = server.get_json("/v1/models")
    assert status == 200
    cards = {card["id"]: card for card in doc["data"]}
    assert sorted(cards) == ["chat", "sql", "tiny"]
    assert cards["sql"]["parent"] == "tiny" and cards["sql"]["root"] == str(
        adapters["root"] / "sql")
    # vLLM's base card: its root the model it was started with, no parent
    assert cards["tiny"]["root"] == str(tiny_llama) and cards["tiny"]["parent"] is None
    assert server.get_json("/v1/models/chat") == (200, cards["chat"])
    status, doc = server.post_json("/v1/completions", {"model": "nope", "prompt": "a"})
    assert status == 404 and "'chat', 'sql'" in doc["error"]["message"]


def test_concurrent_requests_each_get_their_models_answer(
        server: Server, adapters: dict[str, Any], tiny_llama: Path) -> None:
    """Base and adapter requests side by side; --max-loras 1 makes the adapters take turns."""
    jobs = [(model, ref.prompt_ids(tiny_llama, text), 8 + 3 * i)
            for i, text in enumerate(PROMPTS) for model in ("tiny", "sql", "chat")] * 2
    with ThreadPoolExecutor(len(jobs)) as pool:
        docs = list(pool.map(lambda job: complete(server, *job), jobs))
    answers: dict[str, set[tuple[int, ...]]] = {}
    for (model, prompt, max_new), doc in zip(jobs, docs, strict=True):
        assert doc["model"] == model
        got = doc["choices"][0]["token_ids"]
        assert got == reference(model, adapters, tiny_llama, prompt, max_new), (model, prompt)
        answers.setdefault(str(prompt), set()).add(tuple(got))
    assert all(len(found) == 3 for found in answers.values())  # each model answers its own


def test_a_streamed_chat_of_an_adapter(server: Server, client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "the lazy dog"}]
    whole = client.chat.completions.create(model="chat", messages=messages,  # type: ignore
                                           max_tokens=10, temperature=0)
    chunks = client.chat.completions.create(model="chat", messages=messages,  # type: ignore
                                            max_tokens=10, temperature=0, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert whole.model == "chat" and text == whole.choices[0].message.content
    base = client.chat.completions.create(model="tiny", messages=messages,  # type: ignore
                                          max_tokens=10, temperature=0)
    assert base.choices[0].message.content != text


def test_a_beam_search_of_an_adapter(server: Server, adapters: dict[str, Any],
                                     tiny_llama: Path) -> None:
    prompt = ref.prompt_ids(tiny_llama, "the lazy dog")
    want = ref.beam_search(tiny_llama, prompt, 3, 10, model=adapters["chat"])
    status, doc = server.post_json("/v1/completions", {
        "model": "chat", "prompt": prompt, "max_tokens": 10, "n": 3, "use_beam_search": True,
        "return_token_ids": True})
    assert status == 200, doc
    assert [c["token_ids"] for c in doc["choices"]] == [tokens for tokens, _ in want]


def lora_info(server: Server) -> dict[str, str]:
    line = next(x for x in server.metrics().splitlines()
                if x.startswith("vllm:lora_requests_info{"))
    labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
    assert abs(float(line.rsplit(" ", 1)[1]) - time.time()) < 60  # the time of the reading
    return labels


def test_the_metrics_name_the_adapters_running(server: Server, tiny_llama: Path) -> None:
    assert lora_info(server) == {"max_lora": "1", "running_lora_adapters": "",
                                 "waiting_lora_adapters": ""}
    assert server.port is not None
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:  # a long stream of sql: read its first event, scrape, then go away
        conn.request("POST", "/v1/completions", json.dumps({
            "model": "sql", "prompt": "Once", "max_tokens": 400, "ignore_eos": True,
            "stream": True}), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.readline().startswith(b"data: ")
        assert lora_info(server)["running_lora_adapters"] == "sql"
    finally:
        conn.close()
    deadline = time.monotonic() + 10
    while lora_info(server)["running_lora_adapters"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lora_info(server)["running_lora_adapters"] == ""


def test_adapters_load_and_unload_while_serving(server: Server, adapters: dict[str, Any],
                                                tiny_llama: Path) -> None:
    root, prompt = adapters["root"], ref.prompt_ids(tiny_llama, "birds sing in the")

    def load(doc: dict[str, Any]) -> tuple[int, str]:
        status, _, body = server.request("POST", "/v1/load_lora_adapter",
                                         json.dumps(doc).encode(),
                                         {"Content-Type": "application/json"})
        return status, body.decode()

    assert load({"lora_name": "extra", "lora_path": str(root / "extra")}) == (
        200, "Success: LoRA adapter 'extra' added successfully.")
    assert complete(server, "extra", prompt, 12)["choices"][0]["token_ids"] == \
        reference("extra", adapters, tiny_llama, prompt, 12)
    status, body = load({"lora_name": "extra", "lora_path": str(root / "extra2")})
    assert status == 400 and "already been loaded" in body
    assert load({"lora_name": "extra", "lora_path": str(root / "extra2"),
                 "load_inplace": True})[0] == 200  # replaced: the new weights answer
    assert complete(server, "extra", prompt, 12)["choices"][0]["token_ids"] == \
        reference("extra2", adapters, tiny_llama, prompt, 12)
    assert [c["id"] for c in server.get_json("/v1/models")[1]["data"]] == [
        "tiny", "sql", "chat", "extra"]

    status, _, body = server.request("POST", "/v1/unload_lora_adapter",
                                     json.dumps({"lora_name": "extra"}).encode())
    assert (status, body.decode()) == (200, "Success: LoRA adapter 'extra' removed successfully.")
    status, doc = server.post_json("/v1/completions", {"model": "extra", "prompt": prompt})
    assert status == 404 and doc["error"]["code"] == "model_not_found"
    status, doc = server.post_json("/v1/unload_lora_adapter", {"lora_name": "extra"})
    assert status == 404 and "cannot be found" in doc["error"]["message"]

    for bad, words in [({"lora_name": "x"}, "Both 'lora_name' and 'lora_path'"),
                       ({"lora_name": "x", "lora_path": str(root / "none")}, "not found"),
                       ({"lora_name": "x", "lora_path": str(tiny_llama)}, "no adapter_config"),
                       ({"lora_name": "a b", "lora_path": str(root / "sql")}, "must match"),
                       ({"lora_name": "tiny", "lora_path": str(root / "sql")}, "base model")]:
        status, body = load(bad)
        assert status == 400 and words in json.loads(body)["error"]["message"], (bad, body)
    assert server.request("GET", "/v1/load_lora_adapter")[0] == 405
    assert complete(server, "sql", prompt, 6)["model"] == "sql"  # still serving


def load_adapter(server: Server, doc: dict[str, Any]) -> int:
    return server.request("POST", "/v1/load_lora_adapter", json.dumps(doc).encode(),
                          {"Content-Type": "application/json"})[0]


def unload_adapter(server: Server, name: str) -> int:
    return server.request("POST", "/v1/unload_lora_adapter",
                          json.dumps({"lora_name": name}).encode(),
                          {"Content-Type": "application/json"})[0]


def test_a_beam_search_outlives_its_adapters_unload(server: Server, adapters: dict[str, Any],
                                                    tiny_llama: Path) -> None:
    """A beam search submits a request per step: an unload or an in-place replacement of its
    adapter while it runs lets it finish on the weights it started with, as a single request
    does (it failed with a 500: the next step's request named an unloaded adapter)."""
    root, prompt = adapters["root"], ref.prompt_ids(tiny_llama, "the lazy dog")
    # ignore_eos: every search runs its 400 steps (one that met EOS early on an unloaded
    # machine ended before the change it was to outlive)
    doc = {"model": "beam", "prompt": prompt, "max_tokens": 400, "n": 4,
           "use_beam_search": True, "return_token_ids": True, "ignore_eos": True}
    assert load_adapter(server, {"lora_name": "beam", "lora_path": str(root / "extra")}) == 200
    status, alone = server.post_json("/v1/completions", doc)
    assert status == 200, alone
    for change in ({"lora_name": "beam", "lora_path": str(root / "extra2"), "load_inplace": True},
                   None):
        with ThreadPoolExecutor(1) as pool:
            started = time.monotonic()
            search = pool.submit(server.post_json, "/v1/completions", doc)
            time.sleep(0.3)  # the search is under way (it takes seconds)
            assert not search.done(), f"the search ended in {time.monotonic() - started:.2f} s"
            if change is not None:  # replaced by other weights while it runs
                assert load_adapter(server, change) == 200
            else:  # the replacement unloaded while it runs
                assert unload_adapter(server, "beam") == 200
            status, got = search.result()
        assert status == 200, got
        if change is not None:
            assert got["choices"] == alone["choices"]  # the old weights' answer
            status, alone = server.post_json("/v1/completions", doc)  # the new weights' own
            assert status == 200, alone
        else:
            assert got["choices"] == alone["choices"]


def filled_adapter(source: Path, out: Path, value: float, **config: Any) -> Path:
    """A copy of an adapter whose every weight is ``value``, its config changed by ``config``."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, out)
    weights = out / "adapter_model.safetensors"
    save_file({k: torch.full_like(v, value) for k, v in load_file(weights).items()}, weights)
    doc = json.loads((out / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps({**doc, **config}))
    return out


def test_adapters_that_hold_no_number_are_refused_at_load(server: Server,
                                                          adapters: dict[str, Any],
                                                          tmp_path: Path) -> None:
    source = adapters["root"] / "sql"
    for name, path, words in [
            ("nanw", filled_adapter(source, tmp_path / "w", float("nan")), "NaN or infinity"),
            ("infw", filled_adapter(source, tmp_path / "i", float("inf")), "NaN or infinity"),
            ("nana", filled_adapter(source, tmp_path / "a", 0.01, lora_alpha=float("nan")),
             "lora_alpha must be a finite number"),
            ("pat", filled_adapter(source, tmp_path / "p", 0.01,
                                   alpha_pattern={".*": float("inf")}), "is inf")]:
        status, _, body = server.request(
            "POST", "/v1/load_lora_adapter",
            json.dumps({"lora_name": name, "lora_path": str(path)}).encode(),
            {"Content-Type": "application/json"})
        assert status == 400 and words in json.loads(body)["error"]["message"], (name, body)
    assert [c["id"] for c in server.get_json("/v1/models")[1]["data"]] == ["tiny", "sql", "chat"]


def test_a_nan_adapter_fails_alone_and_leaves_no_trace(server: Server, adapters: dict[str, Any],
                                                       tiny_llama: Path, tmp_path: Path) -> None:
    """An adapter whose weights make NaN (finite, but so large that its layers overflow): its
    requests fail with a 500 that says so, and the KV blocks they held, given to a base-model
    request next, do not change its answer (their NaNs reached later requests before:
    attention weighs a slot past a row's length by 0, and 0 x NaN is NaN)."""
    path = filled_adapter(adapters["root"] / "sql", tmp_path / "nan", 1e30)
    assert load_adapter(server, {"lora_name": "nan", "lora_path": str(path)}) == 200
    try:
        for extra in ({"n": 2}, {"n": 2, "use_beam_search": True}, {"logprobs": 2}):
            status, doc = server.post_json("/v1/completions", {
                "model": "nan", "prompt": "hello there", "max_tokens": 5, "temperature": 0,
                **extra})
            assert status == 500 and "not a number" in doc["error"]["message"], (extra, doc)
    finally:
        assert unload_adapter(server, "nan") == 200
    for text in ("what a lovely day", "hello there my friend"):
        prompt = ref.prompt_ids(tiny_llama, text)
        status, doc = server.post_json("/v1/completions", {
            "prompt": prompt, "max_tokens": 40, "temperature": 0, "logprobs": 1,
            "return_token_ids": True})
        assert status == 200, doc
        choice = doc["choices"][0]
        assert choice["token_ids"] == ref.greedy_ids(tiny_llama, prompt, 40)
        assert all(math.isfinite(v) for v in choice["logprobs"]["token_logprobs"])


# lora_path: local paths only (a URI would be fetched: tests reach nothing off this machine)
lora_docs = st.fixed_dictionaries({}, optional={
    "lora_name": st.sampled_from(["f1", "sql", "tiny", "a b", ""]) | json_values,
    "lora_path": st.sampled_from(["sql", "chat", "none", "", "/nonexistent"]) | json_values,
    "load_inplace": st.booleans() | json_values})


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.sampled_from(["/v1/load_lora_adapter", "/v1/unload_lora_adapter"]), lora_docs)
def test_fuzz_the_lora_routes_no_5xx(server: Server, adapters: dict[str, Any], path: str,
                                     doc: dict[str, Any]) -> None:
    if isinstance(doc.get("lora_path"), str) and doc["lora_path"] in ("sql", "chat", "none"):
        doc = {**doc, "lora_path": str(adapters["root"] / doc["lora_path"])}
    if doc.get("lora_name") == "sql":
        doc = {**doc, "load_inplace": False}  # keep the fixture's adapter
        if path.endswith("unload_lora_adapter"):
            return
    try:
        raw = json.dumps(doc).encode()
    except ValueError:
        return
    status, _, body = post(server, path, raw)
    assert status < 500, body
    if status != 200:
        assert_openai_error(status, body, status)
    server.post_json("/v1/unload_lora_adapter", {"lora_name": "f1"})  # as it was


def test_without_runtime_updating_the_routes_are_not_served(tiny_llama: Path,
                                                            adapters: dict[str, Any]) -> None:
    server = start_llm_server(tiny_llama, "--lora-modules", f"sql={adapters['root'] / 'sql'}")
    try:
        status, doc = server.post_json("/v1/load_lora_adapter", {
            "lora_name": "x", "lora_path": str(adapters["root"] / "chat")})
        assert status == 404, doc
        ready = server.ready_log()
        assert ready["lora_adapters"] == ["sql"]
    finally:
        assert server.stop() == 0


def test_an_adapter_that_cannot_be_served_stops_the_server(tiny_llama: Path,
                                                           adapters: dict[str, Any]) -> None:
    server = start_server(["--model-uri", str(tiny_llama), "--format", "hf", "--lora-modules",
                           f"chat={adapters['root'] / 'chat'}", "--max-lora-rank", "4"],
                          ready=False)
    assert server.proc.wait(120) == 1
    server.stop()
    errors = [d["msg"] for d in server.logs() if d.get("level") == "error"]
    assert errors and "LoRA adapter 'chat'" in errors[0] and \
        "rank 8 is over --max-lora-rank 4" in errors[0], server.lines[-5:]


def test_an_unloaded_adapter_s_weights_go_while_the_engine_is_idle(
        tiny_llama: Path, adapters: dict[str, Any]) -> None:
    """The engine freed an unloaded adapter's weights after its next step only: on an idle
    server (a LoRA syncer cycling adapters, no traffic) every unloaded or replaced adapter
    stayed in memory until some request came."""
    import asyncio

    from kubemaas_runtime.llm.engine import Engine, EngineConfig
    from kubemaas_runtime.llm.loader import load_hf
    from kubemaas_runtime.llm.lora import LoraSet

    lm = load_hf(tiny_llama, device="cpu")
    lm.loras = loras = LoraSet(lm.model, max_loras=1, max_rank=8)
    engine = Engine(lm, EngineConfig(kv_cache_bytes=8 << 20, max_model_len=256))
    loop = asyncio.new_event_loop()
    engine.start(loop)
    try:
        adapter = loras.read("x", adapters["root"] / "chat")
        loras.add(adapter)
        time.sleep(0.2)  # the engine waits for work
        loras.remove("x")
        deadline = time.monotonic() + 5
        while loras.present(adapter.id) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not loras.present(adapter.id) and not loras.retired
        assert not any(adapter.id in layer.pairs for layer in loras.layers.values())
    finally:
        engine.stop()
        loop.close()
