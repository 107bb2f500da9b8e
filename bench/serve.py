"""Serving benchmark, as `ember bench serve` runs it: see ember/bench/serve.py for the workloads and the peers.

    .venv/bin/python bench/serve.py [--quick] [--rounds 5] [--threads N] [--out bench/results] [--llama-server PATH]
"""

import argparse
from pathlib import Path

from ember.bench.serve import ServeBench, run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only W1 and W2")
    parser.add_argument("--out", type=Path, default=ServeBench.out, help="where the JSON, the PNG and the logs go")
    parser.add_argument("--threads", type=int, help="threads for every peer (default: one per core)")
    parser.add_argument("--rounds", type=int, default=ServeBench.rounds, help="rounds of W1 and W2")
    parser.add_argument("--llama-server", type=Path, help="a llama-server binary (default: built once, cached)")
    args = parser.parse_args(argv)
    run(ServeBench(quick=args.quick, out=args.out, threads=args.threads, rounds=args.rounds,
                   llama_server=args.llama_server))


if __name__ == "__main__":
    main()
