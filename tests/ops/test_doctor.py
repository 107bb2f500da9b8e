"""`ember doctor`: each kind of damage is found with the right status and fix, --fix clears what it may, and the
command's exit code and JSON are what scripts (the fault-injection test among them) rely on."""

import json
import os
import socket
from collections import namedtuple

import pytest
import typer
from typer.testing import CliRunner

from ember.cli.doctor import doctor
from ember.engines import registry
from ember.engines.base import EngineStatus
from ember.fsutil import open_temp
from ember.ops import doctor as doctor_ops
from ember.ops.doctor import Status, mem_available, run_checks
from ember.store.modelfile import CreateSpec
from ember.store.store import ModelStore
from tests.helpers import settings as make_settings
from tests.helpers import write_gguf


def check(settings, *, load_models=False, verify_digests=True, fix=False):
    return run_checks(settings, load_models=load_models, verify_digests=verify_digests, fix=fix)


def problems(checks):
    return [c for c in checks if c.status is not Status.OK]


def only(checks, status=Status.FAIL, name="store"):
    found = [c for c in checks if c.status is status and c.name == name]
    assert len(found) == 1, checks
    return found[0]


def model_blob(store: ModelStore, name: str):
    return store.get(name).model_path


@pytest.fixture
def home(tmp_path, models):
    """A home whose store holds the three tiny models a, b and c."""
    return make_settings(tmp_path)


def test_a_clean_store_is_all_ok(home):
    checks = check(home)
    assert problems(checks) == []
    assert {c.name for c in checks} == {"store", "disk", "memory", "port", "keys"}
    assert checks[0].message == "3 models, 6 blobs, digests right"  # a GGUF and a config each
    assert only(checks, Status.OK, "keys").message == "no API keys configured"


def test_an_empty_home_is_ok_and_left_untouched(tmp_path):
    home = tmp_path / "fresh"
    checks = check(make_settings(home))
    assert problems(checks) == []
    assert "no models yet" in checks[0].message
    assert not home.exists()  # read-only: not even the folders are made


def test_a_missing_blob_fails_and_says_how_to_restore_it(home, models):
    model_blob(models, "a").unlink()
    failure = only(check(home))
    assert "'a:latest' is damaged" in failure.message and "model blob" in failure.message
    assert "is missing" in failure.message
    assert failure.fix.startswith("ember create a:latest -f Modelfile")


def test_a_blob_with_wrong_bytes_fails_unless_quick(home, models):
    path = model_blob(models, "b")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    failure = only(check(home))
    assert "'b:latest' is damaged" in failure.message and "digest is sha256:" in failure.message
    # Pulling or creating again would reuse the bad blob while a model still names it: remove first.
    assert failure.fix.startswith("ember rm b:latest, then ember create b:latest")
    assert problems(check(home, verify_digests=False)) == []  # --quick checks sizes only


def test_a_blob_of_the_wrong_size_fails(home, models):
    path = model_blob(models, "c")
    with open(path, "ab") as f:
        f.write(b"extra")
    failure = only(check(home, verify_digests=False))
    size = path.stat().st_size
    assert f"has {size} bytes, not {size - 5}" in failure.message


def test_a_bad_blob_shared_by_two_names_needs_both_removed(home, models):
    models.copy("a", "a2")
    path = model_blob(models, "a")
    path.write_bytes(b"x" * path.stat().st_size)
    failures = [c for c in check(home) if c.status is Status.FAIL]
    assert len(failures) == 2
    assert all(c.fix.startswith("ember rm a2:latest a:latest, then") for c in failures)


def test_a_damaged_manifest_fails_and_nothing_counts_as_unused(home, models):
    (models.manifests / "a" / "latest").write_text("{not json")
    checks = check(home)
    failure = only(checks)
    assert "'a:latest' has a damaged manifest" in failure.message
    assert failure.fix.startswith("ember rm a:latest")
    assert not any("no model uses" in c.message for c in checks)  # a's blobs are not offered for removal


def test_files_in_the_manifests_tree_that_are_not_manifests_fail(home, models):
    (models.manifests / "README").write_text("notes")
    (models.manifests / "a" / "bad name!").write_text("{}")
    failures = [c for c in check(home) if c.status is Status.FAIL]
    assert len(failures) == 2
    assert all("is not a manifest ember can use" in c.message and "move it out" in c.fix for c in failures)


