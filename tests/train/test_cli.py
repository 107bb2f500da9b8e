"""`ember train` and `ember sample` without ember's optional part [train]: a one-line error that names it."""

import os
import subprocess
import sys

import pytest

# Runs ember's command line with PyTorch made unimportable, as on a plain `pip install ember`.
WITHOUT_TORCH = "import sys; sys.modules['torch'] = None; sys.argv = ['ember', *sys.argv[1:]]; import ember.__main__"


def test_the_command_line_loads_without_torch():
    code = "import sys, ember.cli.main; assert 'torch' not in sys.modules, 'torch was imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("args", [["train", "--data", "tinyshakespeare", "--name", "x", "--steps", "1"],
                                  ["sample", "x", "hello"]])
def test_missing_extra_is_a_one_line_error_naming_it(args, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBER_")}
    env.update(EMBER_HOME=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", WITHOUT_TORCH, *args], capture_output=True, text=True, timeout=60,
                          env=env)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), proc.stderr
    assert "pip install 'ember[train]'" in lines[0] and f"ember {args[0]}" in lines[0]
