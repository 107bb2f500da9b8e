"""The Modelfile: Ollama's recipe format (FROM, PARAMETER, TEMPLATE, SYSTEM, ADAPTER, LICENSE, MESSAGE).

Every error names the line it was found on.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ember.core.errors import BadRequest
from ember.core.options import OPTION_NAMES, PRESETS, parse_options
from ember.core.templates import compile_template

INSTRUCTIONS = ("FROM", "PARAMETER", "TEMPLATE", "SYSTEM", "ADAPTER", "LICENSE", "MESSAGE")
ROLES = ("system", "user", "assistant")


class ModelfileError(BadRequest):
    def __init__(self, line: int, message: str):
        super().__init__(f"Modelfile line {line}: {message}")


@dataclass
class ModelfileSpec:
    from_: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    template: str | None = None
    system: str | None = None
    license: str | None = None
    adapters: list[str] = field(default_factory=list)
    messages: list[tuple[str, str]] = field(default_factory=list)


def _unquote(value: str, line: int) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    if value.startswith('"'):
        raise ModelfileError(line, 'a quoted value has no closing "')
    return value


def _instructions(text: str):
    """Yield (line number, keyword, value) with multi-line \"\"\" values joined."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        number, line = i + 1, lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        if "\t" in keyword:
            keyword, _, more = keyword.partition("\t")
            rest = f"{more} {rest}".strip()
        keyword, rest = keyword.upper(), rest.strip()
        if keyword not in INSTRUCTIONS:
            raise ModelfileError(number, f"unknown instruction {keyword!r}; expected one of {', '.join(INSTRUCTIONS)}")
        head, quote, body = rest.partition('"""')
        if quote:
            parts = [body]
            while '"""' not in parts[-1]:
                if i >= len(lines):
                    raise ModelfileError(number, 'a """ value is never closed')
                parts.append(lines[i])
                i += 1
            joined = "\n".join(parts)
            value, _, after = joined.partition('"""')
            if after.strip():
                raise ModelfileError(number, f'unexpected text after the closing """: {after.strip()!r}')
            rest = head + value
        elif not rest:
            raise ModelfileError(number, f"{keyword} needs a value")
        yield number, keyword, rest, bool(quote)


def _path_like(value: str) -> bool:
    return "/" in value or value.startswith((".", "~")) or value.lower().endswith(".gguf")


def _resolve(value: str, base_dir: Path, line: int, what: str) -> str:
    path = (base_dir / Path(value).expanduser()).resolve()
    if not path.is_file():
        raise ModelfileError(line, f"{what} file {value!r} not found (looked at {path})")
    return str(path)


def parse_modelfile(text: str, base_dir: Path) -> ModelfileSpec:
    spec = ModelfileSpec()
    from_line = 0
    licenses: list[str] = []
    for line, keyword, value, was_block in _instructions(text):
        if keyword == "FROM":
            if from_line:
                raise ModelfileError(line, f"FROM appears twice (first on line {from_line})")
            from_line = line
            spec.from_ = _resolve(value, base_dir, line, "model") if _path_like(value) else value
        elif keyword == "PARAMETER":
            _parameter(spec.parameters, value, line)
        elif keyword == "TEMPLATE":
            try:
                compile_template(value)
            except BadRequest as e:
                raise ModelfileError(line, f"TEMPLATE is not a valid Jinja2 template: {e.message}") from None
            spec.template = value
        elif keyword == "SYSTEM":
            spec.system = value if was_block else _unquote(value, line)
        elif keyword == "ADAPTER":
            spec.adapters.append(_resolve(_unquote(value, line), base_dir, line, "adapter"))
        elif keyword == "LICENSE":
            licenses.append(value if was_block else _unquote(value, line))
        elif keyword == "MESSAGE":
            role, _, content = value.partition(" ")
            if role.lower() not in ROLES:
                raise ModelfileError(line, f"MESSAGE role {role!r} must be one of {', '.join(ROLES)}")
            spec.messages.append((role.lower(), content.strip() if was_block else _unquote(content.strip(), line)))
    if not from_line:
        raise ModelfileError(1, "no FROM instruction: a Modelfile must say which model it builds on (FROM smollm2)")
    spec.license = "\n\n".join(licenses) or None
    return spec


def _parameter(parameters: dict[str, Any], value: str, line: int) -> None:
    key, _, raw = value.partition(" ")
    raw = _unquote(raw.strip(), line)
    if not raw:
        raise ModelfileError(line, f"PARAMETER {key} needs a value")
    if key == "preset":
        if raw not in PRESETS:
            raise ModelfileError(line, f"unknown preset {raw!r}; known: {', '.join(PRESETS)}")
        parameters["preset"] = raw
        return
    if key not in OPTION_NAMES:
        raise ModelfileError(line, f"unknown parameter {key!r}; known: {', '.join(OPTION_NAMES)}, preset")
    candidate = [*parameters.get("stop", []), raw] if key == "stop" else raw
    try:
        parsed = parse_options({key: candidate}, where="PARAMETER")
    except BadRequest as e:
        raise ModelfileError(line, e.message) from None
    parameters[key] = getattr(parsed, key)
