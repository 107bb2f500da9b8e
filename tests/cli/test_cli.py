"""The `ember` command as a user runs it: a real process, a real store, the bundled model."""

import contextlib
import os
import pty
import select
import subprocess
import sys
import time

import httpx
import pytest

from ember.bench.harness import ember_env, free_port


def ember(home, *args, port=None, input=None, timeout=120):
    env = ember_env(home, port or free_port())
    return subprocess.run([sys.executable, "-m", "ember", *args], env=env, capture_output=True, text=True,
                          input=input, timeout=timeout)


@pytest.fixture(scope="module")
def short(ember_home, tmp_path_factory):
    """A model with short answers, made from a Modelfile through the CLI."""
    folder = tmp_path_factory.mktemp("modelfile")
    (folder / "Modelfile").write_text('FROM smollm2\nPARAMETER num_predict 12\nPARAMETER temperature 0\n'
                                      'SYSTEM """You answer briefly."""\n')
    result = ember(ember_home, "create", "short", "-f", str(folder / "Modelfile"))
    assert result.returncode == 0, result.stderr
    return "short"


def test_list_and_show(ember_home, short):
    listing = ember(ember_home, "list").stdout
    assert "smollm2:latest" in listing and "short:latest" in listing
    shown = ember(ember_home, "show", "smollm2").stdout
    for word in ("llama", "8192", "Q4_1", "134"):
        assert word in shown
    assert "num_predict" in ember(ember_home, "show", "short", "--parameters").stdout
    assert "im_start" in ember(ember_home, "show", "smollm2", "--template").stdout
    assert "You answer briefly." in ember(ember_home, "show", "short", "--modelfile").stdout


def test_run_in_process_with_a_prompt(ember_home, short):
    result = ember(ember_home, "run", short, "What", "is", "the", "sun?", "--verbose")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() and "tok/s" in result.stderr


def test_run_reads_stdin(ember_home, short):
    result = ember(ember_home, "run", short, "Repeat this:", input="Привет, мир")
    assert result.returncode == 0 and result.stdout.strip()


def test_run_through_a_running_server(ember_home, short, server):
    result = ember(ember_home, "run", short, "Hello", port=server.port)
    assert result.returncode == 0 and result.stdout.strip()
    loaded = [m["name"] for m in httpx.get(f"{server.url}/api/ps").json()["models"]]
    assert "short:latest" in loaded  # the server answered it, not a model loaded in the CLI's own process


def test_errors_are_one_line_and_exit_1(ember_home, tmp_path):
    result = ember(ember_home, "run", "nosuch", "hi")
    assert result.returncode == 1 and "Error: model 'nosuch' not found" in result.stderr
    assert "Traceback" not in result.stderr
    (tmp_path / "Modelfile").write_text("FROM smollm2\nPARAMETER temprature 1\n")
    result = ember(ember_home, "create", "bad", "-f", str(tmp_path / "Modelfile"))
    assert result.returncode == 1 and "line 2" in result.stderr and "Traceback" not in result.stderr
    result = ember(ember_home, "cp", "smollm2", "../escape")
    assert result.returncode == 1 and "invalid model name" in result.stderr


def test_cp_rm_export(ember_home, tmp_path):
    assert ember(ember_home, "cp", "smollm2", "mine").returncode == 0
    exported = ember(ember_home, "export", "mine", str(tmp_path / "out"))
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "out" / "mine-latest.gguf").stat().st_size > 90_000_000
    assert (tmp_path / "out" / "Modelfile").exists()
    assert ember(ember_home, "rm", "mine").returncode == 0
    assert "mine:latest" not in ember(ember_home, "list").stdout
    assert ember(ember_home, "show", "smollm2").returncode == 0  # its blob is still used by smollm2


def test_pull_known_and_unknown(ember_home):
    assert ember(ember_home, "pull", "smollm2").returncode == 0
    result = ember(ember_home, "pull", "llama3")
    assert result.returncode == 1 and "smollm2" in result.stderr


def test_ps_and_stop(ember_home, server, short):
    assert "nothing is loaded" in ember(ember_home, "ps").stdout
    assert ember(ember_home, "run", short, "hi", "--keepalive", "-1", port=server.port).returncode == 0
    listing = ember(ember_home, "ps", port=server.port).stdout
    assert "short:latest" in listing and "forever" in listing
    assert ember(ember_home, "stop", short, port=server.port).returncode == 0
    assert "short:latest" not in ember(ember_home, "ps", port=server.port).stdout


def test_serve_on_a_busy_port(ember_home, server):
    result = ember(ember_home, "serve", port=server.port, timeout=30)
    assert result.returncode == 1
    assert "already in use" in result.stderr and "EMBER_HOST" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_interactive_chat(ember_home, short):
    pid, fd = pty.fork()
    if pid == 0:
        env = ember_env(ember_home, free_port())
        os.execve(sys.executable, [sys.executable, "-m", "ember", "run", short], env)
    seen = b""

    def until(text: bytes, timeout=60.0):
        nonlocal seen
        deadline = time.time() + timeout
        while text not in seen and time.time() < deadline:
            if select.select([fd], [], [], 0.2)[0]:
                try:
                    seen += os.read(fd, 4096)
                except OSError:
                    break
        assert text in seen, seen.decode(errors="replace")

    until(b">>> ")
    os.write(fd, b"/set parameter num_predict 5\n")
    until(b"set num_predict = 5")
    os.write(fd, b"/set parameter bogus 1\n")
    until(b"unknown option 'bogus'")
    os.write(fd, b'"""Hello\n')
    os.write(fd, b'there"""\n')
    seen = b""
    until(b">>> ")
    assert b"llama_context" not in seen  # llama.cpp's load chatter stays out of the terminal
    os.write(fd, b"/bye\n")
    with contextlib.suppress(OSError):  # read to the end, so the child never blocks writing to a full terminal
        while os.read(fd, 4096):
            pass
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
