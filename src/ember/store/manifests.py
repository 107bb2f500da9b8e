"""Manifests: `manifests/<model>/<tag>`, JSON in the OCI shape Ollama uses, naming the blobs a model is made of."""

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ember.core.errors import BadRequest
from ember.fsutil import TMP_PREFIX, atomic_write_bytes, fsync_dir, make_dirs
from ember.store.blobs import normalize_digest
from ember.store.names import ModelName, parse_name

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
LAYER_PREFIX = "application/vnd.ollama.image."
KINDS = ("model", "adapter", "params", "template", "system", "license", "messages", "file")


def layer_type(kind: str) -> str:
    return LAYER_PREFIX + kind


def layer_kind(layer: dict[str, Any]) -> str:
    return layer["mediaType"].removeprefix(LAYER_PREFIX)


def to_json(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, ensure_ascii=False).encode("utf-8")


def build(config: dict[str, Any], layers: list[dict[str, Any]]) -> bytes:
    return to_json({"schemaVersion": 2, "mediaType": MANIFEST_TYPE,
                    "config": {"mediaType": CONFIG_TYPE, "digest": config["digest"], "size": config["size"]},
                    "layers": layers})


@dataclass
class Manifest:
    name: ModelName
    path: Path
    data: bytes
    config: dict[str, Any]
    layers: list[dict[str, Any]]
    mtime: float = 0.0

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def digests(self) -> set[str]:
        return {self.config["digest"], *(layer["digest"] for layer in self.layers)}


def load(name: ModelName, path: Path) -> Manifest:
    """Raises OSError when the file cannot be read, ValueError when it is not a manifest ember can use."""
    with open(path, "rb") as f:
        data, mtime = f.read(), os.fstat(f.fileno()).st_mtime
    manifest = parse(name, path, data)
    manifest.mtime = mtime
    return manifest


def parse(name: ModelName, path: Path, data: bytes) -> Manifest:
    """Raises ValueError when the file is not a manifest ember can use."""
    try:
        raw = json.loads(data)
        config, layers = raw["config"], raw["layers"]
        for item in [config, *layers]:
            item["digest"] = normalize_digest(item["digest"])
            if not isinstance(item["size"], int) or not isinstance(item["mediaType"], str):
                raise ValueError("a layer's size or mediaType has the wrong type")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path} is not a valid manifest ({getattr(e, 'message', e)})") from None
    if not any(layer_kind(layer) == "model" for layer in layers):
        raise ValueError(f"{path} names no model layer")
    return Manifest(name, path, data, config, layers)


class Manifests:
    def __init__(self, root: Path):
        self.root = Path(root)
        make_dirs(self.root)

    def path(self, name: ModelName) -> Path:
        return self.root / name.model / name.tag

    def read(self, name: ModelName) -> Manifest | None:
        """None when there is no such model; ValueError when its manifest is damaged."""
        try:
            return load(name, self.path(name))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def write(self, name: ModelName, data: bytes) -> None:
        path = self.path(name)
        if not (path.is_file() and path.read_bytes() == data):  # the same model again changes nothing, not the date
            atomic_write_bytes(path, data)

    def remove(self, name: ModelName) -> None:
        path = self.path(name)
        path.unlink()
        fsync_dir(path.parent)
        with contextlib.suppress(OSError):
            path.parent.rmdir()  # only succeeds when no other tag is left

    def names(self) -> Iterator[tuple[ModelName, Path]]:
        for path in self.root.glob("*/*"):
            if path.name.startswith(TMP_PREFIX) or not path.is_file():
                continue
            try:
                name = parse_name(f"{path.parent.name}:{path.name}")
            except BadRequest:
                continue  # not put there by ember: a name no request could ask for
            yield name, path
