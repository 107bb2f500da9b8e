"""`ember doctor`: checks the store, the models, disk, memory, the port and the keys file, and says what to do about
each problem it finds.

Read-only unless `fix` is given; even then it only removes what is provably garbage (partial files of killed writers,
blobs no manifest names) and tightens the keys file's mode. A fault-injection test runs it after every restart, so
its verdict must be exact: a `fail` means the store or the setup is broken, a `warn` means it works but wastes space
or may run short.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ember.config import Settings
from ember.core.errors import BadRequest, EmberError
from ember.core.humanize import plural as _plural
from ember.core.humanize import size as _size
from ember.fsutil import TMP_PREFIX, remove_partials, stray_partials
from ember.ops.keys import KeysFile
from ember.store import bundled, manifests
from ember.store.manifests import Manifest, layer_kind
from ember.store.names import parse_name

if TYPE_CHECKING:
    from ember.store.store import Model, ModelStore

GB = 10**9
LOAD_CONTEXT = 512  # enough to prove the weights and a context can be set up, small enough to load fast


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass
class Check:
    name: str  # what was checked: store, models, disk, memory, port, keys
    status: Status
    message: str
    fix: str = ""  # what to do about it, a command where there is one

    def to_dict(self) -> dict[str, str]:
        return {**asdict(self), "status": str(self.status)}


def _remake(name: str) -> str:
    """The command that writes a model's files again."""
    return f"ember pull {name}" if bundled.find(parse_name(name)) else f"ember create {name} -f Modelfile"


# -- the store ---------------------------------------------------------------------------------------------------------


@dataclass
class _Store:
    """What one read-only pass over the store found."""

    root: Path
    manifests: list[Manifest] = field(default_factory=list)  # the ones that parse
    checks: list[Check] = field(default_factory=list)
    damaged: set[str] = field(default_factory=set)  # names whose blobs are missing or wrong
    tree_intact: bool = True  # every file in the manifests tree is a manifest ember can read

    @property
    def blobs(self) -> Path:
        return self.root / "blobs"

    def blob_path(self, digest: str) -> Path:
        return self.blobs / digest.replace(":", "-")

    @property
    def healthy(self) -> list[Manifest]:
        return [m for m in self.manifests if str(m.name) not in self.damaged]


def _scan_manifests(store: _Store) -> None:
    tree = store.root / "manifests"
    if not tree.is_dir():
        return
    for path in sorted(tree.rglob("*")):
        if path.is_dir() or path.name.startswith(TMP_PREFIX):  # partial files are reported on their own
            continue
        parts = path.relative_to(tree).parts
        try:
            if len(parts) != 2:
                raise BadRequest("manifests live at manifests/MODEL/TAG")
            name = parse_name(":".join(parts))
        except BadRequest as e:
            store.tree_intact = False
            store.checks.append(Check("store", Status.FAIL, f"{path} is not a manifest ember can use ({e.message})",
                                      f"move it out of {tree}"))
            continue
        try:
            store.manifests.append(manifests.load(name, path))
        except (ValueError, OSError) as e:
            store.tree_intact = False
            store.checks.append(Check("store", Status.FAIL, f"model '{name}' has a damaged manifest: {e}",
                                      f"ember rm {name} (then {_remake(str(name))}), or restore {path} from a backup"))


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()  # reads in chunks, never all at once


def _check_blobs(store: _Store, verify_digests: bool) -> None:
    """Every blob a manifest names is there with its size, and (verify_digests) holds the bytes its name says."""
    wrong: dict[str, str] = {}  # digest -> what is wrong with it
    users: dict[str, dict[str, str]] = {}  # digest -> {name of a model that uses it: as what kind of layer}
    problems: dict[str, list[str]] = {}  # model name -> what is wrong with it
    for manifest in store.manifests:
        name = str(manifest.name)
        for kind, layer in [("config", manifest.config), *((layer_kind(layer), layer) for layer in manifest.layers)]:
            digest = layer["digest"]
            users.setdefault(digest, {})[name] = kind
            try:
                size = store.blob_path(digest).stat().st_size
            except (FileNotFoundError, NotADirectoryError):
                problems.setdefault(name, []).append(f"its {kind} blob {digest[:19]} is missing")
                continue
            except OSError as e:
                wrong[digest] = f"cannot be read ({e.strerror})"
                problems.setdefault(name, []).append(f"its {kind} blob {digest[:19]} {wrong[digest]}")
                continue
            if size != layer["size"]:
                wrong[digest] = f"has {size} bytes, not {layer['size']}"
                problems.setdefault(name, []).append(f"its {kind} blob {digest[:19]} {wrong[digest]}")
    if verify_digests:
        for digest in sorted(users.keys() - wrong.keys()):  # each shared blob is read once
            try:
                actual = _sha256(store.blob_path(digest))
            except FileNotFoundError:
                continue  # missing: already told
            except OSError as e:
                wrong[digest] = f"cannot be read ({e.strerror})"
            else:
                if actual == digest:
                    continue
                wrong[digest] = f"holds bytes whose digest is {actual[:19]}"
            for name, kind in users[digest].items():
                problems.setdefault(name, []).append(f"its {kind} blob {digest[:19]} {wrong[digest]}")

    for manifest in store.manifests:
        name = str(manifest.name)
        if name not in problems or not _unchanged(manifest):  # a model replaced meanwhile is judged next time
            continue
        store.damaged.add(name)
        bad_blobs = {d for d in manifest.digests if d in wrong}
        if bad_blobs:
            # A blob with the wrong bytes stays while any model names it (pulling again would reuse it): every
            # model that uses it must go before it is written again.
            sharing = sorted(set().union(*(users[d] for d in bad_blobs)))
            fix = f"ember rm {' '.join(sharing)}, then {'; '.join(_remake(n) for n in sharing)}"
        else:
            fix = f"{_remake(name)} writes the missing files again (or: ember rm {name})"
        store.checks.append(Check("store", Status.FAIL, f"model '{name}' is damaged: {'; '.join(problems[name])}",
                                  fix))


