"""Chat templates: Jinja2 in the Hugging Face convention, taken from the GGUF or a Modelfile TEMPLATE.

Rendered here rather than inside llama.cpp so that ember can count the prompt's tokens before it decides what
fits in the context window, and so that a Modelfile can override the template.
"""

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ember.core.errors import BadRequest

# Used when neither the GGUF nor the Modelfile carries a template.
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _raise(message: str) -> None:
    raise jinja2.TemplateError(message)


@lru_cache(maxsize=64)
def compile_template(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda v, indent=None, ensure_ascii=False: json.dumps(
        v, indent=indent, ensure_ascii=ensure_ascii)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise BadRequest(f"chat template line {e.lineno}: {e.message}") from None


_PROBE_TOOL = {"type": "function", "function": {
    "name": "ember_probe_tool", "description": "ember checks whether the template shows tools to the model",
    "parameters": {"type": "object", "properties": {"ember_probe_argument": {"type": "string"}}}}}


@lru_cache(maxsize=64)
def renders_tools(source: str) -> bool:
    """Whether the template shows the model the tools it is given: rendered with a probe tool, not searched for a word
    (a template may mention "tools" in a comment, or loop over them under another name)."""
    try:
        text = render(source, [{"role": "user", "content": "hi"}], tools=[_PROBE_TOOL])
    except BadRequest:
        return False
    return "ember_probe_tool" in text


def render(source: str, messages: list[dict[str, Any]], *, bos_token: str = "", eos_token: str = "",
           tools: list[dict[str, Any]] | None = None, add_generation_prompt: bool = True) -> str:
    try:
        return compile_template(source).render(
            messages=messages, tools=tools or None, add_generation_prompt=add_generation_prompt,
            bos_token=bos_token, eos_token=eos_token,
        )
    except jinja2.TemplateError as e:
        raise BadRequest(f"the model's chat template refused these messages: {e}") from None
