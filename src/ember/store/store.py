"""The model store: manifests (one per name:tag) over content-addressed blobs, in the layout Ollama uses.

Every write is atomic, and blobs are written before the manifest that names them, so a process killed at any
instant leaves the store whole. A lock file serialises writers (server and CLI alike), so that a blob is never
collected while a new manifest is about to use it.
"""

from __future__ import annotations

import atexit
import fcntl
import functools
import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

from ember.core.errors import BadRequest, EmberError, NotFound, model_not_found
from ember.core.options import PRESETS, parse_options
from ember.core.templates import compile_template
from ember.core.types import Message
from ember.fsutil import atomic_write_bytes, make_dirs, remove_partials
from ember.store import bundled, manifests
from ember.store.blobs import BlobStore, DigestMismatch, file_chunks, normalize_digest
from ember.store.gguf_info import GGUFInfo, read_gguf_info
from ember.store.manifests import Manifest, Manifests, layer_kind, layer_type, to_json
from ember.store.modelfile import ROLES, CreateSpec, parse_modelfile, render_modelfile
from ember.store.names import ModelName, parse_name

log = logging.getLogger("ember.store")

TEXT_LAYERS = ("template", "system", "license")
# A folder model (a CTranslate2 Whisper) keeps each file beside its weights as a layer named the OCI way.
FILE_TITLE = "org.opencontainers.image.title"
FOLDER_FILES = ("config.json", "tokenizer.json", "vocabulary.json", "vocabulary.txt", "preprocessor_config.json")


class Report(Protocol):
    """How long work says how far it is (a job's `Reporter`); it may raise to stop the work (a cancel)."""

    def __call__(self, status: str, *, completed: int | None = None, total: int | None = None,
                 item: str | None = None) -> None: ...


def silent(status: str, **_: Any) -> None:
    pass


@dataclass
class Model:
    name: str  # "model:tag"
    digest: str  # sha256 hex of the manifest: two names with the same digest are the same model
    model_path: Path
    adapter_paths: list[Path]
    params: dict[str, Any]
    template: str | None
    system: str | None
    license: str | None
    messages: list[Message]
    size: int
    modified_at: datetime
    layers: list[dict[str, Any]]
    format: str = "gguf"  # or "ctranslate2": a Whisper folder, its files in `files`
    files: dict[str, Path] = field(default_factory=dict)  # a folder model's files beside model.bin, by name

    @property
    def is_speech(self) -> bool:
        return self.format == "ctranslate2"

    @cached_property
    def info(self) -> GGUFInfo:
        if self.is_speech:
            raise BadRequest(f"{self.name} is a speech-to-text model (Whisper): it transcribes audio with "
                             "`ember transcribe` or POST /v1/audio/transcriptions, and cannot chat or embed")
        return read_gguf_info(self.model_path)

    @property
    def chat_template(self) -> str | None:
        """The Modelfile's TEMPLATE, else the GGUF's own; None when neither has one."""
        return self.template or self.info.chat_template


def details(model: Model) -> dict[str, Any]:
    """The short description Ollama's /api/tags, /api/ps and /api/show carry."""
    if model.is_speech:
        return {"parent_model": "", "format": model.format, "family": "whisper", "families": ["whisper"],
                "parameter_size": "", "quantization_level": _ctranslate2_quantization(model)}
    info = model.info
    return {"parent_model": "", "format": "gguf", "family": info.architecture, "families": [info.architecture],
            "parameter_size": info.parameter_size, "quantization_level": info.quantization}