def _unchanged(manifest: Manifest) -> bool:
    try:
        return manifest.path.read_bytes() == manifest.data
    except OSError:
        return False


def _open_store(root: Path) -> ModelStore:
    from ember.store.store import ModelStore

    return ModelStore(root)


def _check_unused(store: _Store, *, serving: bool, fix: bool) -> Iterable[Check]:
    if not store.tree_intact or not store.blobs.is_dir():
        return  # a manifest that cannot be read may name any blob: nothing counts as unused
    used = set().union(*(m.digests for m in store.manifests))
    unused = {}
    for path in store.blobs.iterdir():
        if path.name.startswith("sha256-") and f"sha256:{path.name[7:]}" not in used and path.is_file():
            unused[path] = path.stat().st_size
    if not unused:
        return
    what = f"{_plural(len(unused), 'blob')} no model uses ({_size(sum(unused.values()))})"
    if fix and not serving:
        _open_store(store.root).prune()
        yield Check("store", Status.OK, f"removed {what}")
    elif serving:
        # A client may have uploaded a blob for a create it is about to send.
        yield Check("store", Status.WARN, what, "stop the server, then run: ember doctor --fix")
    else:
        yield Check("store", Status.WARN, what, "run: ember doctor --fix")


def _stray_partials(roots: Iterable[Path]) -> dict[Path, int]:
    """Temp files and folders no live writer holds (a writer keeps its own locked until it is done), with sizes."""
    found: dict[Path, int] = {}
    for root in roots:
        for path in stray_partials(root):
            files = [f for f in path.rglob("*") if f.is_file()] if path.is_dir() else [path]
            found[path.resolve()] = sum(f.stat().st_size for f in files)
    return found


def _check_partials(settings: Settings, *, serving: bool, fix: bool) -> Iterable[Check]:
    roots = [settings.home, settings.models]
    partials = _stray_partials(roots)
    if not partials:
        return
    what = f"{_plural(len(partials), 'partial file')} left by interrupted writes ({_size(sum(partials.values()))})"
    if fix and not serving:
        removed = sum(remove_partials(root) for root in roots)
        yield Check("store", Status.OK, f"removed {_plural(removed, 'partial file')} left by interrupted writes")
    elif serving:
        # The server clears them when it starts; it may be writing new ones now.
        yield Check("store", Status.WARN, what,
                    "the server removes them when it starts; or stop it and run: ember doctor --fix")
    else:
        yield Check("store", Status.WARN, what, "run: ember doctor --fix")


def _store_summary(store: _Store, verify_digests: bool) -> Check | None:
    if any(c.status is Status.FAIL for c in store.checks):
        return None
    if not store.manifests:
        return Check("store", Status.OK, f"no models yet ({store.root})")
    blobs = len(set().union(*(m.digests for m in store.manifests)))
    verdict = "digests right" if verify_digests else "sizes right (digests not checked: --quick)"
    return Check("store", Status.OK, f"{_plural(len(store.manifests), 'model')}, {_plural(blobs, 'blob')}, {verdict}")


# -- models ------------------------------------------------------------------------------------------------------------


def _models(store: _Store) -> list[Model]:
    """The healthy models, as the runtime would see them."""
    if not store.healthy:
        return []
    opened = _open_store(store.root)
    found = []
    for manifest in store.healthy:
        try:
            found.append(opened.get(str(manifest.name)))
        except EmberError:
            continue  # replaced or removed since the scan
    return found


