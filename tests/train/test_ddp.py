"""Two CPU processes under torchrun train one model through DistributedDataParallel on gloo."""

import json
import os
import subprocess
import sys

from tests.train.helpers import TINY


def test_torchrun_two_processes(tmp_path, english_file):
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBER_")}
    env.update(EMBER_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           "2", "-m", "ember", "train", "--data", str(english_file), "--out", str(out),
                           "--tokenizer", "char", "--steps", "6", "--device", "cpu", *TINY],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = json.loads((out / "log.json").read_text())
    assert log["steps"] == 6
    # Two replicas each see a batch of 8 windows of 64 tokens per step.
    assert log["tokens"] == 6 * 2 * 8 * 64
    assert (out / "ckpt.pt").is_file()