def test_stray_partial_files_warn_but_a_live_writer_is_left_alone(home, models):
    (models.blobs.root / ".tmp-killed").write_bytes(b"half a blob")
    killed_convert = home.models / ".tmp-convert"  # what a killed ember convert leaves: a folder
    killed_convert.mkdir()
    (killed_convert / "model.gguf").write_bytes(b"half a model")
    writing, path = open_temp(models.manifests / "a")  # locked, as a writer holds it
    try:
        warning = only(check(home), Status.WARN)
        assert warning.message == "2 partial files left by interrupted writes (23 B)"
        assert warning.fix == "run: ember doctor --fix"
        check(home, fix=True)
        assert path.exists() and not (models.blobs.root / ".tmp-killed").exists() and not killed_convert.exists()
    finally:
        writing.close()


def test_an_unused_blob_warns_with_its_size(home, models):
    models.blobs.write_chunks([b"orphan"])
    warning = only(check(home), Status.WARN)
    assert warning.message == "1 blob no model uses (6 B)"
    assert warning.fix == "run: ember doctor --fix"


def test_a_keys_file_others_can_read_fails(home):
    home.keys_file.write_text('{"keys": []}')
    home.keys_file.chmod(0o644)
    failure = only(check(home), name="keys")
    assert "mode 0644" in failure.message
    assert failure.fix == f"chmod 600 {home.keys_file}"


@pytest.mark.parametrize("text", ["{oops", "{}", '{"keys": [{"name": "a"}]}'])
def test_a_keys_file_that_serve_would_refuse_fails(home, text):
    home.keys_file.write_text(text)
    home.keys_file.chmod(0o600)
    failure = only(check(home), name="keys")
    assert "is damaged" in failure.message and "refuses to start" in failure.fix


def test_fix_clears_what_it_may_and_a_second_run_is_clean(home, models):
    (models.root / ".tmp-a").write_bytes(b"x")
    (home.home / ".tmp-b").write_bytes(b"y")
    orphan = models.blobs.path(models.blobs.write_chunks([b"orphan"]))
    home.keys_file.write_text('{"keys": []}')
    home.keys_file.chmod(0o664)
    fixed = check(home, fix=True)
    assert problems(fixed) == []
    assert [c.message.split(" ")[0] for c in fixed if c.message.startswith(("removed", "/"))][:3] == [
        "removed", "removed", str(home.keys_file)]
    assert not orphan.exists() and not list(home.home.rglob(".tmp-*"))
    assert home.keys_file.stat().st_mode & 0o777 == 0o600
    again = check(home, fix=True)
    assert problems(again) == [] and not any("removed" in c.message or "now 0600" in c.message for c in again)
    assert len(models.list()) == 3


def test_fix_leaves_partials_and_blobs_alone_while_a_server_runs(home, models, monkeypatch):
    monkeypatch.setattr(doctor_ops, "_serving", lambda settings: True)
    (models.root / ".tmp-a").write_bytes(b"x")
    orphan = models.blobs.path(models.blobs.write_chunks([b"orphan"]))
    checks = check(home, fix=True)
    warnings = [c for c in checks if c.status is Status.WARN]
    assert len(warnings) == 2 and all("stop" in c.fix for c in warnings)
    assert orphan.exists() and (models.root / ".tmp-a").exists()
    assert only(checks, Status.OK, "port").message.startswith("ember is serving at")
    assert "could not ask the server" in only(checks, Status.OK, "memory").message  # no real server behind it


def test_a_port_held_by_another_program_fails(home):
    with socket.socket() as other:
        other.bind((home.host, home.port))
        other.listen()
        failure = only(check(home), name="port")
    assert failure.message == f"{home.host}:{home.port} is in use by another program"
    assert f"EMBER_HOST=127.0.0.1:{home.port + 1}" in failure.fix


def test_low_disk_warns(home, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(doctor_ops.shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 10**8, 10**8))
    warning = only(check(home), Status.WARN, "disk")
    assert warning.message.startswith("100.0 MB free for home")
    assert "ember rm" in warning.fix and "EMBER_MODELS" in warning.fix


def test_memory_too_small_for_the_largest_model_warns(home, monkeypatch):
    monkeypatch.setattr(doctor_ops, "mem_available", lambda: 1000)
    warning = only(check(home), Status.WARN, "memory")
    assert "1.0 KB available" in warning.message and "could not be loaded" in warning.message
    limited = make_settings(home.home, max_memory=1000)
    assert "EMBER_MAX_MEMORY" in only(check(limited), Status.WARN, "memory").message


def test_memory_unknown_is_not_a_problem(home, monkeypatch):
    monkeypatch.setattr(doctor_ops, "mem_available", lambda: None)
    assert "unknown" in only(check(home), Status.OK, "memory").message


