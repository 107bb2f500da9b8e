"""Speech to text on the bundled Whisper models, through a real server, the official `openai` client and the CLI.

The audio is synthesised from known sentences: English by espeak-ng, Russian by festival's Russian voice (espeak's
is too poor to test with). Word error rates are measured with jiwer after the usual normalisation (case, punctuation,
ё → е).
"""

import json
import re
import shutil
import subprocess
import wave
from pathlib import Path

import jiwer
import openai
import pytest

from tests.cli.test_cli import ember

ENGLISH = ("The weather station on the northern ridge recorded heavy snow during the night. "
           "Our team will repair the antenna next week, after the supply flight arrives. "
           "Please send the maintenance report to the engineering office before Friday.")
RUSSIAN = ("Сегодня мы обсудим план работы на следующую неделю. "
           "Библиотека открыта каждый день, кроме воскресенья. "
           "Мой брат живёт в большом городе и работает врачом.")


def _normal(text: str) -> str:
    text = text.lower().replace("ё", "е")
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


def wer(reference: str, hypothesis: str) -> float:
    return jiwer.wer(_normal(reference), _normal(hypothesis))


def _duration(path: Path) -> float:
    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> dict[str, Path]:
    if not (shutil.which("espeak-ng") and shutil.which("text2wave")):
        pytest.fail("the speech tests need espeak-ng and festival with festvox-ru: make setup installs them")
    folder = tmp_path_factory.mktemp("speech")
    english, russian = folder / "english.wav", folder / "russian.wav"
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(english), ENGLISH], check=True)
    subprocess.run(["text2wave", "-eval", "(voice_msu_ru_nsh_clunits)", "-o", str(russian)], input=RUSSIAN.encode(),
                   check=True)
    corrupt = folder / "broken.mp3"
    corrupt.write_bytes(b"ID3\x03\x00\x00\x00\x00\x00\x10" + bytes(range(256)) * 8)
    return {"en": english, "ru": russian, "corrupt": corrupt}


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", timeout=300) as c:
        yield c


def test_english_through_the_openai_client(client, speech):
    with open(speech["en"], "rb") as f:
        result = client.audio.transcriptions.create(model="whisper-1", file=f, language="en")
    print(f"English (whisper:tiny.en) WER {wer(ENGLISH, result.text):.3f}: {result.text}")
    assert wer(ENGLISH, result.text) <= 0.15, result.text


def test_russian_through_the_openai_client(client, speech):
    with open(speech["ru"], "rb") as f:
        result = client.audio.transcriptions.create(model="whisper-1", file=f, language="ru")
    print(f"Russian (whisper:base) WER {wer(RUSSIAN, result.text):.3f}: {result.text}")
    assert wer(RUSSIAN, result.text) <= 0.25, result.text


def test_the_language_is_detected_when_not_given(client, speech):
    with open(speech["ru"], "rb") as f:
        result = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="verbose_json")
    assert result.language == "russian"
    assert wer(RUSSIAN, result.text) <= 0.25, result.text


@pytest.mark.parametrize("response_format", ["srt", "vtt"])
def test_subtitles_are_monotonic_and_inside_the_audio(client, speech, response_format):
    with open(speech["en"], "rb") as f:
        body = client.audio.transcriptions.create(model="whisper-1", file=f, language="en",
                                                  response_format=response_format)
    text = body if isinstance(body, str) else body.text
    if response_format == "vtt":
        assert text.startswith("WEBVTT")
    separator = "," if response_format == "srt" else "."
    stamps = re.findall(rf"(\d\d):(\d\d):(\d\d){re.escape(separator)}(\d\d\d) --> (\d\d):(\d\d):(\d\d)"
                        rf"{re.escape(separator)}(\d\d\d)", text)
    assert len(stamps) >= 2, text
    times = [(int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000) for stamp in stamps
             for h, m, s, ms in (stamp[:4], stamp[4:])]
    assert times == sorted(times), text
    assert times[-1] <= _duration(speech["en"]) + 1e-3
    cue_text = " ".join(line for line in text.splitlines() if line and "-->" not in line and not line.isdigit()
                        and line != "WEBVTT")
    assert wer(ENGLISH, cue_text) <= 0.15


def test_verbose_json_with_word_timestamps(client, speech):
    with open(speech["en"], "rb") as f:
        result = client.audio.transcriptions.create(model="whisper-1", file=f, language="en",
                                                  response_format="verbose_json",
                                                  timestamp_granularities=["word", "segment"])
    assert result.language == "english"
    assert 0 < result.duration <= _duration(speech["en"]) + 0.1
    assert result.segments and result.words
    starts = [w.start for w in result.words]
    assert starts == sorted(starts)
    assert "snow" in [w.word.lower().strip(".,") for w in result.words]


def test_russian_speech_translated_to_english(client, speech):
    with open(speech["ru"], "rb") as f:
        result = client.audio.translations.create(model="whisper-1", file=f)
    words = _normal(result.text).split()
    assert words and all(re.fullmatch(r"[a-z0-9']+", w) for w in words), result.text  # English, not Cyrillic


