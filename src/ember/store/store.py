"""The model store: manifests (one per name:tag) over content-addressed blobs, in the layout Ollama uses.

Every write is atomic, and a lock file serialises the writers (server and CLI alike), so that a blob is never
collected while a new manifest is about to use it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterator

from ember.core.errors import BadRequest, NotFound, model_not_found
from ember.core.options import PRESETS, parse_options
from ember.core.templates import compile_template, supports_tools
from ember.core.types import Message
from ember.fsutil import atomic_write_bytes, remove_partials
from ember.store import bundled
from ember.store.blobs import BlobStore, normalize_digest
from ember.store.gguf_info import GGUFInfo, read_gguf_info
from ember.store.modelfile import parse_modelfile
from ember.store.names import ModelName, parse_name

log = logging.getLogger("ember.store")

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
LAYER = "application/vnd.ollama.image."
TEXT_LAYERS = ("template", "system", "license")

Progress = Callable[[Any], None]


@dataclass
class CreateSpec:
    """What a new model is made of; None (or empty) fields are inherited from `from_` when it is a stored model."""

    from_: str
    parameters: dict[str, Any] = field(default_factory=dict)
    template: str | None = None
    system: str | None = None
    license: str | None = None
    adapters: list[str] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)


@dataclass
class Model:
    name: str
    digest: str  # of the manifest: two names with the same digest are the same model
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

    @cached_property
    def info(self) -> GGUFInfo:
        return read_gguf_info(self.model_path)


def _json(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, ensure_ascii=False).encode("utf-8")


def _notify(progress: Progress | None, item: Any) -> None:
    if progress:
        progress(item)


class ModelStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.blobs = BlobStore(self.root / "blobs")
        self.manifests = self.root / "manifests"
        self.manifests.mkdir(parents=True, exist_ok=True)

    # -- reading ---------------------------------------------------------------------------------------------------

    def _manifest_path(self, name: ModelName) -> Path:
        return self.manifests / name.model / name.tag

    def exists(self, raw: str) -> bool:
        return self._manifest_path(parse_name(raw)).is_file()

    def get(self, raw: str) -> Model:
        name = parse_name(raw)
        path = self._manifest_path(name)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise model_not_found(raw) from None
        return self._model(str(name), data, path)

    def _model(self, name: str, data: bytes, path: Path) -> Model:
        manifest = json.loads(data)
        by_kind: dict[str, list[dict]] = {}
        for layer in manifest["layers"]:
            by_kind.setdefault(layer["mediaType"].removeprefix(LAYER), []).append(layer)

        def text(kind: str) -> str | None:
            layers = by_kind.get(kind)
            return self.blobs.require(layers[0]["digest"]).read_text(encoding="utf-8") if layers else None

        params = json.loads(text("params") or "{}")
        messages = [Message(m["role"], m["content"]) for m in json.loads(text("messages") or "[]")]
        return Model(
            name=name, digest=hashlib.sha256(data).hexdigest(),
            model_path=self.blobs.require(by_kind["model"][0]["digest"]),
            adapter_paths=[self.blobs.require(a["digest"]) for a in by_kind.get("adapter", [])],
            params=params, template=text("template"), system=text("system"), license=text("license"),
            messages=messages, size=sum(layer["size"] for layer in manifest["layers"]),
            modified_at=datetime.fromtimestamp(path.stat().st_mtime, timezone.utc), layers=manifest["layers"],
        )

    def list(self) -> list[Model]:
        models = []
        for path in self.manifests.glob("*/*"):
            if path.name.startswith(".tmp-") or not path.is_file():
                continue
            name = f"{path.parent.name}:{path.name}"
            try:
                models.append(self._model(name, path.read_bytes(), path))
            except (ValueError, KeyError, NotFound) as e:
                log.warning("skipping damaged manifest %s: %s", path, e)
        return sorted(models, key=lambda m: m.modified_at, reverse=True)

    # -- writing ---------------------------------------------------------------------------------------------------

    @contextmanager
    def _writing(self) -> Iterator[None]:
        with open(self.root / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _write_manifest(self, name: ModelName, layers: list[dict[str, Any]], info: GGUFInfo) -> None:
        config = self._layer(_json({"model_format": "gguf", "model_family": info.architecture,
                                    "model_type": info.parameter_size, "file_type": info.quantization}), None)
        manifest = {"schemaVersion": 2, "mediaType": MANIFEST_TYPE,
                    "config": {"mediaType": CONFIG_TYPE, "digest": config["digest"], "size": config["size"]},
                    "layers": layers}
        path, data = self._manifest_path(name), _json(manifest)
        if not (path.is_file() and path.read_bytes() == data):  # pulling again changes nothing, not even the date
            atomic_write_bytes(path, data)

    def _layer(self, data: bytes, kind: str | None) -> dict[str, Any]:
        digest = self.blobs.write_bytes(data)
        return {"mediaType": LAYER + kind if kind else CONFIG_TYPE, "digest": digest, "size": len(data)}

    def _file_layer(self, source: str, kind: str, progress: Progress | None) -> dict[str, Any]:
        """A GGUF given as a blob digest or a file path, imported (and hashed) if it is not a blob yet."""
        if source.startswith("sha256"):
            path = self.blobs.require(normalize_digest(source))
            digest = normalize_digest(source)
            _notify(progress, f"using existing layer {digest}")
        else:
            digest = self.blobs.import_file(Path(source))
            _notify(progress, f"creating new layer {digest}")
            path = self.blobs.path(digest)
        return {"mediaType": LAYER + kind, "digest": digest, "size": path.stat().st_size}

    def _check_gguf(self, source: str, adapter: bool) -> None:
        path = self.blobs.require(source) if source.startswith("sha256") else Path(source)
        if not source.startswith("sha256") and not path.is_file():
            raise BadRequest(f"no such file: {source}")
        info = read_gguf_info(path)
        if adapter and not info.is_lora_adapter:
            raise BadRequest(f"ADAPTER {source} is a model, not a LoRA adapter GGUF")
        if not adapter and info.is_lora_adapter:
            raise BadRequest(f"{source} is a LoRA adapter; use it with ADAPTER on top of a FROM model")

    def create(self, raw_name: str, spec: CreateSpec, progress: Progress | None = None) -> Model:
        """Checks everything before the first progress report, so that an API caller can still answer 4xx."""
        name = parse_name(raw_name)
        parent = None
        if spec.from_.startswith("sha256") or Path(spec.from_).is_absolute():
            self._check_gguf(spec.from_, adapter=False)
        else:
            parent = self.get(spec.from_)
        for adapter in spec.adapters:
            self._check_gguf(adapter, adapter=True)
        params = {**(parent.params if parent else {}), **spec.parameters}
        preset = params.pop("preset", None)
        if preset is not None and preset not in PRESETS:
            raise BadRequest(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
        params = parse_options(params, where="parameters").model_dump(exclude_none=True)
        if preset:
            params["preset"] = preset
        if spec.template:
            compile_template(spec.template)

        with self._writing():
            if parent:
                layers = [l for l in parent.layers if l["mediaType"].removeprefix(LAYER) == "model"]
                _notify(progress, f"using existing layer {layers[0]['digest']}")
            else:
                layers = [self._file_layer(spec.from_, "model", progress)]
            if spec.adapters:
                layers += [self._file_layer(a, "adapter", progress) for a in spec.adapters]
            elif parent:
                layers += [l for l in parent.layers if l["mediaType"] == LAYER + "adapter"]
            texts = {"template": spec.template or (parent and parent.template),
                     "system": spec.system if spec.system is not None else (parent and parent.system),
                     "license": spec.license or (parent and parent.license)}
            for kind in TEXT_LAYERS:
                if texts[kind]:
                    layers.append(self._layer(texts[kind].encode("utf-8"), kind))
            messages = spec.messages or (parent.messages if parent else [])
            if messages:
                layers.append(self._layer(_json([{"role": m.role, "content": m.content} for m in messages]),
                                          "messages"))
            if params:
                layers.append(self._layer(_json(params), "params"))
            info = read_gguf_info(self.blobs.path(layers[0]["digest"]))
            _notify(progress, "writing manifest")
            self._write_manifest(name, layers, info)
        _notify(progress, "success")
        return self.get(str(name))

    def create_from_modelfile(self, raw_name: str, text: str, base_dir: Path, progress: Progress | None = None) -> Model:
        parse_name(raw_name)
        parsed = parse_modelfile(text, base_dir)
        spec = CreateSpec(from_=parsed.from_, parameters=parsed.parameters, template=parsed.template,
                          system=parsed.system, license=parsed.license, adapters=parsed.adapters,
                          messages=[Message(role, content) for role, content in parsed.messages])
        return self.create(raw_name, spec, progress)

    def copy(self, source: str, destination: str) -> None:
        target = parse_name(destination)
        with self._writing():
            data = self._manifest_path(parse_name(source)).read_bytes() if self.exists(source) else None
            if data is None:
                raise model_not_found(source)
            atomic_write_bytes(self._manifest_path(target), data)

    def delete(self, raw: str) -> None:
        name = parse_name(raw)
        path = self._manifest_path(name)
        with self._writing():
            if not path.is_file():
                raise model_not_found(raw)
            path.unlink()
            if not any(path.parent.iterdir()):
                path.parent.rmdir()
            self._collect_garbage()

    def _collect_garbage(self) -> None:
        used = set()
        for manifest in self.manifests.glob("*/*"):
            if manifest.is_file() and not manifest.name.startswith(".tmp-"):
                data = json.loads(manifest.read_bytes())
                used.add(data["config"]["digest"])
                used.update(layer["digest"] for layer in data["layers"])
        for digest in self.blobs.all_digests() - used:
            self.blobs.remove(digest)

    def cleanup_partials(self) -> int:
        return remove_partials(self.root)

    # -- bundled models --------------------------------------------------------------------------------------------

    def pull(self, raw: str, progress: Progress | None = None) -> Model:
        name = parse_name(raw)
        entry = bundled.find(name)
        if entry is None:
            raise NotFound(f"model '{raw}' is not in ember's catalog of bundled models (nothing is downloaded); "
                           f"available: {', '.join(bundled.catalog_names())}. Make your own with: ember create")
        source = bundled.bundled_gguf(entry)
        _notify(progress, {"status": "pulling manifest"})
        total = source.stat().st_size
        with open(source, "rb") as f:
            digest = "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
        with self._writing():
            if not self.blobs.has(digest):
                copied = self.blobs.import_file(source, lambda done, total: _notify(progress, {
                    "status": f"pulling {digest[7:19]}", "digest": digest, "total": total, "completed": done}))
                if copied != digest:
                    raise BadRequest(f"{source} changed while it was being copied; pull again")
            _notify(progress, {"status": f"pulling {digest[7:19]}", "digest": digest, "total": total,
                               "completed": total})
            _notify(progress, {"status": "verifying sha256 digest"})
            layers = [{"mediaType": LAYER + "model", "digest": digest, "size": total},
                      self._layer(entry.license.encode("utf-8"), "license")]
            _notify(progress, {"status": "writing manifest"})
            self._write_manifest(name, layers, read_gguf_info(self.blobs.path(digest)))
        _notify(progress, {"status": "success"})
        return self.get(str(name))

    # -- showing and exporting -------------------------------------------------------------------------------------

    def modelfile(self, model: Model, from_line: str | None = None) -> str:
        lines = [f"# Modelfile for {model.name}", f"FROM {from_line or model.model_path}"]
        for key, value in model.params.items():
            for item in value if isinstance(value, list) else [value]:
                lines.append(f'PARAMETER {key} {json.dumps(item) if isinstance(item, str) and " " in item else item}')
        for kind, text in (("TEMPLATE", model.template), ("SYSTEM", model.system)):
            if text:
                lines.append(f'{kind} """{text}"""')
        for m in model.messages:
            lines.append(f'MESSAGE {m.role} """{m.content}"""')
        if model.license:
            lines.append(f'LICENSE """{model.license}"""')
        return "\n".join(lines) + "\n"

    def show(self, raw: str) -> dict[str, Any]:
        model = self.get(raw)
        info = model.info
        template = model.template or info.chat_template or ""
        parameters = "\n".join(f"{k} {json.dumps(v) if isinstance(v, str) else v}" for k, vs in model.params.items()
                               for v in (vs if isinstance(vs, list) else [vs]))
        return {
            "modelfile": self.modelfile(model), "parameters": parameters, "template": template,
            "system": model.system or "", "license": model.license or "",
            "details": {"parent_model": "", "format": "gguf", "family": info.architecture,
                        "families": [info.architecture], "parameter_size": info.parameter_size,
                        "quantization_level": info.quantization},
            "model_info": {**info.model_info, "general.parameter_count": info.parameter_count},
            "capabilities": ["completion", "embedding"] + (["tools"] if supports_tools(template) else []),
            "modified_at": model.modified_at.isoformat().replace("+00:00", "Z"),
        }

    def export(self, raw: str, dest: Path) -> list[Path]:
        model = self.get(raw)
        name = parse_name(raw)
        base = f"{name.model}-{name.tag}"
        targets = [dest / f"{base}.gguf"] + [dest / f"{base}-adapter-{i + 1}.gguf" for i in range(len(model.adapter_paths))]
        modelfile = dest / "Modelfile"
        clash = [p for p in [*targets, modelfile] if p.exists()]
        if clash:
            raise BadRequest(f"{clash[0]} already exists; export into an empty folder or remove it first")
        dest.mkdir(parents=True, exist_ok=True)
        layers = [model.layers[0]] + [l for l in model.layers if l["mediaType"] == LAYER + "adapter"]
        for layer, target in zip(layers, targets):
            self.blobs.copy_out(layer["digest"], target)
        text = self.modelfile(model, from_line=f"./{targets[0].name}")
        text += "".join(f"ADAPTER ./{t.name}\n" for t in targets[1:])
        atomic_write_bytes(modelfile, text.encode("utf-8"))
        return [*targets, modelfile]
