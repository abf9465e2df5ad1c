"""What the tool-calling tests share: a Hermes-style chat template, two tools, a question."""

from __future__ import annotations

import json

# a Hermes-style template: the tools, earlier calls and tool answers written into the prompt
TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools %}<|system|>\n<tools>{{ tools | tojson }}</tools>{{ eos_token }}\n{% endif %}"
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
    "{% for call in m.get('tool_calls', []) %}<tool_call>{{ call['function'] | tojson }}"
    "</tool_call>{% endfor %}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"enum": ["Paris", "Oslo", "Lima"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["city", "days"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {
        "zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"], "additionalProperties": False}}}
USER = [{"role": "user", "content": "what is the weather in the city"}]


def check_weather(arguments: str) -> None:
    args = json.loads(arguments)
    assert args["city"] in ("Paris", "Oslo", "Lima") and 1 <= args["days"] <= 7
    assert set(args) == {"city", "days"}
