"""Speech to text: Whisper models in CTranslate2 folders, run by faster-whisper.

faster-whisper decodes any audio PyAV reads (WAV, MP3, M4A, OGG, FLAC, WebM: no ffmpeg binary), resamples it to
16 kHz, skips silence with its bundled Silero VAD, and yields segments as it decodes them, so a long file reports
progress and can be stopped between segments. One transcription runs at a time per loaded model: CTranslate2
already spreads one over the threads it was given, and a second would only halve the speed of both.
"""

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import BinaryIO

from ember.core.errors import BadRequest, EmberError
from ember.core.types import Segment, TranscribeRequest, Word
from ember.engines.base import EngineStatus, LoadSpec
from ember.extras import require

log = logging.getLogger("ember.whisper")

# Measured on 2 cores (tiny.en and base, 30 s of speech, 2026-12-07): int8 runs 1.4-1.8x float32's speed with the
# same words (the weights ship as float16, which the CPU kernels do not run).
CPU_COMPUTE = "int8"
# Beside the weights (int8: half of model.bin): decoding buffers, the VAD model, the audio. Measured: peak RSS over
# the bare interpreter 284 MB (tiny.en) and 313 MB (base) on 30 s of speech, under model.bin + this.
WORKING_BYTES = 200 << 20
BEAM_SIZE = 5  # faster-whisper's default, and the reference whisper CLI's
DECODER_CONTEXT = 448  # tokens: every Whisper size's text decoder has this window; no option changes it


def _cuda_devices() -> int:
    try:
        import ctranslate2

        return ctranslate2.get_cuda_device_count()
    except (ImportError, RuntimeError):
        return 0


class WhisperEngine:
    def __init__(self, spec: LoadSpec):
        WhisperModel = require("faster_whisper", "media", "speech to text").WhisperModel
        self.spec = spec
        self.device = "cuda" if _cuda_devices() else "cpu"
        self.threads = spec.num_thread or max(1, os.cpu_count() or 1)
        try:
            self._model = WhisperModel(str(spec.model_path), device=self.device,
                                       compute_type=CPU_COMPUTE if self.device == "cpu" else "default",
                                       cpu_threads=self.threads, num_workers=1)
        except (RuntimeError, ValueError, OSError) as e:
            raise EmberError(f"cannot load the Whisper model in {spec.model_path}: {e}") from None
        self.multilingual = self._model.model.is_multilingual
        self._weights = os.path.getsize(spec.model_path / "model.bin")
        self._lock = threading.Lock()
        self._busy = 0

    def status(self) -> EngineStatus:
        return EngineStatus(weights_bytes=self._weights, cache_bytes=WORKING_BYTES, context=DECODER_CONTEXT, slots=1,
                            busy_slots=self._busy, threads=self.threads, device=self.device, runner="faster-whisper")

    def transcribe(self, audio: BinaryIO, request: TranscribeRequest, segment: Callable[[Segment, float], None],
                   cancel: threading.Event) -> tuple[str, float, list[Segment]]:
        if not self.multilingual and request.language not in (None, "en"):
            raise BadRequest(f"this Whisper model understands English only, not {request.language!r}: use a "
                             "multilingual one (whisper:base)")
        if not self.multilingual and request.task == "translate":
            raise BadRequest("this Whisper model is English only and cannot translate: use whisper:base")
        if request.language is not None and request.language not in self._model.supported_languages:
            raise BadRequest(f"language {request.language!r} is not one Whisper knows; give an ISO 639-1 code "
                             f"({', '.join(self._model.supported_languages)}), or leave it out to detect it")
        with self._lock:
            self._busy = 1
            try:
                return self._run(audio, request, segment, cancel)
            finally:
                self._busy = 0

    def _run(self, audio: BinaryIO, request: TranscribeRequest, segment: Callable[[Segment, float], None],
             cancel: threading.Event) -> tuple[str, float, list[Segment]]:
        started = time.perf_counter()
        try:
            pieces, info = self._model.transcribe(
                audio, language=request.language, task=request.task, initial_prompt=request.prompt or None,
                word_timestamps=request.word_timestamps, vad_filter=request.vad, beam_size=BEAM_SIZE,
                temperature=request.temperature or [0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
        except Exception as e:  # PyAV's errors (InvalidDataError and kin) share no base class worth naming
            if _is_decode_error(e):
                reason = getattr(e, "strerror", None) or str(e)
                raise BadRequest(f"{request.source} cannot be decoded as audio ({reason}); send WAV, MP3, M4A, OGG, "
                                 "FLAC or WebM") from None
            raise
        segments: list[Segment] = []
        for piece in pieces:  # decoded lazily: each step of this loop is one window of audio
            words = tuple(Word(w.start, w.end, w.word, w.probability) for w in piece.words or ())
            found = Segment(piece.start, piece.end, piece.text, words, piece.avg_logprob, piece.no_speech_prob,
                            piece.compression_ratio, piece.temperature or 0.0)
            segments.append(found)
            segment(found, info.duration)
            if cancel.is_set():
                break
        log.debug("transcribed %.1f s of audio in %.2f s", info.duration, time.perf_counter() - started)
        return info.language, info.duration, segments

    def close(self) -> None:
        self._model = None


def _is_decode_error(error: Exception) -> bool:
    return type(error).__module__.startswith("av") or isinstance(error, (EOFError, IndexError))


class WhisperFactory:
    def estimate(self, spec: LoadSpec) -> int:
        return os.path.getsize(spec.model_path / "model.bin") + WORKING_BYTES

    def load(self, spec: LoadSpec) -> WhisperEngine:
        return WhisperEngine(spec)
