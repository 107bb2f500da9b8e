"""A transcript in the forms people read it in: plain text, SubRip (.srt), WebVTT (.vtt), and OpenAI's JSON bodies.

The SRT and VTT writers are a few lines each: the formats are fixed and tiny, and a subtitles library would bring
more than it saves.
"""

from typing import Any

from ember.core.types import Segment, Transcript

FORMATS = ("json", "text", "srt", "verbose_json", "vtt")


def _clock(seconds: float, separator: str) -> str:
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{ms:03d}"


def cues(transcript: Transcript) -> list[tuple[float, float, str]]:
    """(start, end, text) of each segment with words, clipped to the audio and never going back in time (Whisper's
    timestamps can overlap by a few milliseconds at a window's edge; players reject cues that do)."""
    out: list[tuple[float, float, str]] = []
    floor = 0.0
    for segment in transcript.segments:
        text = segment.text.strip()
        if not text:
            continue
        start = min(max(segment.start, floor), transcript.duration)
        end = min(max(segment.end, start), transcript.duration)
        out.append((start, end, text))
        floor = end
    return out


def srt(transcript: Transcript) -> str:
    return "".join(f"{i}\n{_clock(start, ',')} --> {_clock(end, ',')}\n{text}\n\n"
                   for i, (start, end, text) in enumerate(cues(transcript), 1))


def vtt(transcript: Transcript) -> str:
    return "WEBVTT\n\n" + "".join(f"{_clock(start, '.')} --> {_clock(end, '.')}\n{text}\n\n"
                                  for start, end, text in cues(transcript))


def _segment_json(i: int, segment: Segment) -> dict[str, Any]:
    return {"id": i, "seek": 0, "start": round(segment.start, 3), "end": round(segment.end, 3), "text": segment.text,
            "tokens": [], "temperature": segment.temperature, "avg_logprob": segment.avg_logprob,
            "compression_ratio": segment.compression_ratio, "no_speech_prob": segment.no_speech_prob}


def verbose_json(transcript: Transcript, task: str, words: bool, segments: bool = True) -> dict[str, Any]:
    """OpenAI's verbose_json: the text with its language, duration, segments and (when asked for) words."""
    body: dict[str, Any] = {"task": task, "language": language_name(transcript.language),
                            "duration": round(transcript.duration, 3), "text": transcript.text}
    if segments:
        body["segments"] = [_segment_json(i, s) for i, s in enumerate(transcript.segments)]
    if words:
        body["words"] = [{"word": w.text.strip(), "start": round(w.start, 3), "end": round(w.end, 3)}
                         for s in transcript.segments for w in s.words]
    body["usage"] = {"type": "duration", "seconds": round(transcript.duration)}
    return body


# OpenAI's verbose_json names the language in English words ("english", "russian"), not by its code.
_LANGUAGE_NAMES = {"en": "english", "ru": "russian", "uk": "ukrainian", "de": "german", "fr": "french",
                   "es": "spanish", "it": "italian", "pt": "portuguese", "pl": "polish", "zh": "chinese",
                   "ja": "japanese", "ko": "korean", "tr": "turkish", "kk": "kazakh", "be": "belarusian",
                   "ar": "arabic", "hi": "hindi", "nl": "dutch", "sv": "swedish", "cs": "czech"}


def language_name(code: str) -> str:
    return _LANGUAGE_NAMES.get(code, code)


def render(transcript: Transcript, response_format: str, task: str = "transcribe", words: bool = False,
           segments: bool = True) -> str | dict[str, Any]:
    """The body for `response_format`: a str for text, srt and vtt; a JSON object otherwise."""
    if response_format == "text":
        return transcript.text + "\n"
    if response_format == "srt":
        return srt(transcript)
    if response_format == "vtt":
        return vtt(transcript)
    if response_format == "verbose_json":
        return verbose_json(transcript, task, words, segments)
    return {"text": transcript.text, "usage": {"type": "duration", "seconds": round(transcript.duration)}}


def from_verbose(body: dict[str, Any]) -> Transcript:
    """A transcript back from verbose_json (what the CLI gets from a server), for the text, SRT and VTT forms."""
    segments = [Segment(float(s["start"]), float(s["end"]), str(s["text"])) for s in body.get("segments") or []]
    return Transcript(str(body.get("model", "")), str(body.get("language", "")), float(body.get("duration", 0.0)),
                      segments)
