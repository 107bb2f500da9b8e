"""How fast does ember read audio and images? Speech-to-text through ember's API against faster-whisper called
directly, and OCR pages per second, in one run.

Speech: for each bundled Whisper model, the same audio transcribed by

- ember: POST /v1/audio/transcriptions on a real `ember serve` (its own EMBER_HOME in a temp dir), the model loaded
  and warmed first; the upload and the JSON answer are in the time, as a caller pays them;
- faster-whisper in this process, WhisperModel on the same folder with the same settings ember uses (int8 on the CPU,
  all cores, beam 5, VAD on): the peer, and the floor ember's API may add at most 5 % to.

in alternating rounds (ember.bench.harness.in_turns), so the machine's drift cancels in the per-round ratios. Speed
is a multiple of real time: seconds of audio per second of work. The audio is synthesised from a fixed text
(espeak-ng for English, festival's Russian voice for Russian), about a minute of each; whisper:tiny.en hears the
English, whisper:base both.

OCR: bench/ocr.py's `measure`: one A4 page at 300 dpi, and a 20-page scanned (image-only) PDF read with one worker
and with one per core (goal: at least 1.6x one core).

Writes bench/results/media.json (every figure and round, the machine, the versions) and bench/results/media.png.

    .venv/bin/python bench/media.py [--rounds 5] [--out bench/results]
"""

import argparse
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from ember.bench.harness import ember_server, in_turns, ratios, spread

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ocr as ocr_bench

ROOT = Path(__file__).resolve().parent.parent
API_GOAL = 1.05  # ember's time at most 5 % over faster-whisper's
OCR_GOAL = 1.6

ENGLISH = ("The weather station on the northern ridge recorded heavy snow during the night, and the wind reached "
           "sixty kilometres an hour before dawn. Our team will repair the antenna next week, after the supply "
           "flight arrives with the spare parts. Please send the maintenance report to the engineering office "
           "before Friday, together with the list of tools that were used. The generator ran for eleven hours "
           "yesterday and used less fuel than expected. In the afternoon the sky cleared and we measured the "
           "depth of the new snow at four different points along the ridge. ")
RUSSIAN = ("Сегодня мы обсудим план работы на следующую неделю. Библиотека открыта каждый день, кроме воскресенья. "
           "Мой брат живёт в большом городе и работает врачом в детской больнице. Утром шёл сильный снег, и "
           "дорогу к станции пришлось расчищать несколько часов. Отчёт о ремонте нужно отправить в главный офис "
           "до пятницы. Вечером мы проверили генератор и записали показания всех приборов в журнал. ")


def synthesise(folder: Path) -> dict[str, tuple[Path, float]]:
    """About a minute of English and of Russian speech: the texts read twice."""
    import wave

    english, russian = folder / "english.wav", folder / "russian.wav"
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(english), ENGLISH * 2], check=True)
    subprocess.run(["text2wave", "-eval", "(voice_msu_ru_nsh_clunits)", "-o", str(russian)],
                   input=(RUSSIAN * 2).encode(), check=True)
    out = {}
    for language, path in (("en", english), ("ru", russian)):
        with wave.open(str(path)) as w:
            out[language] = (path, w.getnframes() / w.getframerate())
    return out


def measure_speech(rounds: int, folder: Path) -> dict:
    from faster_whisper import WhisperModel

    from ember.engines.whisper import BEAM_SIZE, CPU_COMPUTE
    from ember.store.store import ModelStore, model_folder

    audio = synthesise(folder)
    home = folder / "home"
    store = ModelStore(home / "models")
    cores = os.cpu_count() or 1
    cases = [("whisper:tiny.en", "en"), ("whisper:base", "en"), ("whisper:base", "ru")]
    results: dict = {}
    with ember_server(home, log_path=folder / "server.log") as server, \
            httpx.Client(base_url=server.url, timeout=600) as http:
        for model_name, language in cases:
            store.ensure_bundled(model_name)
            model = store.get(model_name)
            direct = WhisperModel(str(model_folder(model)), device="cpu", compute_type=CPU_COMPUTE,
                                  cpu_threads=cores, num_workers=1)
            path, seconds = audio[language]

            texts: dict[str, set[str]] = {"ember": set(), "faster-whisper": set()}

            def through_ember(path=path, model_name=model_name, language=language, texts=texts) -> float:
                started = time.perf_counter()
                with open(path, "rb") as f:
                    response = http.post("/v1/audio/transcriptions", files={"file": (path.name, f)},
                                         data={"model": model_name, "language": language})
                response.raise_for_status()
                elapsed = time.perf_counter() - started
                texts["ember"].add(response.json()["text"])
                return elapsed

            def in_process(path=path, language=language, direct=direct, texts=texts) -> float:
                started = time.perf_counter()
                segments, _ = direct.transcribe(str(path), language=language, beam_size=BEAM_SIZE, vad_filter=True)
                pieces = [s.text.strip() for s in segments]  # decoded lazily
                elapsed = time.perf_counter() - started
                texts["faster-whisper"].add(" ".join(p for p in pieces if p))
                return elapsed

            through_ember()  # load and warm both
            in_process()
            times = in_turns(rounds, {"ember": through_ember, "faster-whisper": in_process})
            key = f"{model_name} {language}"
            results[key] = {
                "audio_seconds": seconds,
                "ember_x_realtime": spread(seconds / t for t in times["ember"]),
                "faster_whisper_x_realtime": spread(seconds / t for t in times["faster-whisper"]),
                "ember_time_over_direct": ratios(times["ember"], times["faster-whisper"]),
                "seconds": times,
                # Whisper raises the temperature and samples again where a window decodes badly at 0 (OpenAI's rule,
                # both sides): the work, and the words, can differ between runs.
                "same_text_every_run": len(texts["ember"] | texts["faster-whisper"]) == 1,
            }
            print(f"  {key}: ember {seconds / min(times['ember']):.1f}x real time, faster-whisper "
                  f"{seconds / min(times['faster-whisper']):.1f}x", flush=True)
            del direct
    return results


