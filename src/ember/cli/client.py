"""How the CLI reaches the core: through a running ember server when there is one, else in this process.

Both clients yield the same things for a chat: text pieces, then one final dict of Ollama-style stats.
"""

import asyncio
import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from ember.config import Settings
from ember.core.errors import EmberError
from ember.core.options import parse_options
from ember.core.types import Done, EmbedRequest, GenerateRequest, Message, Segment, Token, TranscribeRequest


def server_running(settings: Settings) -> bool:
    """An ember server answers at the address (its /health needs no key; 503 while it starts or stops)."""
    try:
        response = httpx.get(f"{settings.base_url}/health", timeout=0.5)
        return response.status_code in (200, 503) and "status" in response.json()
    except (httpx.HTTPError, ValueError, TypeError):
        return False


def key_headers() -> dict[str, str]:
    """The key the CLI sends to a server that needs one: EMBER_API_KEY."""
    key = os.environ.get("EMBER_API_KEY", "").strip()
    return {"Authorization": f"Bearer {key}"} if key else {}


def connect(settings: Settings) -> "HttpClient | LocalClient":
    """The running server when there is one (its loaded models are reused), else the core in this process."""
    return HttpClient(settings) if server_running(settings) else LocalClient(settings)


class HttpClient:
    def __init__(self, settings: Settings):
        self.base = settings.base_url
        self.http = httpx.Client(base_url=self.base, timeout=httpx.Timeout(10.0, read=None), headers=key_headers())

    def request(self, method: str, path: str, **kwargs) -> Any:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise EmberError(_error_text(response), status=response.status_code)
        return response.json() if response.content else None

    def chat(self, model: str, messages: list[dict], options: dict, preset: str | None = None,
             keep_alive: str | None = None, collections: list[str] | None = None) -> Iterator[str | dict]:
        body = {"model": model, "messages": messages, "options": options, "stream": True}
        if collections:
            body["collections"] = collections
        if preset:
            body["preset"] = preset
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        with self.http.stream("POST", "/api/chat", json=body) as response:
            if response.status_code >= 400:
                response.read()
                raise EmberError(_error_text(response), status=response.status_code)
            for line in response.iter_lines():
                if not line:
                    continue
                item = json.loads(line)
                if "error" in item:
                    raise EmberError(item["error"])
                if item.get("done"):
                    yield item
                else:
                    yield item["message"]["content"]


    def embed(self, model: str, texts: list[str]) -> list[list[float]]:
        return self.request("POST", "/api/embed", json={"model": model, "input": texts})["embeddings"]

    def rerank(self, model: str, query: str, documents: list[str]) -> list[float]:
        results = self.request("POST", "/api/rerank", json={"model": model, "query": query, "documents": documents})
        scores = [0.0] * len(documents)
        for r in results["results"]:
            scores[r["index"]] = r["relevance_score"]
        return scores

    def transcribe(self, path: Path, request: TranscribeRequest,
                   on_segment: Callable[[Segment, float], None] | None = None) -> dict[str, Any]:
        """The file's transcript in verbose_json's shape. Streamed (segments as the server decodes them, for the
        progress bar), unless word timestamps are asked for: those come in the whole verbose_json."""
        form: dict[str, Any] = {"temperature": str(request.temperature),
                                **{k: v for k, v in (("model", request.model), ("language", request.language),
                                                     ("prompt", request.prompt)) if v}}
        route = "/v1/audio/translations" if request.task == "translate" else "/v1/audio/transcriptions"
        with open(path, "rb") as f:
            if request.word_timestamps:
                form.update({"response_format": "verbose_json", "timestamp_granularities[]": ["segment", "word"]})
                response = self.http.post(route, data=form, files={"file": (path.name, f)})
                if response.status_code >= 400:
                    raise EmberError(_error_text(response), status=response.status_code)
                return response.json()
            with self.http.stream("POST", route, data={**form, "stream": "true"},
                                  files={"file": (path.name, f)}) as response:
                if response.status_code >= 400:
                    response.read()
                    raise EmberError(_error_text(response), status=response.status_code)
                segments: list[dict[str, Any]] = []
                for line in response.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    event = json.loads(line[6:])
                    if event.get("type") == "transcript.text.delta":
                        segments.append(event["segment"])
                        if on_segment:
                            piece = event["segment"]
                            on_segment(Segment(piece["start"], piece["end"], piece["text"]), event["duration"])
                    elif event.get("type") == "transcript.text.done":
                        return {"task": request.task, "language": event.get("language", ""),
                                "duration": event.get("duration", 0.0), "text": event["text"], "segments": segments}
                    elif "error" in event:
                        error = event["error"]
                        raise EmberError(error.get("message", str(error)) if isinstance(error, dict) else str(error))
        raise EmberError("the server ended the transcription without its final event; try again")

    def close(self) -> None:
        self.http.close()


