"""The Modelfile: Ollama's recipe format (FROM, PARAMETER, TEMPLATE, SYSTEM, ADAPTER, LICENSE, MESSAGE), read and
written here together.

One instruction per line; keywords in any case; `#` starts a comment line. A value is bare (to the end of the line),
"quoted" (on one line) or \"\"\"triple-quoted\"\"\" (may span lines, kept exactly as written). Every error names the
line it was found on.
"""

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ember.core.errors import BadRequest
from ember.core.options import OPTION_NAMES, PRESETS, parse_options
from ember.core.templates import compile_template
from ember.core.types import Message
from ember.store.blobs import normalize_digest
from ember.store.names import parse_name

if TYPE_CHECKING:
    from ember.store.store import Model

INSTRUCTIONS = ("FROM", "PARAMETER", "TEMPLATE", "SYSTEM", "ADAPTER", "LICENSE", "MESSAGE")
ROLES = ("system", "user", "assistant")
_NAMED = {"PARAMETER": "PARAMETER needs a name and a value, like: PARAMETER temperature 0.7",
          "MESSAGE": "MESSAGE needs a role and a text, like: MESSAGE user Hello"}


class ModelfileError(BadRequest):
    def __init__(self, line: int, message: str):
        super().__init__(f"Modelfile line {line}: {message}")
        self.line = line


@dataclass
class CreateSpec:
    """What a new model is made of, from a Modelfile or from /api/create's fields. `from_` is a stored model's name,
    an absolute GGUF path or a blob digest; None (or empty) fields are inherited when it is a stored model, and
    parameters merge over the parent's."""

    from_: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    template: str | None = None
    system: str | None = None
    license: str | None = None
    adapters: list[str] = field(default_factory=list)  # absolute GGUF paths or blob digests
    messages: list[Message] = field(default_factory=list)


@dataclass
class _Instruction:
    line: int
    keyword: str
    name: str  # PARAMETER's key or MESSAGE's role; "" for the others
    value: str


def _split_word(text: str) -> tuple[str, str]:
    parts = text.split(None, 1)
    return (parts[0], parts[1] if len(parts) > 1 else "") if parts else ("", "")


def _instructions(text: str) -> Iterator[_Instruction]:
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        number, line = i + 1, lines[i].lstrip()
        i += 1
        if not line.strip() or line.startswith("#"):
            continue
        keyword, rest = _split_word(line)
        keyword = keyword.upper()
        if keyword not in INSTRUCTIONS:
            raise ModelfileError(number, f"unknown instruction {keyword!r}; expected one of {', '.join(INSTRUCTIONS)}")
        name = ""
        if keyword in _NAMED:
            name, rest = _split_word(rest)
            if not name:
                raise ModelfileError(number, _NAMED[keyword])
        if rest.startswith('"""'):
            parts = [rest[3:]]
            while '"""' not in parts[-1]:
                if i >= len(lines):
                    raise ModelfileError(number, f'the """ opened here is never closed; end the {keyword} value '
                                                 'with """')
                parts.append(lines[i])
                i += 1
            joined = "\n".join(parts)
            end = joined.index('"""')
            while joined.startswith('"', end + 3):  # a value may end in quotes: the last three close it
                end += 1
            value, after = joined[:end], joined[end + 3:]
            if after.strip():
                raise ModelfileError(i, f'unexpected text after the closing """: {after.strip()!r}')
        elif rest.startswith('"'):
            rest = rest.rstrip()
            if len(rest) < 2 or not rest.endswith('"'):
                raise ModelfileError(number, 'a "quoted" value must end with " on the same line; '
                                             'use """ for a value that spans lines')
            value = rest[1:-1]
        else:
            value = rest.strip()
            if not value:
                raise ModelfileError(number, f"{keyword} {name} needs a value" if name else f"{keyword} needs a value")
        yield _Instruction(number, keyword, name, value)


def _path_like(value: str) -> bool:
    return "/" in value or value.startswith((".", "~")) or value.lower().endswith(".gguf") or value == "."


def _resolve(value: str, base_dir: Path, line: int, what: str, folder: bool = False) -> str:
    path = (Path(base_dir) / Path(value).expanduser()).resolve()
    if folder and path.is_dir():  # a model made of files: a CTranslate2 Whisper folder
        return str(path)
    if not path.is_file():
        raise ModelfileError(line, f"{what} file {value!r} not found (looked for {path}); "
                                   "paths are relative to the Modelfile's folder")
    return str(path)