def _spec(model: Model, num_ctx: int):
    from ember.engines.base import Capability, LoadSpec, Role
    from ember.engines.registry import capabilities

    if model.is_speech:
        from ember.engines.whisper import DECODER_CONTEXT
        from ember.store.store import model_folder

        return LoadSpec(model_folder(model), role=Role.TRANSCRIBE, num_ctx=DECODER_CONTEXT)
    role = Role.EMBED if Capability.EMBEDDING in capabilities(model) else Role.GENERATE
    return LoadSpec(model.model_path, role=role, adapter_paths=tuple(model.adapter_paths), num_ctx=num_ctx,
                    num_parallel=1)


def _check_loads(models: list[Model], available: int) -> list[Check]:
    from ember.engines.registry import Engines

    engines = Engines()
    groups: dict[tuple[Path, ...], list[Model]] = {}  # names for the same files load the same way: once
    for model in models:
        groups.setdefault((model.model_path, *model.adapter_paths), []).append(model)
    loaded, problems, runners = 0, [], set()
    for group in groups.values():
        group.sort(key=lambda m: m.name)
        quoted = ", ".join(f"'{m.name}'" for m in group)
        try:
            spec = _spec(group[0], LOAD_CONTEXT)
            needed = engines.estimate(spec)
            if needed > available:
                problems.append(Check("models", Status.WARN, f"{quoted} not tried: it needs about {_size(needed)}, "
                                      f"{_size(available)} is available", "close other programs and run doctor again"))
                continue
            engine = engines.load(spec)
            runners.add(engine.status().runner)
            engine.close()
            loaded += len(group)
        except Exception as e:  # whatever llama.cpp raises, the model does not load
            why = e.message if isinstance(e, EmberError) else f"{type(e).__name__}: {e}"
            blob = f"blob {group[0].model_path.name[:19]}"  # the 71-character file name, twice, hides the reason
            why = why.replace(str(group[0].model_path), blob).replace(group[0].model_path.name, blob)
            problems.append(Check("models", Status.FAIL, f"{quoted} does not load: {why}",
                                  f"ember rm {' '.join(m.name for m in group)}, then "
                                  f"{'; '.join(_remake(m.name) for m in group)}"))
    verb = "loads" if loaded == 1 else "load"
    engines_used = ", ".join(sorted(runners))
    return [*([Check("models", Status.OK, f"{_plural(loaded, 'model')} {verb} with {engines_used}")] if loaded else []),
            *problems]


# -- the machine -------------------------------------------------------------------------------------------------------


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_disk(settings: Settings, models: list[Model]) -> Iterable[Check]:
    largest = max((m.size for m in models), default=0)
    by_device: dict[int, list[tuple[str, Path]]] = {}
    for label, path in (("home", settings.home), ("models", settings.models)):
        by_device.setdefault(_existing(path).stat().st_dev, []).append((label, path))
    for places in by_device.values():
        free = shutil.disk_usage(_existing(places[0][1])).free
        where = " and ".join(f"{label} {path}" for label, path in places)
        if free < max(GB, largest):
            need = f"; the largest model is {_size(largest)}" if largest > GB else ""
            yield Check("disk", Status.WARN, f"{_size(free)} free for {where}{need}",
                        "free some space, remove models you do not need (ember rm NAME), or keep models on another "
                        "disk with EMBER_MODELS=/path/with/space")
        else:
            yield Check("disk", Status.OK, f"{_size(free)} free for {where}")