def test_errors_name_what_was_wrong(client, speech, server):
    with open(speech["corrupt"], "rb") as f, pytest.raises(openai.BadRequestError) as caught:
        client.audio.transcriptions.create(model="whisper-1", file=f)
    assert "broken.mp3" in str(caught.value)
    with open(speech["ru"], "rb") as f, pytest.raises(openai.BadRequestError) as caught:
        client.audio.transcriptions.create(model="whisper:tiny.en", file=f, language="ru")
    assert "English only" in str(caught.value) and "whisper:base" in str(caught.value)
    with open(speech["en"], "rb") as f, pytest.raises(openai.BadRequestError) as caught:
        client.audio.transcriptions.create(model="whisper-1", file=f, language="xx")
    assert "'xx' is not one Whisper knows" in str(caught.value)
    with open(speech["en"], "rb") as f, pytest.raises(openai.BadRequestError) as caught:
        client.audio.transcriptions.create(model="smollm2", file=f)
    assert "not a speech-to-text model" in str(caught.value)
    with open(speech["en"], "rb") as f, pytest.raises(openai.BadRequestError) as caught:
        client.audio.transcriptions.create(model="whisper-1", file=f, response_format="docx")  # type: ignore[arg-type]
    assert "response_format" in str(caught.value)


def test_cli_transcribes_a_batch_and_reports_the_bad_file(ember_home, speech, client):
    result = ember(ember_home, "transcribe", str(speech["corrupt"]), str(speech["en"]), "--language", "en",
                   "--format", "json", timeout=300)
    assert result.returncode == 1
    assert "broken.mp3" in result.stderr and "cannot be decoded" in result.stderr
    files = json.loads(result.stdout)["files"]
    assert [Path(f["file"]).name for f in files] == ["english.wav"]
    assert wer(ENGLISH, files[0]["text"]) <= 0.15
    # The CLI (in its own process) and the openai client (through the server) hear the same words.
    with open(speech["en"], "rb") as f:
        assert client.audio.transcriptions.create(model="whisper-1", file=f, language="en").text == files[0]["text"]


def test_streamed_segments_and_the_cli_through_the_server(client, server, ember_home, speech):
    with open(speech["en"], "rb") as f:
        events = list(client.audio.transcriptions.create(model="whisper-1", file=f, language="en", stream=True))
    deltas = [e for e in events if e.type == "transcript.text.delta"]
    assert deltas and events[-1].type == "transcript.text.done"
    ends = [e.model_extra["segment"]["end"] for e in deltas]
    assert ends == sorted(ends) and ends[-1] <= deltas[-1].model_extra["duration"] + 1e-3
    assert wer(ENGLISH, events[-1].text) <= 0.15
    # The CLI with a server running sends the file there and reads the same stream.
    result = ember(ember_home, "transcribe", str(speech["en"]), "--language", "en", "--format", "vtt",
                   port=server.port, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("WEBVTT")
    spoken = " ".join(line for line in result.stdout.splitlines()[1:] if line and "-->" not in line)
    assert wer(ENGLISH, spoken) <= 0.15
    with open(speech["corrupt"], "rb") as f, pytest.raises(openai.BadRequestError):  # refused before the stream
        list(client.audio.transcriptions.create(model="whisper-1", file=f, stream=True))


def test_cli_writes_srt(ember_home, speech):
    result = ember(ember_home, "transcribe", str(speech["ru"]), "--language", "ru", "--format", "srt", "--quiet",
                   timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("1\n00:00:")
    assert " --> " in result.stdout


def test_a_folder_made_into_a_model_with_a_modelfile(ember_home, tmp_path, client, speech):
    exported = ember(ember_home, "export", "whisper:tiny.en", str(tmp_path / "out"))
    assert exported.returncode == 0, exported.stderr
    folder = tmp_path / "out" / "whisper-tiny.en"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.bin", "tokenizer.json",
                                                         "vocabulary.txt"]
    (tmp_path / "Modelfile").write_text("FROM ./out/whisper-tiny.en\nPARAMETER num_thread 1\n")
    result = ember(ember_home, "create", "mywhisper", "-f", str(tmp_path / "Modelfile"))
    assert result.returncode == 0, result.stderr
    shown = ember(ember_home, "show", "mywhisper")
    assert "whisper" in shown.stdout and "transcription" in shown.stdout, shown.stdout
    with open(speech["en"], "rb") as f:
        text = client.audio.transcriptions.create(model="mywhisper", file=f).text
    assert wer(ENGLISH, text) <= 0.15
    (tmp_path / "Bad").write_text("FROM ./out\n")  # a folder without model.bin
    refused = ember(ember_home, "create", "badwhisper", "-f", str(tmp_path / "Bad"))
    assert refused.returncode == 1 and "model.bin and config.json" in refused.stderr
