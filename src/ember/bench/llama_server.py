"""llama.cpp's own C++ server (`llama-server`), the peer to beat: found in the cache, or built once from the llama.cpp
source inside the pinned llama-cpp-python sdist, so it runs the very llama.cpp that ember runs.

    python -m ember.bench.llama_server          # build (or find) it and print its path

The binary is cached in $XDG_CACHE_HOME/ember/llama-server-<llama-cpp-python version>/ (~/.cache/ember/...), with
the cmake flags it was built with; a later call with the same version and flags reuses it.
"""

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from ember.bench.harness import ServerProcess, free_port

# As the Makefile's CMAKE_ARGS builds llama-cpp-python: a build for any x86-64 CPU. Static, so the cached binary
# needs nothing from the build folder. Nothing is fetched from the network: no libcurl or OpenSSL (it never downloads
# models here), and no web UI (the build would download a prebuilt one; the server runs with an empty page instead).
BASE_CMAKE_ARGS = ("-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF",
                   "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
                   "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF")


def pinned_version() -> str:
    """The installed llama-cpp-python's version: the sdist whose llama.cpp is built."""
    import llama_cpp

    return llama_cpp.__version__


def cache_dir(version: str | None = None) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ember" / f"llama-server-{version or pinned_version()}"


def cmake_args() -> list[str]:
    """The fixed flags, then the environment's CMAKE_ARGS (as pip passed them to llama-cpp-python's build); a -D
    given twice keeps its last value, so `make bench` (which exports -DGGML_NATIVE=OFF) and a plain shell agree."""
    merged: dict[str, str] = {}
    for arg in [*BASE_CMAKE_ARGS, *shlex.split(os.environ.get("CMAKE_ARGS", ""))]:
        key = arg.split("=", 1)[0].split(":", 1)[0] if arg.startswith("-D") else arg
        merged[key] = arg
    return list(merged.values())


def _say(message: str) -> None:
    print(f"llama-server: {message}", file=sys.stderr, flush=True)


def cached(version: str | None = None) -> Path | None:
    """The cached binary, if it was built from this version with these flags."""
    folder = cache_dir(version)
    binary, info = folder / "llama-server", folder / "build.json"
    if not (binary.is_file() and os.access(binary, os.X_OK) and info.is_file()):
        return None
    try:
        if json.loads(info.read_text()).get("cmake_args") != cmake_args():
            return None
    except (OSError, ValueError):
        return None
    return binary


def find_or_build(version: str | None = None, jobs: int = 2) -> Path:
    """The path of a `llama-server` built from the pinned llama-cpp-python's llama.cpp; builds it the first time."""
    version = version or pinned_version()
    binary = cached(version)
    if binary:
        return binary
    for tool in ("cmake", "c++"):
        if not shutil.which(tool):
            raise SystemExit(f"llama-server: building it needs `{tool}`, which is not installed; run "
                             "`make system-deps` (cmake and a C++ compiler), then try again")
    folder = cache_dir(version)
    folder.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ember-llama-server-") as tmp:
        source = _unpacked_source(version, Path(tmp))
        build = Path(tmp) / "build"
        args = cmake_args()
        _say(f"configuring llama.cpp from llama-cpp-python {version}'s sdist ({' '.join(args)})")
        _run(["cmake", "-S", str(source), "-B", str(build), *args], build.parent / "cmake.log")
        _say(f"compiling the llama-server target with {jobs} jobs (several minutes on two cores)")
        _run(["cmake", "--build", str(build), "--target", "llama-server", "--config", "Release", "-j", str(jobs)],
             build.parent / "build.log")
        built = next((p for p in (build / "bin" / "llama-server", build / "bin" / "Release" / "llama-server")
                      if p.is_file()), None)
        if built is None:
            raise SystemExit(f"llama-server: the build finished but left no binary under {build / 'bin'}")
        staged = folder / "llama-server.tmp"
        shutil.copy2(built, staged)
        staged.replace(folder / "llama-server")
    minutes = (time.monotonic() - started) / 60
    (folder / "build.json").write_text(json.dumps({
        "llama_cpp_python": version, "cmake_args": args, "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "build_minutes": round(minutes, 1)}, indent=2))
    _say(f"built in {minutes:.1f} min, cached at {folder / 'llama-server'}")
    return folder / "llama-server"


def _run(command: list[str], log: Path) -> None:
    with open(log, "wb") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"llama-server: `{' '.join(command[:3])} ...` failed ({done.returncode}):\n{tail}")


def _unpacked_source(version: str, tmp: Path) -> Path:
    """llama.cpp's source from the sdist: pip downloads it (or takes it from its cache), then it is unpacked."""
    sdist = _sdist(version, tmp)
    _say(f"unpacking {sdist.name}")
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp / "src", filter="data")
    roots = [p for p in (tmp / "src").iterdir() if p.is_dir()]
    source = roots[0] / "vendor" / "llama.cpp" if len(roots) == 1 else None
    if source is None or not (source / "CMakeLists.txt").is_file():
        raise SystemExit(f"llama-server: {sdist.name} holds no vendor/llama.cpp/CMakeLists.txt")
    return source


def _sdist(version: str, tmp: Path) -> Path:
    kept = cache_dir(version) / f"llama_cpp_python-{version}.tar.gz"
    if kept.is_file():
        return kept
    _say(f"downloading the llama-cpp-python=={version} sdist with pip")
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
               f"llama-cpp-python=={version}", "-d", str(tmp / "sdist")]
    done = subprocess.run(command, capture_output=True, text=True)
    found = sorted((tmp / "sdist").glob("llama_cpp_python-*.tar.gz")) if (tmp / "sdist").is_dir() else []
    if done.returncode != 0 or not found:
        raise SystemExit(f"llama-server: `pip download llama-cpp-python=={version}` failed (PyPI unreachable?):\n"
                         f"{(done.stderr or done.stdout)[-2000:]}")
    shutil.copy2(found[0], kept)  # kept beside the binary: a rebuild with other flags needs no download
    digest = hashlib.sha256(kept.read_bytes()).hexdigest()
    _say(f"{found[0].name} sha256 {digest}")
    return kept


def llama_server(binary: Path, gguf: Path, *, threads: int, slots: int, ctx_per_slot: int, port: int | None = None,
                 alias: str = "smollm2", log_path: Path | None = None) -> ServerProcess:
    """`llama-server -np SLOTS` on loopback, one context of SLOTS × ctx_per_slot tokens (llama.cpp splits it evenly
    among the slots), continuous batching and its prompt cache at their defaults."""
    port = port or free_port()
    command = [str(binary), "--model", str(gguf), "--alias", alias, "--host", "127.0.0.1", "--port", str(port),
               "--threads", str(threads), "--threads-batch", str(threads), "--parallel", str(slots),
               "--ctx-size", str(slots * ctx_per_slot), "--cont-batching"]
    return ServerProcess("llama-server", command, port, ready_path="/health", log_path=log_path)


def main() -> None:
    print(find_or_build())


if __name__ == "__main__":
    main()
