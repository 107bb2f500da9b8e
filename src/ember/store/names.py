"""Model names: `model` or `model:tag`, safe to use as path parts (no separators, no `..`)."""

import re
from dataclasses import dataclass

from ember.core.errors import BadRequest

_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")
DEFAULT_TAG = "latest"


@dataclass(frozen=True)
class ModelName:
    model: str
    tag: str = DEFAULT_TAG

    def __str__(self) -> str:
        return f"{self.model}:{self.tag}"


def parse_name(raw: str) -> ModelName:
    def bad(why: str) -> BadRequest:
        return BadRequest(f"invalid model name {raw!r}: {why}; names look like 'smollm2' or 'mymodel:v1' "
                          "(letters, digits, '.', '_', '-'; up to 80 characters each side of ':')")

    if not isinstance(raw, str) or not raw:
        raise bad("it is empty")
    if "/" in raw or "\\" in raw:
        raise bad("it contains a path separator")
    if ".." in raw:
        raise bad("it contains '..'")
    model, sep, tag = raw.partition(":")
    if sep and not tag:
        raise bad("the tag after ':' is empty")
    tag = tag or DEFAULT_TAG
    if ":" in tag:
        raise bad("it has more than one ':'")
    for part in (model, tag):
        if not _PART.fullmatch(part):
            raise bad(f"{part!r} is not allowed")
    return ModelName(model, tag)