def _from(value: str, base_dir: Path, line: int) -> str:
    try:
        if _path_like(value):
            return _resolve(value, base_dir, line, "FROM", folder=True)
        if value.startswith("sha256"):
            return normalize_digest(value)
        parse_name(value)
        return value
    except ModelfileError:
        raise
    except BadRequest as e:
        raise ModelfileError(line, f"FROM: {e.message}") from None


def _adapter(value: str, base_dir: Path, line: int) -> str:
    if value.startswith("sha256") and not _path_like(value):
        try:
            return normalize_digest(value)
        except BadRequest as e:
            raise ModelfileError(line, f"ADAPTER: {e.message}") from None
    return _resolve(value, base_dir, line, "ADAPTER")


def _parameter(parameters: dict[str, Any], key: str, raw: str, line: int) -> None:
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
        parsed = parse_options({key: candidate}, where=f"PARAMETER {key}")  # coerces "0.7" to the option's type
    except BadRequest as e:
        raise ModelfileError(line, e.message) from None
    parameters[key] = getattr(parsed, key)


def parse_modelfile(text: str, base_dir: Path) -> CreateSpec:
    spec = CreateSpec()
    from_line = 0
    licenses: list[str] = []
    for ins in _instructions(text):
        if ins.keyword == "FROM":
            if from_line:
                raise ModelfileError(ins.line, f"FROM appears twice (first on line {from_line}); "
                                               "a Modelfile builds on one model")
            from_line = ins.line
            spec.from_ = _from(ins.value, base_dir, ins.line)
        elif ins.keyword == "PARAMETER":
            _parameter(spec.parameters, ins.name, ins.value, ins.line)
        elif ins.keyword == "TEMPLATE":
            try:
                compile_template(ins.value)  # the engine's own sandboxed environment
            except BadRequest as e:
                raise ModelfileError(ins.line, f"TEMPLATE is not a valid Jinja2 template: {e.message}") from None
            spec.template = ins.value
        elif ins.keyword == "SYSTEM":
            spec.system = ins.value
        elif ins.keyword == "ADAPTER":
            spec.adapters.append(_adapter(ins.value, base_dir, ins.line))
        elif ins.keyword == "LICENSE":
            licenses.append(ins.value)
        elif ins.keyword == "MESSAGE":
            role = ins.name.lower()
            if role not in ROLES:
                raise ModelfileError(ins.line, f"MESSAGE role {ins.name!r} must be one of {', '.join(ROLES)}")
            spec.messages.append(Message(role, ins.value))
    if not from_line:
        raise ModelfileError(1, "no FROM instruction: a Modelfile must say which model it builds on, "
                                "like: FROM smollm2 (or FROM ./model.gguf)")
    spec.license = "\n\n".join(licenses) if licenses else None
    # Each line was checked on its own; this checks the set as the engine will read it.
    try:
        parse_options({k: v for k, v in spec.parameters.items() if k != "preset"}, where="PARAMETERs")
    except BadRequest as e:
        raise ModelfileError(from_line, e.message) from None
    return spec


def _quote(text: str) -> str:
    """A value that parses back to exactly `text`."""
    if text and '"' not in text and not any(c.isspace() for c in text):
        return text
    if '"' not in text and "\n" not in text and "\r" not in text:
        return f'"{text}"'
    return f'"""{text}"""'


def render_modelfile(model: "Model", from_line: str | None = None, adapter_lines: list[str] | None = None) -> str:
    """A Modelfile that recreates `model` (by default from its blobs' absolute paths)."""
    lines = [f"# Modelfile for {model.name}, written by ember",
             f"# To build on this model instead, replace the FROM line with: FROM {model.name}",
             f"FROM {from_line or model.model_path}"]
    lines += [f"ADAPTER {a}" for a in (adapter_lines if adapter_lines is not None else model.adapter_paths)]
    for keyword, text in (("TEMPLATE", model.template), ("SYSTEM", model.system)):
        if text is not None:
            lines.append(f'{keyword} """{text}"""')
    for key, value in model.params.items():
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"PARAMETER {key} {_quote(item) if isinstance(item, str) else item}")
    lines += [f'MESSAGE {m.role} """{m.content}"""' for m in model.messages]
    if model.license:
        lines.append(f'LICENSE """{model.license}"""')
    return "\n".join(lines) + "\n"