def describe(model: Model) -> dict[str, Any]:
    """Everything `ember show` and /api/show tell about a model, in /api/show's shape (capabilities aside: they
    depend on the engines, see `ember.engines.registry`)."""
    parameters = "\n".join(f"{k} {json.dumps(v) if isinstance(v, str) else v}" for k, vs in model.params.items()
                           for v in (vs if isinstance(vs, list) else [vs]))
    summary = details(model)
    if model.is_speech:
        model_info = {"general.architecture": "whisper", "general.file_type": summary["quantization_level"],
                      "general.files": sorted(["model.bin", *model.files])}
    else:
        model_info = {**model.info.model_info, "general.parameter_count": model.info.parameter_count}
    return {
        "modelfile": render_modelfile(model), "parameters": parameters,
        "template": (None if model.is_speech else model.chat_template) or "", "system": model.system or "",
        "license": model.license or "", "details": summary,
        "model_info": model_info,
        "modified_at": model.modified_at.isoformat().replace("+00:00", "Z"),
    }


def _ctranslate2_quantization(model: Model) -> str:
    """The weights' type as CTranslate2 wrote it in config.json (older converters leave it out)."""
    try:
        config = json.loads(model.files["config.json"].read_text(encoding="utf-8"))
    except (KeyError, OSError, ValueError):
        return ""
    return str(config.get("quantization") or config.get("compute_type") or "") if isinstance(config, dict) else ""


