"""How fast does ember read images? OCR pages per second, English and Russian (eng+rus), through ember.media.ocr.

- one page: an A4 page at 300 dpi holding ~25 lines of mixed English and Russian text (DejaVu Sans, 11 pt), read
  a few times by one Tesseract process; pages/s is the mean over the runs;
- a scanned book: a 20-page image-only PDF (the same kind of pages, each with its own text, as a scanner writes
  them: a picture per page, no text layer), rendered by PDFium at 300 dpi and read with one worker, then with one per
  core. Goal: all cores at least 1.6x one worker's pages/s, which only holds with one thread per Tesseract process
  (see ember.engines.tesseract).

Each figure comes with the share of the words read right (difflib's match of the word sequences), so that speed is
never bought with accuracy. bench/media.py imports `measure` and writes the JSON and the plot; run alone, this prints
a table:

    .venv/bin/python bench/ocr.py
"""

import difflib
import os
import random
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ember.bench.harness import machine_cpu_s
from ember.media import ocr

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
A4 = (2480, 3508)  # pixels at 300 dpi
FONT_PX = 46  # 11 pt at 300 dpi
LINES = 25
PDF_PAGES = 20
SINGLE_RUNS = 3
GOAL = 1.6

EN = ("the regional train service announced a new timetable for the winter months after a long discussion with "
      "residents and the council which asked for more time to finish the project before the end of the year")
RU = ("городской совет объявляет новое расписание на зимние месяцы после долгого обсуждения с жителями района "
      "которые просят больше времени чтобы закончить проект до конца года")


def page_text(seed: int) -> list[str]:
    """~25 lines, English and Russian in turn, the same for the same seed."""
    rng = random.Random(seed)
    lines = []
    for i in range(LINES):
        words = (EN if i % 2 == 0 else RU).split()
        line = " ".join(rng.choice(words) for _ in range(rng.randint(7, 10)))
        lines.append(line[0].upper() + line[1:] + ".")
    return lines


def draw_page(lines: list[str]) -> Image.Image:
    font = ImageFont.truetype(FONT, FONT_PX)
    image = Image.new("L", A4, 255)
    pen = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        pen.text((236, 300 + i * 112), line, font=font, fill=0)
    return image


def words_matched(truth: list[str], pages: list[ocr.Page]) -> float:
    expected = " ".join(truth).split()
    found = " ".join(p.text for p in pages).split()
    matcher = difflib.SequenceMatcher(a=expected, b=found, autojunk=False)
    return sum(block.size for block in matcher.get_matching_blocks()) / len(expected)


def measure(workdir: Path) -> dict:
    """Pages/s of one A4 page, and of a 20-page scanned PDF on one worker and on one per core."""
    workdir.mkdir(parents=True, exist_ok=True)
    # Other work on the machine takes cores from the parallel run first: how much of it there was is reported.
    began, machine_before, mine_before = time.perf_counter(), machine_cpu_s(), sum(os.times()[:4])
    single_truth = page_text(0)
    single = workdir / "page.png"
    draw_page(single_truth).save(single, dpi=(300, 300))
    book_truth = [page_text(seed) for seed in range(1, PDF_PAGES + 1)]
    book = workdir / "scan.pdf"
    first, *rest = (draw_page(lines) for lines in book_truth)
    first.save(book, save_all=True, append_images=rest, resolution=300)

    ocr.read(single, workers=1)  # warm: the language data into the page cache, pytesseract's version check
    times, pages = [], []
    for _ in range(SINGLE_RUNS):
        started = time.perf_counter()
        pages = ocr.read(single, workers=1)
        times.append(time.perf_counter() - started)
    workers = os.cpu_count() or 1
    runs = {}
    for count in (1, workers):
        started = time.perf_counter()
        read = ocr.read(book, workers=count)
        runs[count] = (time.perf_counter() - started, read)
    one_s, one_pages = runs[1]
    all_s, all_pages = runs[workers]
    book_words = [line for lines in book_truth for line in lines]
    mine = sum(os.times()[:4]) - mine_before  # this process and its tesseract children
    others = max(0.0, machine_cpu_s() - machine_before - mine) / ((time.perf_counter() - began) * workers)
    return {
        "languages": "eng+rus", "dpi": 300, "lines_per_page": LINES,
        "single_page_pages_per_s": len(times) / sum(times), "single_page_seconds": times,
        "single_page_words_matched": words_matched(single_truth, pages),
        "pdf_pages": PDF_PAGES, "workers": workers,
        "pdf_seconds_one_worker": one_s, "pdf_seconds_all_workers": all_s,
        "pdf_pages_per_s_one_worker": PDF_PAGES / one_s, "pdf_pages_per_s_all_workers": PDF_PAGES / all_s,
        "parallel_speedup": one_s / all_s,
        "pdf_words_matched_one_worker": words_matched(book_words, one_pages),
        "pdf_words_matched_all_workers": words_matched(book_words, all_pages),
        "cpu_share_of_other_processes": others,
    }


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="ember-bench-ocr-") as tmp:
        print(f"OCR on {os.cpu_count()} cores: one A4 page x{SINGLE_RUNS}, then a {PDF_PAGES}-page scanned PDF "
              "on one worker and on all", flush=True)
        r = measure(Path(tmp))
    print(f"\n{'eng+rus, 300 dpi A4':<36}{'pages/s':>9}{'seconds':>9}{'words right':>13}")
    print(f"{'one page':<36}{r['single_page_pages_per_s']:>9.2f}{sum(r['single_page_seconds']) / SINGLE_RUNS:>9.2f}"
          f"{100 * r['single_page_words_matched']:>12.1f}%")
    for label, key in ((f"{PDF_PAGES}-page scanned PDF, 1 worker", "one_worker"),
                       (f"{PDF_PAGES}-page scanned PDF, {r['workers']} workers", "all_workers")):
        print(f"{label:<36}{r[f'pdf_pages_per_s_{key}']:>9.2f}{r[f'pdf_seconds_{key}']:>9.1f}"
              f"{100 * r[f'pdf_words_matched_{key}']:>12.1f}%")
    verdict = "PASS" if r["parallel_speedup"] >= GOAL else "FAIL"
    print(f"parallel speedup: x{r['parallel_speedup']:.2f} (goal >= {GOAL}): {verdict}")
    print(f"other processes' share of the CPU during the run: {100 * r['cpu_share_of_other_processes']:.1f} %")
    if r["cpu_share_of_other_processes"] > 0.1:
        print("warning: the machine was busy with other work; the parallel run suffers most: run it again quietly")


if __name__ == "__main__":
    main()