def mem_available(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """MemAvailable in bytes; None where the kernel does not say (not Linux)."""
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _loaded_by_server(settings: Settings) -> tuple[list[dict[str, Any]], str]:
    """What the running server has loaded, or why that is unknown (it may want an API key, or be another program)."""
    import httpx

    from ember.cli.client import HttpClient

    try:
        return HttpClient(settings).request("GET", "/api/ps")["models"], ""
    except (EmberError, httpx.HTTPError, ValueError, KeyError, TypeError) as e:
        return [], f"; could not ask the server what it holds ({getattr(e, 'message', e)})"


def _largest_need(models: list[Model], settings: Settings) -> tuple[int, str, int]:
    """(bytes, name, num_ctx) of the model needing the most memory at its own context with one slot."""
    from ember.engines.registry import Engines

    engines, largest = Engines(), (0, "", 0)
    for model in models:
        num_ctx = int(model.params.get("num_ctx") or settings.context_length)
        try:
            largest = max(largest, (engines.estimate(_spec(model, num_ctx)), model.name, num_ctx))
        except Exception:  # a model the engines cannot read is reported by the models and store checks
            continue
    return largest


def _check_memory(settings: Settings, models: list[Model], available: int | None, serving: bool) -> Check:
    loaded, trouble = _loaded_by_server(settings) if serving else ([], "")
    held = sum(int(m.get("size") or 0) for m in loaded)
    needed, name, num_ctx = _largest_need(models, settings)
    holding = f"; the server holds {_plural(len(loaded), 'model')} ({_size(held)})" if serving and not trouble else ""
    if available is None:
        return Check("memory", Status.OK, f"available memory unknown (no MemAvailable in /proc/meminfo){holding}"
                     f"{trouble}")
    told = f"{_size(available)} available{holding}{trouble}"
    if needed and settings.max_memory and needed > settings.max_memory:
        return Check("memory", Status.WARN, f"{told}; '{name}' needs about {_size(needed)} at num_ctx {num_ctx}, "
                     f"more than EMBER_MAX_MEMORY ({_size(settings.max_memory)})",
                     "raise EMBER_MAX_MEMORY or lower num_ctx (EMBER_CONTEXT_LENGTH)")
    # The server unloads its own idle models to make room, so what they hold counts as room too.
    if needed > available + held:
        return Check("memory", Status.WARN, f"{told}; '{name}' needs about {_size(needed)} at num_ctx {num_ctx} "
                     "and could not be loaded", "close other programs, lower num_ctx (EMBER_CONTEXT_LENGTH), or use "
                     "a smaller model")
    largest = f"; the largest model needs about {_size(needed)}" if needed else ""
    return Check("memory", Status.OK, f"{told}{largest}")


def _check_port(settings: Settings, serving: bool) -> Check:
    from ember.cli.serve import port_free

    address = f"{settings.host}:{settings.port}"
    other = f"EMBER_HOST=127.0.0.1:{settings.port + 1 if settings.port < 65535 else 11435}"
    if serving:
        return Check("port", Status.OK, f"ember is serving at {settings.base_url}")
    try:
        if port_free(settings.host, settings.port):
            return Check("port", Status.OK, f"{address} is free for ember serve")
    except OSError as e:
        why = "not an address of this machine" if e.errno == errno.EADDRNOTAVAIL else e.strerror
        return Check("port", Status.FAIL, f"cannot listen on {address}: {why}", f"pick another address: {other}")
    return Check("port", Status.FAIL, f"{address} is in use by another program",
                 f"stop that program, or pick another address: {other}")


def _check_keys(settings: Settings, fix: bool) -> Iterable[Check]:
    path = settings.keys_file
    if not path.exists():
        yield Check("keys", Status.OK, "no API keys configured")
        return
    try:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            if fix:
                os.chmod(path, 0o600)
                yield Check("keys", Status.OK, f"{path} was open to other users (mode {mode:04o}); now 0600")
            else:
                yield Check("keys", Status.FAIL, f"{path} can be read or written by other users (mode {mode:04o})",
                            f"chmod 600 {path}")
        keys = KeysFile(path).read()
    except BadRequest as e:  # `ember serve` would refuse to start with it
        yield Check("keys", Status.FAIL, e.message,
                    f"repair {path} or restore it from a backup (`ember restore`); until then ember serve refuses "
                    "to start")
    except OSError as e:
        yield Check("keys", Status.FAIL, f"cannot check {path}: {e.strerror}", f"check who owns {path}")
    else:
        if not mode & 0o077:
            yield Check("keys", Status.OK, f"{path} is private and holds {_plural(len(keys), 'key')}")


# -- all together ------------------------------------------------------------------------------------------------------


def _serving(settings: Settings) -> bool:
    """Whether an ember server answers at the configured address; /health is asked too, since with API keys
    configured /api/version (what `server_running` asks) wants a key and /health does not."""
    import httpx

    from ember.cli.client import server_running

    if server_running(settings):
        return True
    try:
        body = httpx.get(f"{settings.base_url}/health", timeout=0.5).json()
    except (httpx.HTTPError, ValueError):
        return False
    return isinstance(body, dict) and body.get("status") in ("ok", "starting", "draining") and "version" in body


def run_checks(settings: Settings, *, load_models: bool = True, verify_digests: bool = True,
               fix: bool = False) -> list[Check]:
    serving = _serving(settings)
    store = _Store(settings.models)
    _scan_manifests(store)
    _check_blobs(store, verify_digests)
    summary = _store_summary(store, verify_digests)
    checks = [*([summary] if summary else []), *store.checks, *_check_unused(store, serving=serving, fix=fix),
              *_check_partials(settings, serving=serving, fix=fix)]

    models = _models(store)
    available = mem_available()
    if load_models and models:
        from ember.system import available_memory

        checks += _check_loads(models, available if available is not None else available_memory())
    checks += _check_disk(settings, models)
    checks.append(_check_memory(settings, models, available, serving))
    checks.append(_check_port(settings, serving))
    checks += _check_keys(settings, fix)
    return checks