@functools.cache
def _link_root() -> Path:
    """This process's folder for folder models' links, removed when it exits."""
    root = Path(tempfile.mkdtemp(prefix="ember-folders-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


def model_folder(model: Model) -> Path:
    """A folder faster-whisper can open: links to the model's blobs under their file names (made once per process,
    outside the store so that backups and pruning never meet it)."""
    root = _link_root() / model.digest
    if not root.is_dir():
        tmp = Path(tempfile.mkdtemp(dir=_link_root(), prefix=".part-"))
        (tmp / "model.bin").symlink_to(model.model_path)
        for name, path in model.files.items():
            if name in FOLDER_FILES:  # a title from a hand-edited manifest never escapes the folder
                (tmp / name).symlink_to(path)
        try:
            tmp.rename(root)
        except OSError:  # made by another thread meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _file_title(layer: dict[str, Any]) -> str:
    annotations = layer.get("annotations")
    title = annotations.get(FILE_TITLE) if isinstance(annotations, dict) else None
    return title if isinstance(title, str) else ""


def _damaged(name: ModelName, why: str) -> EmberError:
    return EmberError(f"model '{name}' is damaged ({why}); remove it with: ember rm {name}, "
                      "then pull or create it again")


class ModelStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        make_dirs(self.root)
        self.blobs = BlobStore(self.root / "blobs")
        self.manifests = self.root / "manifests"
        self._manifests = Manifests(self.manifests)

    # -- reading ---------------------------------------------------------------------------------------------------

    def exists(self, raw: str) -> bool:
        return self._manifests.path(parse_name(raw)).is_file()

    def get(self, raw: str) -> Model:
        name = parse_name(raw)
        try:
            manifest = self._manifests.read(name)
        except ValueError as e:
            raise _damaged(name, str(e)) from None
        if manifest is None:
            raise model_not_found(raw)
        return self._model(manifest)

    def _model(self, manifest: Manifest) -> Model:
        by_kind: dict[str, list[dict]] = {}
        for layer in manifest.layers:
            by_kind.setdefault(layer_kind(layer), []).append(layer)

        def blob(layer: dict) -> Path:
            path = self.blobs.path(layer["digest"])
            if not path.is_file():
                raise _damaged(manifest.name, f"its {layer_kind(layer)} blob {layer['digest']} is missing")
            return path

        def text(kind: str) -> str | None:
            layers = by_kind.get(kind)
            return blob(layers[0]).read_text(encoding="utf-8") if layers else None

        try:
            params = json.loads(text("params") or "{}")
            messages = [Message(m["role"], m["content"]) for m in json.loads(text("messages") or "[]")]
            if not isinstance(params, dict):
                raise ValueError("params is not an object")
            texts = {kind: text(kind) for kind in TEXT_LAYERS}
        except (ValueError, KeyError, TypeError, OSError) as e:
            raise _damaged(manifest.name, f"a layer cannot be read: {e}") from None
        return Model(
            name=str(manifest.name), digest=manifest.digest,
            model_path=blob(by_kind["model"][0]),
            adapter_paths=[blob(a) for a in by_kind.get("adapter", [])],
            params=params, template=texts["template"], system=texts["system"], license=texts["license"],
            messages=messages, size=sum(layer["size"] for layer in manifest.layers),
            modified_at=datetime.fromtimestamp(manifest.mtime, UTC),
            # Only a folder model has files beside its weights (config.json at least): no need to read the config.
            layers=manifest.layers, format="ctranslate2" if by_kind.get("file") else "gguf",
            files={_file_title(layer): blob(layer) for layer in by_kind.get("file", [])},
        )

    def list(self) -> list[Model]:
        models = []
        for name, path in self._manifests.names():
            try:
                models.append(self._model(manifests.load(name, path)))
            except (ValueError, EmberError, OSError) as e:
                log.warning("skipping model %s: %s", name, getattr(e, "message", e))
        return sorted(models, key=lambda m: m.modified_at, reverse=True)

    # -- writing ---------------------------------------------------------------------------------------------------

    @contextmanager
    def _writing(self) -> Iterator[None]:
        with open(self.root / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _used_digests(self) -> set[str] | None:
        """Every blob some manifest names; None if a manifest cannot be read (then nothing may be collected)."""
        used: set[str] = set()
        for name, path in self._manifests.names():
            try:
                used |= manifests.load(name, path).digests
            except (ValueError, OSError) as e:
                log.warning("not collecting unused files: %s", e)
                return None
        return used

    def _release(self, old: Manifest | None) -> None:
        """After a manifest is removed or replaced, remove its blobs that no manifest names any more."""
        used = self._used_digests() if old else None
        if old and used is not None:
            for digest in old.digests - used:
                self.blobs.remove(digest)

    def _set_manifest(self, name: ModelName, data: bytes) -> None:
        try:
            old = self._manifests.read(name)
        except ValueError:
            old = None
        self._manifests.write(name, data)
        self._release(old)

    def _write_manifest(self, name: ModelName, layers: list[dict[str, Any]], info: GGUFInfo) -> None:
        config = self._layer(to_json({
            "model_format": "gguf", "model_family": info.architecture, "model_families": [info.architecture],
            "model_type": info.parameter_size,  # Ollama's name for it
            "parameter_size": info.parameter_size, "file_type": info.quantization,
        }), None)
        self._set_manifest(name, manifests.build(config, layers))

    def _write_speech_manifest(self, name: ModelName, layers: list[dict[str, Any]]) -> None:
        config = self._layer(to_json({"model_format": "ctranslate2", "model_family": "whisper",
                                      "model_families": ["whisper"]}), None)
        self._set_manifest(name, manifests.build(config, layers))

    def _layer(self, data: bytes, kind: str | None, report: Report = silent) -> dict[str, Any]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        report(f"{'using existing' if self.blobs.has(digest) else 'creating new'} layer {digest}")
        self.blobs.write_chunks([data], digest)
        return {"mediaType": layer_type(kind) if kind else manifests.CONFIG_TYPE, "digest": digest,
                "size": len(data)}

    def _file_layer(self, source: str, kind: str, report: Report) -> dict[str, Any]:
        """A GGUF given as a blob digest or an absolute path, imported (and hashed) if it is not a blob yet."""
        if source.startswith("sha256"):
            digest, existed = normalize_digest(source), True
        else:
            path = Path(source)
            report(f"reading {path.name}")
            digest = self.blobs.file_digest(path)
            existed = self.blobs.has(digest)
            if not existed:
                status = f"copying {path.name}"
                self.blobs.import_file(path, digest=digest, progress=lambda done, total: report(
                    status, completed=done, total=total, item=digest))
        report(f"{'using existing' if existed else 'creating new'} layer {digest}")
        return {"mediaType": layer_type(kind), "digest": digest, "size": self.blobs.size(digest)}

    def _folder_layers(self, folder: Path, report: Report) -> list[dict[str, Any]]:
        """A CTranslate2 Whisper folder as layers: model.bin, then each file faster-whisper reads beside it."""
        if not (folder / "model.bin").is_file() or not (folder / "config.json").is_file():
            raise BadRequest(f"FROM {folder}: a model folder must hold a CTranslate2 Whisper model (model.bin and "
                             "config.json, as faster-whisper's converter writes them); a GGUF is given as a file")
        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise BadRequest(f"FROM {folder}: config.json cannot be read ({e})") from None
        if not isinstance(config, dict) or "suppress_ids" not in config:
            raise BadRequest(f"FROM {folder}: config.json is not a Whisper model's (no suppress_ids); ember runs "
                             "CTranslate2 folders of Whisper models only")
        if not any((folder / name).is_file() for name in ("tokenizer.json", "vocabulary.json", "vocabulary.txt")):
            raise BadRequest(f"FROM {folder}: no tokenizer.json or vocabulary file beside model.bin")
        layers = [self._file_layer(str(folder / "model.bin"), "model", report)]
        for name in FOLDER_FILES:
            if (folder / name).is_file():
                layer = self._file_layer(str(folder / name), "file", report)
                layers.append({**layer, "annotations": {FILE_TITLE: name}})
        return layers

    def _check_gguf(self, source: str, adapter: bool) -> None:
        what = "ADAPTER" if adapter else "FROM"
        if source.startswith("sha256"):
            path = self.blobs.require(normalize_digest(source))
        else:
            path = Path(source)
            if not path.is_absolute():
                raise BadRequest(f"{what} {source!r}: a GGUF file must be given by its absolute path")
            if not path.is_file():
                raise BadRequest(f"{what} {source!r}: no such file")
        info = read_gguf_info(path)
        if adapter and not info.is_lora_adapter:
            raise BadRequest(f"ADAPTER {source} is a model, not a LoRA adapter GGUF (general.type must be 'adapter')")
        if not adapter and info.is_lora_adapter:
            raise BadRequest(f"{source} is a LoRA adapter; use it with ADAPTER on top of a FROM model")

    def _parent(self, source: str) -> Model | None:
        if source.startswith("sha256"):
            self._check_gguf(source, adapter=False)
            return None
        if Path(source).is_absolute() and Path(source).is_dir():
            return None  # a folder model: checked as its layers are made
        if "/" in source or "\\" in source or source.lower().endswith(".gguf"):
            self._check_gguf(source, adapter=False)
            return None
        return self.get(source)

    def create(self, raw_name: str, spec: CreateSpec, report: Report = silent) -> Model:
        """Everything is checked before the first progress report, so that an API caller can still answer 4xx."""
        name = parse_name(raw_name)
        if not isinstance(spec.from_, str) or not spec.from_.strip():
            raise BadRequest("create needs FROM: a model name, an absolute GGUF path or a blob digest")
        parent = self._parent(spec.from_.strip())
        for adapter in spec.adapters:
            self._check_gguf(adapter, adapter=True)
        params = {**(parent.params if parent else {}), **(spec.parameters or {})}
        preset = params.pop("preset", None)
        if preset is not None and preset not in PRESETS:
            raise BadRequest(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
        params = parse_options(params, where="parameters").model_dump(exclude_none=True)
        if preset:
            params["preset"] = preset
        if spec.template:
            compile_template(spec.template)
        for m in spec.messages:
            if m.role not in ROLES:
                raise BadRequest(f"message role {m.role!r} must be one of {', '.join(ROLES)}")

        with self._writing():
            folder = None if parent else Path(spec.from_.strip())
            if parent:
                layers = [layer for layer in parent.layers if layer_kind(layer) in ("model", "file")]
                report(f"using existing layer {layers[0]['digest']}")
            elif folder.is_absolute() and folder.is_dir():
                layers = self._folder_layers(folder, report)
            else:
                folder = None
                layers = [self._file_layer(spec.from_.strip(), "model", report)]
            if spec.adapters:
                layers += [self._file_layer(a, "adapter", report) for a in spec.adapters]
            elif parent:
                for layer in parent.layers:
                    if layer_kind(layer) == "adapter":
                        layers.append(layer)
                        report(f"using existing layer {layer['digest']}")
            texts = {"template": spec.template or (parent.template if parent else None),
                     "system": spec.system if spec.system is not None else (parent.system if parent else None),
                     "license": spec.license or (parent.license if parent else None)}
            for kind in TEXT_LAYERS:
                if texts[kind]:
                    layers.append(self._layer(texts[kind].encode("utf-8"), kind, report))
            messages = spec.messages or (parent.messages if parent else [])
            if messages:
                layers.append(self._layer(to_json([{"role": m.role, "content": m.content} for m in messages]),
                                          "messages", report))
            if params:
                layers.append(self._layer(to_json(params), "params", report))
            report("writing manifest")
            if folder is not None or (parent is not None and parent.is_speech):
                self._write_speech_manifest(name, layers)
            else:
                self._write_manifest(name, layers, read_gguf_info(self.blobs.path(layers[0]["digest"])))
        report("success")
        return self.get(str(name))

    def create_from_modelfile(self, raw_name: str, text: str, base_dir: Path, report: Report = silent) -> Model:
        parse_name(raw_name)
        spec = parse_modelfile(text, base_dir)
        started = False

        def reporting(status: str, **progress: Any) -> None:
            # Held back until create has checked everything, so that a refusal is still a plain error.
            nonlocal started
            if not started:
                started = True
                report("parsing modelfile")
            report(status, **progress)

        return self.create(raw_name, spec, reporting)

    def copy(self, source: str, destination: str) -> None:
        src, dst = parse_name(source), parse_name(destination)
        with self._writing():
            self.get(str(src))  # not found, or damaged: refuse to spread it
            self._set_manifest(dst, self._manifests.read(src).data)

    def delete(self, raw: str) -> None:
        """Remove the name; the blobs go too unless another model uses them."""
        name = parse_name(raw)
        with self._writing():
            try:
                old = self._manifests.read(name)
            except ValueError:
                old = None  # a damaged manifest can still be removed; its blobs are left to prune()
            if old is None and not self._manifests.path(name).is_file():
                raise model_not_found(raw)
            self._manifests.remove(name)
            self._release(old)

    def prune(self) -> int:
        """Remove every blob no manifest names (left by a killed create, or uploaded and never used)."""
        with self._writing():
            used = self._used_digests()
            if used is None:
                return 0
            unused = self.blobs.all_digests() - used
            for digest in unused:
                self.blobs.remove(digest)
            return len(unused)

    def cleanup_partials(self) -> int:
        """Remove the temp files of killed writers (run at startup); files being written now are kept."""
        return remove_partials(self.root)

    # -- bundled models --------------------------------------------------------------------------------------------

    def ensure_bundled(self, raw: str) -> bool:
        """Pull `raw` if it is a bundled model not yet in the store (offline, from its package): for a model ember
        picks itself, such as the embedding model of collections, which the user never named. True if pulled."""
        if self.exists(raw) or bundled.find(parse_name(raw)) is None:
            return False
        self.pull(raw)
        return True

    def pull(self, raw: str, report: Report = silent) -> Model:
        name = parse_name(raw)
        entry = bundled.find(name)
        if entry is None:
            raise NotFound(f"model '{raw}' is not in ember's catalog of bundled models (nothing is downloaded); "
                           f"available: {', '.join(bundled.catalog_names())}. Make your own with: ember create")
        report("pulling manifest")
        if entry.format == "ctranslate2":
            with bundled.folder_for(entry) as folder, self._writing():
                layers = self._folder_layers(folder, report)
                layers.append(self._layer(entry.license.encode("utf-8"), "license"))
                report("writing manifest")
                self._write_speech_manifest(name, layers)
            report("success")
            return self.get(str(name))
        with bundled.gguf_for(entry) as source:
            return self._pull_file(name, entry, source, report)

    def _pull_file(self, name: ModelName, entry: bundled.Bundled, source: Path, report: Report) -> Model:
        try:
            total = source.stat().st_size
            with open(source, "rb") as f:
                digest = "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
        except OSError as e:
            raise NotFound(f"cannot read {source}: {e.strerror}; reinstall {entry.distribution}") from None
        status = f"pulling {digest[7:19]}"
        with self._writing():
            if not self.blobs.has(digest):
                try:
                    self.blobs.write_chunks(file_chunks(source), digest, lambda done: report(
                        status, completed=done, total=total, item=digest))
                except DigestMismatch:
                    raise EmberError(f"{source} changed while it was being copied; pull again") from None
            report(status, completed=total, total=total, item=digest)
            report("verifying sha256 digest")
            info = read_gguf_info(self.blobs.path(digest))
            layers = [{"mediaType": layer_type("model"), "digest": digest, "size": total},
                      self._layer(entry.license.encode("utf-8"), "license")]
            if entry.template:
                layers.append(self._layer(entry.template.encode("utf-8"), "template"))
            report("writing manifest")
            self._write_manifest(name, layers, info)
        report("success")
        return self.get(str(name))

    # -- showing and exporting -------------------------------------------------------------------------------------


    def export(self, raw: str, dest: Path) -> list[Path]:
        """Write the GGUF, adapters and a Modelfile under readable names; never overwrites."""
        model = self.get(raw)
        name = parse_name(raw)
        dest = Path(dest)
        base = f"{name.model}-{name.tag}"
        if model.is_speech:
            return self._export_folder(model, dest, base)
        targets = [dest / f"{base}.gguf"] + [dest / f"{base}-adapter-{i + 1}.gguf"
                                             for i in range(len(model.adapter_paths))]
        modelfile = dest / "Modelfile"
        clash = [p for p in [*targets, modelfile] if p.exists()]
        if clash:
            raise BadRequest(f"{clash[0]} already exists; export into another folder or remove it first")
        try:
            make_dirs(dest)
            files = [layer for kind in ("model", "adapter") for layer in model.layers if layer_kind(layer) == kind]
            for layer, target in zip(files, targets):
                self.blobs.copy_out(layer["digest"], target)
            text = render_modelfile(model, from_line=f"./{targets[0].name}",
                                    adapter_lines=[f"./{t.name}" for t in targets[1:]])
            atomic_write_bytes(modelfile, text.encode("utf-8"))
        except (NotADirectoryError, FileExistsError, PermissionError) as e:
            raise BadRequest(f"cannot export into {dest}: {e.strerror}") from None
        return [*targets, modelfile]

    def _export_folder(self, model: Model, dest: Path, base: str) -> list[Path]:
        """A folder model as the folder it came from (model.bin and its files) and a Modelfile that makes it again."""
        folder, modelfile = dest / base, dest / "Modelfile"
        clash = [p for p in (folder, modelfile) if p.exists()]
        if clash:
            raise BadRequest(f"{clash[0]} already exists; export into another folder or remove it first")
        try:
            make_dirs(folder)
            files = [("model.bin", layer) for layer in model.layers if layer_kind(layer) == "model"]
            files += [(_file_title(layer), layer) for layer in model.layers if layer_kind(layer) == "file"
                      and _file_title(layer) in FOLDER_FILES]
            for file_name, layer in files:
                self.blobs.copy_out(layer["digest"], folder / file_name)
            atomic_write_bytes(modelfile, render_modelfile(model, from_line=f"./{base}").encode("utf-8"))
        except (NotADirectoryError, FileExistsError, PermissionError) as e:
            raise BadRequest(f"cannot export into {dest}: {e.strerror}") from None
        return [folder / file_name for file_name, _ in files] + [modelfile]