def _versions() -> dict:
    out = {}
    for name in ("faster-whisper", "ctranslate2", "av", "pytesseract", "pypdfium2"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    out["tesseract"] = subprocess.run(["tesseract", "--version"], capture_output=True,
                                      text=True).stdout.split("\n")[0]
    return out


def plot(speech: dict, ocr: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = list(speech)
    xs = range(len(names))
    for offset, key, label in ((-0.2, "ember_x_realtime", "ember API"),
                               (0.2, "faster_whisper_x_realtime", "faster-whisper direct")):
        values = [speech[n][key]["median"] for n in names]
        left.bar([x + offset for x in xs], values, width=0.4, label=label)
    left.set_xticks(list(xs), names, fontsize=8)
    left.set_ylabel("× real time (higher is faster)")
    left.set_title("Speech to text")
    left.legend()
    labels = ["1 page", "20 pages, 1 worker", f"20 pages, {ocr.get('workers', 'all')} workers"]
    values = [ocr["single_page_pages_per_s"], ocr["pdf_pages_per_s_one_worker"], ocr["pdf_pages_per_s_all_workers"]]
    right.bar(labels, values, color=["#888", "#888", "#d62"])
    right.set_ylabel("pages/s")
    right.set_title(f"OCR (eng+rus), parallel ×{ocr['parallel_speedup']:.2f}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"speech: {args.rounds} rounds on {os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory(prefix="ember-bench-media-") as tmp:
        speech = measure_speech(args.rounds, Path(tmp))
        print("OCR", flush=True)
        ocr = ocr_bench.measure(Path(tmp) / "ocr")
    print(f"\n{'speech':<22}{'audio s':>8}{'ember ×rt':>11}{'direct ×rt':>12}{'ember/direct time':>19}"
          f"{'min-max':>15}  same words")
    for name, r in speech.items():
        over = r["ember_time_over_direct"]
        print(f"{name:<22}{r['audio_seconds']:>8.1f}{r['ember_x_realtime']['median']:>11.2f}"
              f"{r['faster_whisper_x_realtime']['median']:>12.2f}{over['median']:>19.3f}"
              f"{over['min']:>8.2f}-{over['max']:.2f}  {'yes' if r['same_text_every_run'] else 'no'}")
    # The verdict on every round of every model together: one model's five rounds swing ±10 % here.
    pooled = spread(v for r in speech.values() for v in r["ember_time_over_direct"]["values"])
    print(f"ember's API over faster-whisper, all rounds of all models: median {pooled['median']:.3f} "
          f"(goal ≤ {API_GOAL}: {'PASS' if pooled['median'] <= API_GOAL else 'FAIL'})")
    speedup = ocr["parallel_speedup"]
    print(f"\nOCR: one page {ocr['single_page_pages_per_s']:.2f} pages/s; 20-page scanned PDF "
          f"{ocr['pdf_pages_per_s_one_worker']:.2f} pages/s on one worker, {ocr['pdf_pages_per_s_all_workers']:.2f} "
          f"on all, ×{speedup:.2f} (goal ≥ {OCR_GOAL}: {'PASS' if speedup >= OCR_GOAL else 'FAIL'})")
    machine = {"cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    report = {"machine": machine,
              "versions": _versions(), "rounds": args.rounds, "speech": speech, "api_time_over_direct": pooled,
              "ocr": ocr,
              "goals": {"api_time_over_direct_at_most": API_GOAL, "ocr_parallel_speedup_at_least": OCR_GOAL}}
    (args.out / "media.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    plot(speech, ocr, args.out / "media.png")
    print(f"wrote {args.out / 'media.json'} and {args.out / 'media.png'}")


if __name__ == "__main__":
    main()