def test_mem_available_reads_meminfo(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemAvailable:    2000000 kB\n")
    assert mem_available(meminfo) == 2000000 * 1024
    assert mem_available(tmp_path / "absent") is None


class FakeEngine:
    def status(self):
        return EngineStatus(weights_bytes=1000, cache_bytes=0, context=doctor_ops.LOAD_CONTEXT, slots=1,
                            busy_slots=0, threads=1)

    def close(self):
        pass


class FakeEngines:
    """Loads every model but b (b's file is refused); each needs `need` bytes."""

    need = 1000
    loads: list = []

    def estimate(self, spec):
        return self.need

    def load(self, spec):
        self.loads.append(spec.model_path)
        if spec.model_path == self.refused:
            raise ValueError("llama.cpp said no")
        assert spec.num_ctx == doctor_ops.LOAD_CONTEXT and spec.num_parallel == 1
        return FakeEngine()


def test_each_model_file_is_loaded_once_and_failures_name_the_model(home, models, monkeypatch):
    FakeEngines.refused, FakeEngines.loads = model_blob(models, "b"), []
    monkeypatch.setattr(registry, "Engines", FakeEngines)
    models.copy("a", "a2")
    checks = check(home, load_models=True)
    assert only(checks, Status.OK, "models").message == "3 models load with llama.cpp"  # a, a2 and c
    assert len(FakeEngines.loads) == 3  # a and a2 are one file
    failure = only(checks, Status.FAIL, "models")
    assert failure.message == "'b:latest' does not load: ValueError: llama.cpp said no"
    assert failure.fix == "ember rm b:latest, then ember create b:latest -f Modelfile"


def test_a_model_too_big_for_memory_is_skipped_with_a_warning(home, models, monkeypatch):
    FakeEngines.refused = None
    monkeypatch.setattr(registry, "Engines", FakeEngines)
    monkeypatch.setattr(doctor_ops, "mem_available", lambda: 500)
    warnings = [c for c in check(home, load_models=True) if c.name == "models"]
    assert len(warnings) == 3 and all(c.status is Status.WARN and "not tried" in c.message for c in warnings)


# -- the command -------------------------------------------------------------------------------------------------------


@pytest.fixture
def cli(home, monkeypatch):
    for name in ("EMBER_MODELS", "EMBER_API_KEYS", "EMBER_MAX_MEMORY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("EMBER_HOME", str(home.home))
    monkeypatch.setenv("EMBER_HOST", f"127.0.0.1:{home.port}")
    app = typer.Typer()
    app.callback()(lambda: None)  # keeps `doctor` a subcommand, as in ember's app
    app.command()(doctor)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, ["doctor", "--no-load", *args])


def test_the_command_exits_0_when_all_is_well_and_on_warnings(cli, models):
    result = cli()
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok   store   3 models")
    assert "no problems found" in result.output
    (models.root / ".tmp-x").write_bytes(b"x")
    result = cli()
    assert result.exit_code == 0
    assert "warn store   1 partial file" in result.output and "→ run: ember doctor --fix" in result.output


def test_the_command_exits_1_on_a_failure(cli, models):
    model_blob(models, "a").unlink()
    result = cli("--quick")
    assert result.exit_code == 1
    assert "FAIL store   model 'a:latest' is damaged" in result.output
    assert "1 failed, 0 warnings" in result.output


def test_the_command_prints_json_for_scripts(cli, models):
    model_blob(models, "a").unlink()
    result = cli("--json")
    assert result.exit_code == 1
    checks = json.loads(result.stdout)
    assert set(checks[0]) == {"name", "status", "message", "fix"}
    assert [c["name"] for c in checks if c["status"] == "fail"] == ["store"]


def test_the_command_fixes(cli, home):
    home.keys_file.write_text('{"keys": []}')
    os.chmod(home.keys_file, 0o644)
    assert cli().exit_code == 1
    assert cli("--fix").exit_code == 0
    assert home.keys_file.stat().st_mode & 0o777 == 0o600


# -- with llama.cpp ----------------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_the_bundled_model_loads(ember_home):
    checks = check(make_settings(ember_home), load_models=True)
    assert "load with" in only(checks, Status.OK, "models").message  # with llama.cpp, and ONNX Runtime for minilm
    # Other tests may add models to the shared home; this one is about the bundled model.
    assert not any(c.status is Status.FAIL and "smollm2" in c.message for c in checks), checks


@pytest.mark.integration
def test_a_gguf_llama_cpp_cannot_load_fails(tmp_path):
    store = ModelStore(tmp_path / "models")
    store.create("tiny", CreateSpec(from_=str(write_gguf(tmp_path / "tiny.gguf"))))
    failure = only(check(make_settings(tmp_path), load_models=True), Status.FAIL, "models")
    assert failure.message.startswith("'tiny:latest' does not load: ")
    assert "llama.cpp" in failure.message
    assert failure.fix == "ember rm tiny:latest, then ember create tiny:latest -f Modelfile"
