"""A reasoning model's ``<think>`` block, served: the reasoning comes apart from the content
(``reasoning_content`` and ``reasoning``), streamed as it is written; a template that opens
the block makes the output start inside it; tool calls are read after it; the Responses API
gives it as a reasoning item; a model whose template knows no ``</think>`` answers as
written. The random-weight model writes a block when a regex holds it to one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from . import llm_reference as ref
from .conftest import Server, start_llm_server, stream_events, with_chat_template
from .test_llm_responses import sse
from .tool_models import USER, WEATHER, check_weather

# Qwen3's way: earlier answers without their reasoning (or with it, when the message carries
# it); DeepSeek-R1's way with open_think: the generation prompt opens the block
TEMPLATE = (
    "{{ bos_token }}"
    "{% if reasoning_effort is defined %}<|system|>\neffort {{ reasoning_effort }}"
    "{{ eos_token }}\n{% endif %}"
    "{% for d in documents or [] %}<|system|>\n{{ d['title'] }}: {{ d['text'] }}"
    "{{ eos_token }}\n{% endfor %}"
    "{% for m in messages %}<|{{ m['role'] }}|>\n"
    "{% if m['role'] == 'assistant' %}"
    "{% if m.reasoning_content is defined %}<think>{{ m.reasoning_content }}</think>{% endif %}"
    "{{ m['content'].split('</think>')[-1].lstrip('\\n') }}"
    "{% else %}{{ m['content'] }}{% endif %}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n"
    "{% if open_think is defined and open_think %}<think>\n{% endif %}"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n"
    "{% endif %}{% endif %}"
)
THINK = "<think>[a-z ]{4,24}</think>\n\n(Paris|Oslo)\\."


@pytest.fixture(scope="module")
def server(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    model = with_chat_template(tiny_llama, tmp_path_factory.mktemp("think") / "tiny-llama",
                               TEMPLATE)
    server = start_llm_server(model, "--tool-call-parser", "hermes")  # reasoning: auto
    yield server
    assert server.stop() == 0


def chat(server: Server, **doc: Any) -> dict[str, Any]:
    status, body = server.post_json("/v1/chat/completions", {
        "messages": USER, "max_tokens": 64, "temperature": 1.0, "seed": 2, **doc})
    assert status == 200, body
    return body["choices"][0]  # type: ignore[no-any-return]


def streamed(server: Server, **doc: Any) -> tuple[str, str, list[dict[str, Any]]]:
    events = stream_events(server, "/v1/chat/completions", {
        "messages": USER, "max_tokens": 64, "temperature": 1.0, "seed": 2, "stream": True,
        **doc})
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    for d in deltas:
        assert d.get("reasoning_content") == d.get("reasoning")
    return ("".join(d.get("reasoning") or "" for d in deltas),
            "".join(d.get("content") or "" for d in deltas), deltas)


def test_the_think_block_is_the_reasoning(server: Server, client: openai.OpenAI) -> None:
    answer = chat(server, structured_outputs={"regex": THINK})
    message = answer["message"]
    assert message["content"] in ("Paris.", "Oslo.") and answer["finish_reason"] == "stop"
    assert message["reasoning_content"] == message["reasoning"]
    assert 4 <= len(message["reasoning"]) <= 24 and "<" not in message["reasoning"]
    reasoning, content, deltas = streamed(server, structured_outputs={"regex": THINK})
    assert (reasoning, content) == (message["reasoning"], message["content"])
    assert sum(1 for d in deltas if d.get("reasoning")) > 2  # token by token
    parsed = client.chat.completions.create(
        model="tiny", messages=USER, max_tokens=64, temperature=1.0, seed=2,  # type: ignore[arg-type]
        extra_body={"structured_outputs": {"regex": THINK}})
    assert parsed.choices[0].message.content == message["content"]
    assert (parsed.choices[0].message.model_extra or {})["reasoning_content"] == \
        message["reasoning"]


def test_a_template_that_opens_the_block(server: Server, tiny_llama: Path) -> None:
    """The output starts inside the block: cut off before any </think>, it is all reasoning."""
    answer = chat(server, chat_template_kwargs={"open_think": True}, temperature=0,
                  max_tokens=12)
    message = answer["message"]
    assert answer["finish_reason"] == "length" and message["content"] is None
    assert message["reasoning"] and answer  # the greedy text, as the model wrote it
    reasoning, content, _ = streamed(server, chat_template_kwargs={"open_think": True},
                                     temperature=0, max_tokens=12)
    assert (reasoning, content) == (message["reasoning"], "")
    # the history's reasoning reaches the template when the message carries it
    status, doc = server.post_json("/tokenize", {"messages": [
        *USER, {"role": "assistant", "content": "Oslo.", "reasoning_content": "cold"},
        *USER]})
    assert status == 200
    assert "<think>cold</think>Oslo." in ref.load(tiny_llama)[0].decode(doc["tokens"])


def test_tool_calls_are_read_after_the_reasoning(server: Server) -> None:
    regex = ('<think>[a-z ]{4,16}</think>\n<tool_call>\\{"name": "get_weather", "arguments": '
             '\\{"city": "(Paris|Lima)", "days": [1-7]\\}\\}</tool_call>')
    answer = chat(server, tools=[WEATHER], structured_outputs={"regex": regex}, max_tokens=200)
    assert answer["finish_reason"] == "tool_calls"
    message = answer["message"]
    assert message["content"] is None and message["reasoning"]
    (call,) = message["tool_calls"]
    check_weather(call["function"]["arguments"])
    reasoning, content, deltas = streamed(server, tools=[WEATHER], max_tokens=200,
                                          structured_outputs={"regex": regex})
    assert (reasoning, content) == (message["reasoning"], "")
    arguments = "".join(c["function"]["arguments"] for d in deltas
                        for c in d.get("tool_calls", []))
    assert arguments == call["function"]["arguments"]


def test_the_responses_api_gives_a_reasoning_item(server: Server, client: openai.OpenAI) -> None:
    doc = {"model": "tiny", "input": USER, "max_output_tokens": 64, "temperature": 1.0,
           "seed": 2, "structured_outputs": {"regex": THINK}}
    status, body = server.post_json("/v1/responses", doc)
    assert status == 200, body
    thought, said = body["output"]
    assert thought["type"] == "reasoning" and thought["id"].startswith("rs_")
    assert said["type"] == "message" and said["content"][0]["text"] in ("Paris.", "Oslo.")
    assert thought["content"][0]["text"] == chat(
        server, structured_outputs={"regex": THINK})["message"]["reasoning"]
    with client.responses.stream(model="tiny", input=USER, max_output_tokens=64,  # type: ignore[arg-type]
                                 temperature=1.0, extra_body={
                                     "seed": 2, "structured_outputs": {"regex": THINK}}
                                 ) as stream:
        pieces = [e.delta for e in stream if e.type == "response.reasoning_text.delta"]
        final = stream.get_final_response()
    assert "".join(pieces) == thought["content"][0]["text"]
    assert final.output_text == said["content"][0]["text"]


def test_a_response_all_reasoning_has_the_same_items_whole_and_streamed(server: Server) -> None:
    """A block never closed: all reasoning, nothing said; the response has its reasoning item
    only, whole as streamed (as vLLM's), no empty message beside it."""
    doc = {"model": "tiny", "input": USER, "max_output_tokens": 64, "temperature": 0,
           "structured_outputs": {"regex": "<think>[a-z ]{4,12}"}}
    status, body = server.post_json("/v1/responses", doc)
    assert status == 200, body
    assert [o["type"] for o in body["output"]] == ["reasoning"]
    events = sse(server, **{k: v for k, v in doc.items() if k not in ("model", "temperature")})
    final = events[-1]["response"]
    assert events[-1]["type"] == "response.completed"
    assert [(o["type"], o["content"]) for o in final["output"]] == \
        [(o["type"], o["content"]) for o in body["output"]]


def test_a_reasoning_responses_logprobs_come_whole_and_streamed(server: Server) -> None:
    """include logprobs with a reasoning model: the message's logprobs, the thinking's tokens
    among them (as the chat's), whole as streamed (streamed, there were none)."""
    doc = {"input": USER, "max_output_tokens": 64, "temperature": 1.0, "seed": 2,
           "structured_outputs": {"regex": THINK}, "include": ["message.output_text.logprobs"]}
    status, body = server.post_json("/v1/responses", {"model": "tiny", **doc})
    assert status == 200, body
    whole = body["output"][-1]["content"][0]["logprobs"]
    assert whole and len(whole) == body["usage"]["output_tokens"]
    events = sse(server, **doc)
    streamed = [lp for e in events if e["type"] == "response.output_text.delta"
                for lp in e["logprobs"]]
    assert [lp["token"] for lp in streamed] == [lp["token"] for lp in whole]
    (done,) = [e for e in events if e["type"] == "response.output_text.done"]
    assert [lp["token"] for lp in done["logprobs"]] == [lp["token"] for lp in whole]


def test_a_responses_output_sent_back_as_input(server: Server) -> None:
    """The stateless way to go on (OpenAI's and its clients'): the answer's output items,
    its reasoning item first, sent back in the next input; the reasoning reaches the template
    as the chat's reasoning_content does."""
    doc = {"model": "tiny", "input": USER, "max_output_tokens": 64, "temperature": 1.0,
           "seed": 2, "structured_outputs": {"regex": THINK}}
    status, body = server.post_json("/v1/responses", doc)
    assert status == 200, body
    thought, said = body["output"]
    again = [*USER, *body["output"], {"role": "user", "content": "and tomorrow"}]
    status, body = server.post_json("/v1/responses", {
        "model": "tiny", "input": again, "max_output_tokens": 4})
    assert status == 200, body
    status, same = server.post_json("/v1/chat/completions", {"max_tokens": 4, "messages": [
        *USER, {"role": "assistant", "content": said["content"][0]["text"],
                "reasoning_content": thought["content"][0]["text"]},
        {"role": "user", "content": "and tomorrow"}]})
    assert status == 200, same
    assert body["usage"]["input_tokens"] == same["usage"]["prompt_tokens"]
    status, body = server.post_json("/v1/responses", {"model": "tiny", "max_output_tokens": 4,
                                                      "input": [*USER, {**thought, "content": [
                                                          {"type": "input_image"}]}]})
    assert status == 400 and body["error"]["param"] == "input[1].content", body


def test_a_stateless_client_asking_for_encrypted_reasoning(server: Server) -> None:
    """The Codex CLI's way (store false, include reasoning.encrypted_content, reasoning.summary
    "auto"): accepted and ignored, as vLLM does (each was a 400): the reasoning item has its
    text (its summary empty), whole and streamed,
    and the output sent back as it came (encrypted_content null) goes on."""
    doc = {"input": USER, "max_output_tokens": 64, "temperature": 1.0, "seed": 2,
           "structured_outputs": {"regex": THINK}, "store": False,
           "include": ["reasoning.encrypted_content"],
           "reasoning": {"effort": "medium", "summary": "auto"}}  # (Codex sends both)
    status, body = server.post_json("/v1/responses", {"model": "tiny", **doc})
    assert status == 200, body
    assert body["reasoning"] == {"effort": "medium", "summary": "auto"}
    thought, said = body["output"]
    assert thought["type"] == "reasoning" and thought["content"][0]["text"]
    assert not thought.get("encrypted_content") and thought["summary"] == []
    final = sse(server, **doc)[-1]["response"]
    assert [o["content"] for o in final["output"]] == [thought["content"], said["content"]]
    again = [*USER, {**thought, "encrypted_content": None}, said,
             {"role": "user", "content": "and tomorrow"}]
    status, body = server.post_json("/v1/responses", {
        "model": "tiny", "input": again, "max_output_tokens": 4, "store": False,
        "include": ["reasoning.encrypted_content"], "reasoning": doc["reasoning"]})
    assert status == 200, body


def test_a_model_without_think_blocks_answers_as_written(tiny_llama: Path) -> None:
    server = start_llm_server(tiny_llama)  # its template knows no </think>: auto is none
    try:
        status, body = server.post_json("/v1/chat/completions", {
            "messages": USER, "max_tokens": 64, "structured_outputs": {"regex": THINK}})
        assert status == 200, body
        message = body["choices"][0]["message"]
        assert message["content"].startswith("<think>") and "reasoning" not in message
    finally:
        assert server.stop() == 0
