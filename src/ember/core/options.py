"""Generation options: one table for both API dialects, Modelfile PARAMETERs and the CLI's /set.

Precedence, lowest first: DEFAULTS < Modelfile PARAMETERs < preset < request options.
"""

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ember.core.errors import BadRequest

NonNegFloat = Annotated[float, Field(ge=0)]
Probability = Annotated[float, Field(ge=0, le=1)]
# llama.cpp takes these as C ints: a larger number would overflow in ctypes (a 500) instead of a clear 400.
INT32, UINT32 = (1 << 31) - 1, (1 << 32) - 1


class Options(BaseModel):
    """Every option ember honours. None means "not set here" so that layers can be merged."""

    model_config = ConfigDict(extra="forbid")

    temperature: NonNegFloat | None = None
    top_k: Annotated[int, Field(ge=0, le=INT32)] | None = None
    top_p: Probability | None = None
    min_p: Probability | None = None
    typical_p: Annotated[float, Field(gt=0, le=1)] | None = None
    repeat_penalty: NonNegFloat | None = None
    repeat_last_n: Annotated[int, Field(ge=-1, le=INT32)] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    mirostat: Annotated[int, Field(ge=0, le=2)] | None = None
    mirostat_tau: NonNegFloat | None = None
    mirostat_eta: NonNegFloat | None = None
    seed: Annotated[int, Field(ge=-INT32 - 1, le=UINT32)] | None = None
    num_predict: Annotated[int, Field(ge=-2, le=INT32)] | None = None
    stop: list[str] | None = None
    num_ctx: Annotated[int, Field(ge=64, le=1 << 20)] | None = None
    num_batch: Annotated[int, Field(ge=1, le=1 << 16)] | None = None
    num_thread: Annotated[int, Field(ge=1, le=512)] | None = None
    num_keep: Annotated[int, Field(ge=-1, le=INT32)] | None = None
    # Answers from collections (ember rag): the grounding prompt ({sources} marks where the chunks go) and how many
    # chunks it carries. Not Ollama's; a Modelfile sets them like any PARAMETER.
    grounding_prompt: str | None = None
    rag_top_k: Annotated[int, Field(ge=1, le=50)] | None = None
    # The collections to answer from, for clients that can only send options (the ollama package) and for models
    # bound to documents by their Modelfile; cite_sources appends the numbered sources to the answer's text for
    # clients that drop the `citations` field.
    collections: list[str] | None = None
    cite_sources: bool | None = None
    # Conversation memory: past turns with this model are kept in its collection memory-<model> and the ones that
    # bear on a new question are recalled into its system message.
    memory: bool | None = None
    # A model that reranks the chunks a question finds before they go into the prompt: a cross-encoder GGUF (or an
    # embedding model, by cosine).
    rerank_model: str | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("collections", mode="before")
    @classmethod
    def _names_as_list(cls, value: Any) -> Any:
        return [n.strip() for n in value.split(",") if n.strip()] if isinstance(value, str) else value


# Ollama options that only make sense on a GPU or for Ollama's runner; clients such as LangChain send them,
# so they are accepted and ignored rather than refused.
IGNORED_OLLAMA_OPTIONS = frozenset(
    {"num_gpu", "main_gpu", "use_mmap", "use_mlock", "numa", "low_vram", "f16_kv", "vocab_only",
     "penalize_newline", "tfs_z", "logits_all", "embedding_only", "rope_frequency_base", "rope_frequency_scale"}
)

DEFAULTS = Options(
    temperature=0.8, top_k=40, top_p=0.9, min_p=0.0, typical_p=1.0, repeat_penalty=1.0, repeat_last_n=64,
    presence_penalty=0.0, frequency_penalty=0.0, mirostat=0, mirostat_tau=5.0, mirostat_eta=0.1,
    num_predict=-1, stop=[], num_keep=4,
)

# From the seed cheat sheet (temperature/top_p/top_k/repeat_penalty/max tokens).
PRESETS: dict[str, Options] = {
    name: Options(temperature=t, top_p=p, top_k=k, repeat_penalty=r, num_predict=n)
    for name, (t, p, k, r, n) in {
        "balanced": (0.7, 0.9, 40, 1.1, 512),
        "creative": (0.9, 0.95, 60, 1.05, 512),
        "factual": (0.3, 0.85, 40, 1.15, 512),
        "concise": (0.4, 0.8, 30, 1.2, 256),
        "long-form": (0.7, 0.95, 60, 1.05, 1024),
    }.items()
}

OPTION_NAMES = tuple(Options.model_fields)


def _describe(error: ValidationError, where: str) -> str:
    parts = []
    for item in error.errors():
        field = ".".join(str(p) for p in item["loc"])
        if item["type"] == "extra_forbidden":
            parts.append(f"unknown option '{field}' (known: {', '.join(OPTION_NAMES)})")
        else:
            parts.append(f"option '{field}': {item['msg']} (got {item.get('input')!r})")
    return f"invalid {where}: " + "; ".join(parts)


def parse_options(raw: dict[str, Any] | None, where: str = "options") -> Options:
    """Validate a user-supplied options mapping; unknown or ill-typed values are a 400 that names them."""
    if raw is None:
        return Options()
    if not isinstance(raw, dict):
        raise BadRequest(f"invalid {where}: expected an object of option names to values")
    cleaned = {k: v for k, v in raw.items() if k not in IGNORED_OLLAMA_OPTIONS and v is not None}
    try:
        return Options.model_validate(cleaned)
    except ValidationError as error:
        raise BadRequest(_describe(error, where)) from None


def preset(name: str | None) -> Options:
    if name is None:
        return Options()
    try:
        return PRESETS[name]
    except KeyError:
        raise BadRequest(f"unknown preset '{name}' (known: {', '.join(PRESETS)})") from None


def merge(*layers: Options) -> Options:
    """Later layers win; a None in a layer leaves the value below it in place."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer.model_dump(exclude_none=True))
    return Options.model_validate(merged)


def resolve(modelfile_params: dict[str, Any], request: Options, request_preset: str | None) -> Options:
    """defaults < Modelfile PARAMETERs < preset (request's, else Modelfile's) < request options."""
    params = dict(modelfile_params)
    modelfile_preset = params.pop("preset", None)
    return merge(DEFAULTS, Options.model_validate(params), preset(request_preset or modelfile_preset), request)
