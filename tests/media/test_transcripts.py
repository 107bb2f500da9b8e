"""The transcript formats: SRT and VTT cues in order, inside the audio, whatever Whisper's timestamps did."""

from ember.core.types import Segment, Transcript, Word
from ember.media.transcripts import cues, from_verbose, render, srt, verbose_json, vtt


def _transcript() -> Transcript:
    return Transcript("whisper:base", "ru", 7.5, [
        Segment(0.0, 3.2, " Привет, мир.", (Word(0.0, 0.8, " Привет,", 0.9), Word(0.9, 1.5, " мир.", 0.8))),
        Segment(3.1, 5.0, "   "),  # no words: no cue
        Segment(3.15, 8.0, " Second line."),  # starts before the last ended, ends after the audio
    ])


def test_cues_never_go_back_and_stay_inside_the_audio():
    assert cues(_transcript()) == [(0.0, 3.2, "Привет, мир."), (3.2, 7.5, "Second line.")]


def test_srt_and_vtt():
    assert srt(_transcript()) == ("1\n00:00:00,000 --> 00:00:03,200\nПривет, мир.\n\n"
                                  "2\n00:00:03,200 --> 00:00:07,500\nSecond line.\n\n")
    assert vtt(_transcript()) == ("WEBVTT\n\n00:00:00.000 --> 00:00:03.200\nПривет, мир.\n\n"
                                  "00:00:03.200 --> 00:00:07.500\nSecond line.\n\n")
    long = Transcript("m", "en", 4000.0, [Segment(3725.25, 3727.0, "late")])
    assert "01:02:05,250 --> 01:02:07,000" in srt(long)


def test_openai_bodies():
    t = _transcript()
    assert render(t, "json") == {"text": "Привет, мир. Second line.", "usage": {"type": "duration", "seconds": 8}}
    assert render(t, "text") == "Привет, мир. Second line.\n"
    body = verbose_json(t, "transcribe", words=True)
    assert body["language"] == "russian" and body["duration"] == 7.5 and len(body["segments"]) == 3
    assert body["words"] == [{"word": "Привет,", "start": 0.0, "end": 0.8}, {"word": "мир.", "start": 0.9, "end": 1.5}]
    assert "words" not in verbose_json(t, "transcribe", words=False)
    assert from_verbose(body).segments[0].text == " Привет, мир."
