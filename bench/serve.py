"""Serving benchmark: `ember bench serve` runs the same code. See ember/bench/serve.py for the workloads."""

from ember.bench.serve import main

if __name__ == "__main__":
    main()
