"""The one internal request and the events it produces; both API dialects and the CLI translate to and from these."""

from dataclasses import dataclass, field
from typing import Any, Literal

from ember.core.options import Options

Role = Literal["system", "user", "assistant", "tool"]


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any]
    id: str = ""


@dataclass
class Message:
    role: Role
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_name: str | None = None
    images: list[str] = field(default_factory=list)

    def for_template(self) -> dict[str, Any]:
        """The message as chat templates (Hugging Face convention) expect it."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in self.tool_calls
            ]
        if self.tool_name:
            out["name"] = self.tool_name
        return out


@dataclass
class GenerateRequest:
    """A chat (messages) or a completion (prompt); `format` is None, "json" or a JSON schema."""

    model: str
    messages: list[Message] | None = None
    prompt: str | None = None
    system: str | None = None
    template: str | None = None  # a per-request Jinja template override (Ollama's /api/generate `template`)
    suffix: str | None = None
    raw: bool = False
    options: Options = field(default_factory=Options)
    preset: str | None = None
    format: str | dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None  # "auto", "none", "required" or {"function": {"name": ...}}
    keep_alive: float | None = None  # seconds; None = server default, <0 = forever, 0 = unload after
    stream: bool = True
    logprobs: bool = False
    context: list[int] | None = None  # Ollama's (deprecated) /api/generate memory: the token ids a reply returned
    collections: list[str] | None = None  # answer from these document collections, with citations (ember rag)
    images: list[str] = field(default_factory=list)  # a completion's images, base64 (a chat's are on its messages)

    @property
    def is_chat(self) -> bool:
        return self.messages is not None


@dataclass
class EmbedRequest:
    model: str
    inputs: list[str]
    options: Options = field(default_factory=Options)
    keep_alive: float | None = None
    normalize: bool = True
    truncate: bool = True


@dataclass
class Token:
    """A piece of the answer's text (possibly several tokens once stop strings are resolved)."""

    text: str


@dataclass
class Done:
    """The last event of every generation: why it stopped, what it made, and how long each part took (ns)."""

    reason: Literal["stop", "length", "tool_calls", "cancelled"]
    text: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    tool_calls: list[ToolCall] = field(default_factory=list)
    load_ns: int = 0
    prompt_ns: int = 0
    eval_ns: int = 0
    total_ns: int = 0
    truncated_messages: int = 0
    truncated_tokens: int = 0
    context: list[int] | None = None  # a completion's prompt and answer tokens, to send back as the next `context`
    citations: list[dict[str, Any]] | None = None  # for a request with collections: the sources [1], [2]… point to
    images_read_by_ocr: int = 0  # images a text-only model got as their OCR text instead

    @property
    def truncated(self) -> bool:
        return self.truncated_messages > 0 or self.truncated_tokens > 0

    @property
    def image_input(self) -> dict[str, Any] | None:
        """How the model got the request's images, for the answer to say: as text read by OCR."""
        if not self.images_read_by_ocr:
            return None
        return {"read_by": "ocr", "images": self.images_read_by_ocr,
                "note": "the model cannot see images; it was given the text OCR read in them"}


Event = Token | Done


@dataclass
class Embeddings:
    vectors: list[list[float]]
    prompt_tokens: int
    load_ns: int = 0
    total_ns: int = 0


@dataclass
class TranscribeRequest:
    """Speech to text: `task` "translate" turns speech in any language into English text (Whisper's own task)."""

    model: str | None  # None, "" or OpenAI's "whisper-1": ember picks by language (see runtime.transcription)
    language: str | None = None  # ISO 639-1 ("en", "ru"); None detects it
    task: Literal["transcribe", "translate"] = "transcribe"
    prompt: str | None = None  # words to expect: names, spelling, the previous part's text
    word_timestamps: bool = False
    temperature: float = 0.0
    vad: bool = True  # skip silence (Silero VAD): fewer hallucinations, less work
    source: str = "the audio"  # the file's name, for messages about it
    options: Options = field(default_factory=Options)
    keep_alive: float | None = None


@dataclass(frozen=True)
class Word:
    start: float  # seconds from the start of the audio
    end: float
    text: str
    probability: float


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    text: str
    words: tuple[Word, ...] = ()
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    compression_ratio: float = 0.0
    temperature: float = 0.0


@dataclass
class Transcript:
    model: str
    language: str
    duration: float  # seconds of audio
    segments: list[Segment]
    load_ns: int = 0
    total_ns: int = 0

    @property
    def text(self) -> str:
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())
