"""Writes chat_extra_cases.json: Harmony prompts rendered by Hugging Face transformers.

The chat template is the one stored in ../shared/fixtures/o200k/o200k_harmony-vocab.gguf (read
with gguf-py); transformers' `apply_chat_template` renders it with its own Jinja2 setup, with the
clock frozen at 2026-11-26 (the template prints the date). `ids_tiny` are the ids that the
tokenizer of ../shared/fixtures/gpt-oss-tiny/hf (Hugging Face `tokenizers`, cut o200k vocabulary)
gives the rendered text.

Run (any venv with transformers, jinja2, gguf):  python make_chat_cases.py FIXTURES_DIR OUT.json
"""

import datetime as _dt
import json
import sys

import gguf
import transformers
import transformers.utils.chat_template_utils as ctu
from transformers import AutoTokenizer

fixtures, out_path = sys.argv[1], sys.argv[2]


class FrozenDatetime(_dt.datetime):
    @classmethod
    def now(cls, tz=None):
        return cls(2026, 11, 26, 12, 0, 0)


ctu.datetime = FrozenDatetime

reader = gguf.GGUFReader(f"{fixtures}/o200k/o200k_harmony-vocab.gguf")
template = reader.fields["tokenizer.chat_template"].contents()
tok = AutoTokenizer.from_pretrained(f"{fixtures}/gpt-oss-tiny/hf")

weather_tool = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "City name, e.g. Paris"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
                "days": {"type": "integer", "description": "Forecast days", "default": 1},
                "tags": {"type": "array", "items": {"type": "string"}},
                "filters": {
                    "type": "object",
                    "properties": {"min": {"type": "number"}, "exact": {"type": "boolean"}},
                    "required": ["min"],
                },
                "when": {"type": ["string", "null"]},
            },
            "required": ["location"],
        },
    },
}
time_tool = {
    "type": "function",
    "function": {"name": "get_time", "description": "Current time", "parameters": {"type": "object", "properties": {}}},
}

cases = [
    {"name": "reasoning_low", "messages": [{"role": "user", "content": "Hi there"}], "kwargs": {"reasoning_effort": "low"}},
    {
        "name": "reasoning_high_system",
        "messages": [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Why is the sky blue?"}],
        "kwargs": {"reasoning_effort": "high"},
    },
    {
        "name": "developer_role_unicode",
        "messages": [
            {"role": "developer", "content": "Réponds en 日本語, s'il te plaît."},
            {"role": "user", "content": "Привет 👋 \"quoted\" \\ back"},
        ],
        "kwargs": {},
    },
    {
        "name": "tools",
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "kwargs": {"tools": [weather_tool, time_tool]},
    },
    {
        "name": "tool_call_round_trip",
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "thinking": "I should call get_weather.",
                "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"location": "Paris", "unit": "celsius", "note": "é\"x"}}}],
            },
            {"role": "tool", "content": "{\"temperature\": 21, \"sky\": \"clear\"}"},
        ],
        "kwargs": {"tools": [weather_tool]},
    },
    {
        "name": "builtin_tools_identity",
        "messages": [{"role": "user", "content": "Search the web for Rust news."}],
        "kwargs": {"builtin_tools": ["browser", "python"], "model_identity": "You are a helpful bot."},
    },
    {
        "name": "training_render_no_generation_prompt",
        "messages": [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "thinking": "Simple arithmetic.", "content": "4"},
        ],
        "kwargs": {"add_generation_prompt": False},
    },
    {
        "name": "multi_turn",
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello! How can I help?", "thinking": "dropped in history"},
            {"role": "user", "content": "Tell me a joke.\n\nA short one."},
        ],
        "kwargs": {"reasoning_effort": "medium"},
    },
]

for case in cases:
    kwargs = dict(case["kwargs"])
    add_generation_prompt = kwargs.pop("add_generation_prompt", True)
    rendered = tok.apply_chat_template(
        case["messages"], chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
    )
    case["add_generation_prompt"] = add_generation_prompt
    case["rendered"] = rendered
    case["ids_tiny"] = tok(rendered, add_special_tokens=False)["input_ids"]

with open(out_path, "w", encoding="utf-8") as f:
    json.dump(
        {"generator": f"transformers {transformers.__version__}, jinja2, date frozen at 2026-11-26", "cases": cases},
        f,
        ensure_ascii=False,
        indent=1,
    )
    f.write("\n")
