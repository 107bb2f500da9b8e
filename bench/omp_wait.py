"""How PyTorch's OpenMP wait policy behaves when another process wants the cores: why `ember train` and `ember tune`
set OMP_WAIT_POLICY=PASSIVE.

    .venv/bin/python bench/omp_wait.py            # about a minute and a half

A training step (forward and backward through 30 linear layers of 576, batch 256, float32) is timed in a fresh
process for each setting: all cores with OpenMP's default (spinning) waits, all cores with passive waits, and one
thread; each on a quiet machine and again while one busy-looping process runs beside it. Settings alternate, so a
drift in the machine touches them alike. Writes bench/results/omp_wait.json and .png.
"""

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

STEP = """
import sys, time, torch
torch.manual_seed(0)
torch.set_num_threads(int(sys.argv[1]))
model = torch.nn.Sequential(*[torch.nn.Linear(576, 576) for _ in range(30)])
x = torch.randn(256, 576)
def step():
    model(x).square().mean().backward()
step()
started, steps = time.perf_counter(), 0
while time.perf_counter() - started < float(sys.argv[2]):
    step()
    steps += 1
print(steps / (time.perf_counter() - started))
"""


def steps_per_s(threads: int, policy: str | None, seconds: float) -> float:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    out = subprocess.run([sys.executable, "-c", STEP, str(threads), str(seconds)], env=env, capture_output=True,
                         text=True, check=True)
    return float(out.stdout)


def busy_loop() -> None:
    while True:
        pass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=6.0, help="each measurement's length")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args()
    cores = len(os.sched_getaffinity(0))
    settings = [(f"{cores} threads, spinning waits (OpenMP's default)", cores, None),
                (f"{cores} threads, OMP_WAIT_POLICY=PASSIVE (ember's)", cores, "PASSIVE"),
                ("1 thread", 1, None)]
    results = {}
    for load in ("quiet", "one busy process beside it"):
        burner = None
        if load != "quiet":
            burner = multiprocessing.get_context("spawn").Process(target=busy_loop, daemon=True)
            burner.start()
        try:
            for label, threads, policy in settings:
                results.setdefault(label, {})[load] = steps_per_s(threads, policy, args.seconds)
                print(f"{load:>28}  {label:<48} {results[label][load]:6.2f} steps/s", flush=True)
        finally:
            if burner:
                burner.terminate()
                burner.join()
    print("\n| setting | quiet, steps/s | one busy process beside it, steps/s |\n| --- | --- | --- |")
    for label, r in results.items():
        print(f"| {label} | {r['quiet']:.2f} | {r['one busy process beside it']:.2f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"cores": cores, "load_average": os.getloadavg(), "seconds": args.seconds, "steps_per_s": results}
    (args.out / "omp_wait.json").write_text(json.dumps(record, indent=2) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.38
    for i, load in enumerate(("quiet", "one busy process beside it")):
        ax.bar([x + i * width for x in range(len(results))], [r[load] for r in results.values()], width, label=load)
    ax.set_xticks([x + width / 2 for x in range(len(results))], [label.split(" (")[0] for label in results],
                  fontsize=8)
    ax.set_ylabel("training steps per second")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / "omp_wait.png", dpi=110)
    print(f"wrote {args.out / 'omp_wait.json'} and .png")


if __name__ == "__main__":
    main()
