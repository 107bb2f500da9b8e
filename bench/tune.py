"""Teach a bundled model made-up facts with `ember tune`, then ask them re-phrased through /api/chat.

    .venv/bin/python bench/tune.py                       # English on smollm2 and Russian on gemma3:270m, 10 min each
    .venv/bin/python bench/tune.py --sets en --time 5m   # one set, a shorter budget

Each set is a chat file the way a user writes one (bench/tune/facts_LANG.jsonl: three phrasings of each fact's
question with its answer) and a question file with a fourth phrasing that is never trained on. `ember tune` runs as
a user runs it, in a subprocess, its whole wall time counted (loading included) against the budget; then the same
run is written merged (`--resume --merge`, no more steps). A fresh `ember serve` answers every question at
temperature 0 from the base model, the adapter and the merged model; an answer counts when it holds the fact's key
word. Writes bench/results/tune.json and tune.png (loss curves and answers right).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FACTS = ROOT / "bench" / "tune"
SETS = {  # language → base model, goal (right answers of the tuned model), settings beyond ember tune's defaults
    "en": {"base": "smollm2", "goal": 16, "args": []},
    "ru": {"base": "gemma3:270m", "goal": 8, "args": []},
}


def ember(home: Path, *args: str, timeout: float = 3600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBER_")}
    env.update(EMBER_HOME=str(home), PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "ember", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def parse_seconds(value: str) -> float:
    from ember.core.durations import parse_duration

    return parse_duration(value, "--time")


def tune_set(home: Path, lang: str, budget_s: float) -> dict:
    spec = SETS[lang]
    name = f"facts-{lang}"
    # --time covers loading the base and tuning; leave half a minute for starting Python and writing the adapter.
    started = time.perf_counter()
    done = ember(home, "tune", spec["base"], "--data", str(FACTS / f"facts_{lang}.jsonl"), "--name", name,
                 "--time", f"{max(budget_s - 30, 30):.0f}s", "--val", "0", *spec["args"])
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"ember tune failed:\n{done.stderr}")
    run_dir = home / "tune" / name
    merged = ember(home, "tune", spec["base"], "--name", f"{name}-merged", "--merge", "--resume",
                   "--out", str(run_dir))
    if merged.returncode:
        raise SystemExit(f"ember tune --merge failed:\n{merged.stderr}")
    log = json.loads((run_dir / "log.json").read_text())
    return {"base": spec["base"], "model": name, "merged": f"{name}-merged", "wall_s": round(wall, 1),
            "budget_s": budget_s, "steps": log["steps"], "settings": spec["args"],
            "final_loss": log["history"][-1][2], "history": log["history"]}


def ask_all(home: Path, sets: dict) -> None:
    import ollama

    from ember.bench.harness import ember_server

    with ember_server(home) as server:
        client = ollama.Client(host=server.url, timeout=300)
        for lang, result in sets.items():
            questions = [json.loads(line) for line in (FACTS / f"facts_{lang}.questions.jsonl").open(encoding="utf-8")]
            answers = {}
            for role in ("base", "model", "merged"):
                answers[role] = [client.chat(model=result[role], messages=[{"role": "user", "content": q["question"]}],
                                             options={"temperature": 0, "num_predict": 48}).message.content
                                 for q in questions]
            result["questions"] = [
                {"question": q["question"], "expect": q["expect"],
                 **{role: {"answer": answers[role][i], "right": _right(answers[role][i], q["expect"])}
                    for role in answers}}
                for i, q in enumerate(questions)]
            for role in answers:
                result[f"right_{role}"] = sum(q[role]["right"] for q in result["questions"])
            result["adapter_equals_merged"] = sum(a == b for a, b in zip(answers["model"], answers["merged"]))


def _right(answer: str, expect: list[str]) -> bool:
    return any(e.lower() in answer.lower() for e in expect)


def plot(sets: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, bar_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for lang, r in sets.items():
        loss_ax.plot([h[1] for h in r["history"]], [h[2] for h in r["history"]], label=f"{lang}: {r['base']}")
    loss_ax.set_xlabel("seconds of tuning")
    loss_ax.set_ylabel("loss on the replies (nats per token)")
    loss_ax.set_yscale("log")
    loss_ax.grid(alpha=0.3)
    loss_ax.legend()
    roles = (("base", "base model"), ("model", "adapter"), ("merged", "merged"))
    width = 0.25
    for k, (role, label) in enumerate(roles):
        xs = [i + (k - 1) * width for i in range(len(sets))]
        bar_ax.bar(xs, [r[f"right_{role}"] / len(r["questions"]) * 100 for r in sets.values()], width, label=label)
    bar_ax.set_xticks(range(len(sets)), [f"{lang} ({r['base']})" for lang, r in sets.items()])
    bar_ax.set_ylabel("re-phrased questions answered right (%)")
    bar_ax.set_ylim(0, 100)
    bar_ax.legend()
    bar_ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", default="en,ru", help="en, ru or both")
    parser.add_argument("--time", default="10m", help="each set's budget for the whole `ember tune` command")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    budget = parse_seconds(args.time)
    sets = {}
    with tempfile.TemporaryDirectory(prefix="ember-bench-tune-") as tmp:
        home = Path(tmp)
        for lang in args.sets.split(","):
            base = SETS[lang]["base"]
            if ember(home, "pull", base).returncode:
                raise SystemExit(f"cannot pull {base}")
            print(f"{lang}: tuning {base} for at most {budget:.0f} s …", flush=True)
            sets[lang] = tune_set(home, lang, budget)
        print("asking through /api/chat …", flush=True)
        ask_all(home, sets)
    print(f"\n{'set':<5}{'base':<14}{'steps':>6}{'wall s':>8}{'base right':>12}{'adapter':>9}{'merged':>8}"
          f"{'adapter = merged':>18}  goal")
    for lang, r in sets.items():
        n = len(r["questions"])
        verdict = "PASS" if r["right_model"] >= SETS[lang]["goal"] and r["wall_s"] <= budget else "FAIL"
        print(f"{lang:<5}{r['base']:<14}{r['steps']:>6}{r['wall_s']:>8.0f}{r['right_base']:>9}/{n}"
              f"{r['right_model']:>6}/{n}{r['right_merged']:>5}/{n}{r['adapter_equals_merged']:>15}/{n}"
              f"  ≥ {SETS[lang]['goal']}/{n} in ≤ {budget:.0f} s: {verdict}")
    report = {"machine": {"cores": os.cpu_count(), "platform": platform.platform()}, "budget_s": budget,
              "sets": sets}
    (args.out / "tune.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    plot(sets, args.out / "tune.png")
    print(f"wrote {args.out / 'tune.json'} and {args.out / 'tune.png'}")


if __name__ == "__main__":
    main()
