"""``--chat-template``: the server's own chat template in place of the tokenizer's, as vLLM's
flag takes it (a file beside the weights, or the template itself), the tool-call parser chosen
from it, and a template that cannot render stopping the server with one clear line."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from kubemaas_runtime.errors import StartupError
from kubemaas_runtime.llm.chat_template import read_chat_template

from .conftest import Server, start_llm_server, start_server
from .tool_models import WEATHER

# Llama 3.2's pythonic way, cut down: earlier calls written as a list of name(key=value)
PYTHONIC = (
    "{{ bos_token }}PYTHONIC{% if tools %} tools: {{ tools | map(attribute='function.name') "
    "| join(',') }}{% endif %}\n"
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] or '' }}"
    "{% if m.get('tool_calls') %}{{- '[' }}{% for call in m['tool_calls'] %}"
    "{{- call.function.name + '(' -}}{% for k, v in call.function.arguments.items() %}"
    "{{ k }}={{ v | tojson }}{% if not loop.last %}, {% endif %}{% endfor %})"
    "{% if not loop.last %}, {% endif %}{% endfor %}]{% endif %}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def ready_line(server: Server) -> dict[str, Any]:
    deadline = time.monotonic() + 10  # the line follows /health's first 200 closely
    while time.monotonic() < deadline:
        ready = [d for d in server.logs() if d.get("msg") == "ready"]
        if ready:
            return ready[0]
        time.sleep(0.05)
    raise AssertionError(server.lines[-5:])


def rendered(server: Server, messages: list[dict[str, Any]], **doc: Any) -> str:
    status, ids = server.post_json("/tokenize", {"messages": messages, **doc})
    assert status == 200, ids
    status, text = server.post_json("/detokenize", {"tokens": ids["tokens"]})
    assert status == 200, text
    return str(text["prompt"])


def test_a_template_file_beside_the_weights(tiny_llama: Path, tmp_path: Path) -> None:
    """A relative path is found in the model directory; chats render through that template,
    and --tool-call-parser auto reads the calls in the form it writes (pythonic here)."""
    model = tmp_path / "model"
    shutil.copytree(tiny_llama, model)
    (model / "tools.jinja").write_text(PYTHONIC)
    server = start_llm_server(model, "--chat-template", "tools.jinja")
    try:
        line = ready_line(server)
        assert (line["chat_template"], line["tool_call_parser"]) == ("--chat-template",
                                                                    "pythonic")
        earlier = [{"role": "user", "content": "weather"},
                   {"role": "assistant", "content": None, "tool_calls": [{
                       "id": "c1", "type": "function", "function": {
                           "name": "get_weather", "arguments": '{"city": "Oslo", "days": 3}'}}]},
                   {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
        text = rendered(server, earlier, tools=[WEATHER])
        assert "PYTHONIC tools: get_weather" in text
        assert '[get_weather(city="Oslo", days=3)]' in text and text.endswith("<|assistant|>\n")
        status, doc = server.post_json("/v1/chat/completions", {
            "messages": earlier[:1], "tools": [WEATHER], "max_tokens": 40, "temperature": 0,
            "structured_outputs": {"regex": r'\[get_weather\(city="Lima", days=2\)\]'}})
        assert status == 200, doc
        (call,) = doc["choices"][0]["message"]["tool_calls"]
        assert call["function"] == {"name": "get_weather",
                                    "arguments": '{"city": "Lima", "days": 2}'}
    finally:
        assert server.stop() == 0


def test_the_template_given_inline(tiny_llama: Path) -> None:
    server = start_llm_server(tiny_llama, "--chat-template",
                              "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n"
                              "{% endfor %}{% if add_generation_prompt %}[bot] {% endif %}")
    try:
        assert rendered(server, [{"role": "user", "content": "the lazy dog"}]) == \
            "[user] the lazy dog\n[bot] "
        assert ready_line(server)["tool_call_parser"] == "none"  # it writes no calls
    finally:
        assert server.stop() == 0


def test_a_template_that_cannot_render_stops_the_server(tiny_llama: Path) -> None:
    server = start_server(["--model-uri", str(tiny_llama), "--format", "hf", "--chat-template",
                           "{% for m in messages %}{{ m.content | nosuchfilter }}{% endfor %}"],
                          ready=False)
    assert server.proc.wait(120) == 1
    server.stop()
    errors = [d["msg"] for d in server.logs() if d.get("level") == "error"]
    assert errors and "cannot render a chat" in errors[0] and "nosuchfilter" in errors[0], \
        server.lines[-5:]


def test_where_a_template_is_looked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    model, work = tmp_path / "model", tmp_path / "work"
    model.mkdir()
    work.mkdir()
    (model / "a.jinja").write_text("model's")
    (work / "a.jinja").write_text("working directory's")
    (work / "b.jinja").write_text("only here")
    monkeypatch.chdir(work)
    assert read_chat_template(None, model) is None and read_chat_template("", model) is None
    assert read_chat_template("a.jinja", model) == "model's"  # the model directory first
    assert read_chat_template("b.jinja", model) == "only here"
    assert read_chat_template(str(work / "a.jinja"), model) == "working directory's"
    assert read_chat_template("{{ messages }}", model) == "{{ messages }}"  # inline
    with pytest.raises(StartupError, match="neither a template nor a file"):
        read_chat_template("missing.jinja", model)


def test_a_template_that_refuses_system_names_the_developer_message(tiny_llama: Path) -> None:
    """A developer message reaches the template as a system one; when the template refuses
    that (Gemma's: 'System role not supported'), the 400 says so, naming the role sent."""
    server = start_llm_server(
        tiny_llama, "--chat-template",
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}"
        "[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}")
    try:
        chat = [{"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi"}]
        for path, doc in (("/v1/chat/completions", {"messages": chat, "max_tokens": 2}),
                          ("/tokenize", {"messages": chat})):
            status, answer = server.post_json(path, doc)
            message = answer["error"]["message"]
            assert status == 400 and "System role not supported" in message, answer
            assert "'developer'" in message, answer
        status, answer = server.post_json("/v1/chat/completions", {
            "messages": [{"role": "system", "content": "x"}, *chat[1:]], "max_tokens": 2})
        assert status == 400 and "developer" not in answer["error"]["message"], answer
    finally:
        assert server.stop() == 0
