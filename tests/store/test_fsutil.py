import subprocess
import sys

import pytest

from ember.fsutil import atomic_file, atomic_write_bytes, atomic_write_text, open_temp, remove_partials, temp_dir


def test_atomic_writes(tmp_path):
    target = tmp_path / "deep" / "er" / "f.txt"
    atomic_write_text(target, "héllo")
    assert target.read_text(encoding="utf-8") == "héllo"
    atomic_write_bytes(target, b"again")
    assert target.read_bytes() == b"again"
    assert [p.name for p in target.parent.iterdir()] == ["f.txt"]


def test_atomic_file_keeps_the_old_content_when_the_write_fails(tmp_path):
    target = tmp_path / "f.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(target) as f:
        f.write(b"half of the new")
        raise RuntimeError("killed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.json"]
    with atomic_file(target) as f:
        f.write(b"new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_cleanup_removes_what_a_killed_writer_left_but_not_a_live_write(tmp_path):
    # A child process starts an atomic write and is killed with SIGKILL in the middle of it.
    code = ("import os, pathlib; from ember.fsutil import atomic_file\n"
            f"with atomic_file(pathlib.Path({str(tmp_path / 'target')!r})) as f:\n"
            "    f.write(b'half'); f.flush(); os.kill(os.getpid(), 9)\n")
    assert subprocess.run([sys.executable, "-c", code]).returncode == -9
    leftovers = list(tmp_path.glob(".tmp-*"))
    assert len(leftovers) == 1 and not (tmp_path / "target").exists()

    live, live_path = open_temp(tmp_path / "sub")  # another writer, still at work
    with live:
        assert remove_partials(tmp_path) == 1
        assert not leftovers[0].exists() and live_path.exists()
    assert remove_partials(tmp_path) == 1 and not live_path.exists()  # its writer has gone (lock released)
    assert remove_partials(tmp_path / "nowhere") == 0


def test_a_temp_folder_is_left_alone_while_its_writer_lives_and_cleared_after_a_kill(tmp_path):
    with temp_dir(tmp_path) as live:
        (live / ".tmp-inner.gguf").write_bytes(b"x" * 10)  # unlocked itself: the folder's lock covers it
        (live / "model.gguf").write_bytes(b"y")
        assert remove_partials(tmp_path) == 0 and (live / ".tmp-inner.gguf").exists()
    assert list(tmp_path.iterdir()) == []  # gone with the block

    code = ("import os, pathlib; from ember.fsutil import temp_dir\n"
            f"with temp_dir(pathlib.Path({str(tmp_path)!r})) as d:\n"
            "    (d / 'model.gguf').write_bytes(b'half'); os.kill(os.getpid(), 9)\n")
    assert subprocess.run([sys.executable, "-c", code]).returncode == -9
    [left] = tmp_path.iterdir()
    assert left.name.startswith(".tmp-") and (left / "model.gguf").exists()
    assert remove_partials(tmp_path) == 1 and list(tmp_path.iterdir()) == []