def _error_text(response: httpx.Response) -> str:
    try:
        err = response.json().get("error")
        return err["message"] if isinstance(err, dict) else str(err)
    except (ValueError, AttributeError, KeyError):
        return f"server answered {response.status_code}: {response.text[:200]}"


class LocalClient:
    """Runs the scheduler in this process, on an event loop of its own that lives as long as the client."""

    def __init__(self, settings: Settings):
        from ember.runtime.service import Runtime
        from ember.store.store import ModelStore

        self.loop = asyncio.new_event_loop()
        self.runtime = Runtime(settings, ModelStore(settings.models))

    def chat(self, model: str, messages: list[dict], options: dict, preset: str | None = None,
             keep_alive: str | None = None, collections: list[str] | None = None) -> Iterator[str | dict]:
        request = GenerateRequest(model=model, messages=[Message(m["role"], m["content"], images=m.get("images", []))
                                                       for m in messages],
                                  options=parse_options(options), preset=preset, collections=collections)
        events = self.runtime.generate(request)
        try:
            while True:
                event = self.loop.run_until_complete(anext(events))
                if isinstance(event, Token):
                    yield event.text
                elif isinstance(event, Done):
                    yield {"done_reason": event.reason, "eval_count": event.completion_tokens,
                           "eval_duration": event.eval_ns, "prompt_eval_count": event.prompt_tokens,
                           "prompt_eval_duration": event.prompt_ns, "load_duration": event.load_ns,
                           "total_duration": event.total_ns, "truncated": event.truncated,
                           "truncated_messages": event.truncated_messages, "truncated_tokens": event.truncated_tokens,
                           **({"image_input": event.image_input} if event.images_read_by_ocr else {}),
                           **({} if event.citations is None else {"citations": event.citations})}
                    return
        finally:
            self.loop.run_until_complete(events.aclose())

    def embed(self, model: str, texts: list[str]) -> list[list[float]]:
        return self.loop.run_until_complete(self.runtime.embed(EmbedRequest(model, texts))).vectors

    def rerank(self, model: str, query: str, documents: list[str]) -> list[float]:
        from ember.core.options import Options
        from ember.runtime.rerank import RerankRequest

        request = RerankRequest(model, query, documents, Options())
        return self.loop.run_until_complete(self.runtime.rerank(request)).scores

    def transcribe(self, path: Path, request: TranscribeRequest,
                   on_segment: Callable[[Segment, float], None] | None = None) -> dict[str, Any]:
        """OpenAI's verbose_json for the file; `on_segment` hears each segment as it is decoded. Ctrl-C stops the
        work at the next segment before it is raised."""
        from ember.media.transcripts import verbose_json

        with open(path, "rb") as f:
            task = self.loop.create_task(self.runtime.transcribe(request, f, on_segment))
            try:
                transcript = self.loop.run_until_complete(task)
            except KeyboardInterrupt:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, EmberError):
                    self.loop.run_until_complete(task)
                raise
        return verbose_json(transcript, request.task, request.word_timestamps)

    def close(self) -> None:
        self.loop.run_until_complete(self.runtime.close())
        self.loop.close()
