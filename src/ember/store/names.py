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
    """Names become folder and file names in the store, so anything that could escape it is refused."""

    def bad(why: str) -> BadRequest:
        return BadRequest(f"invalid model name {raw!r}: {why}; names look like 'smollm2' or 'mymodel:v1' "
                          "(letters, digits, '.', '_', '-'; up to 80 characters each side of ':')")

    if not isinstance(raw, str):
        raise bad("it is not a string")
    if not raw:
        raise bad("it is empty")
    if "/" in raw or "\\" in raw:
        raise bad("it contains a path separator")
    if ".." in raw:
        raise bad("it contains '..'")
    if raw.count(":") > 1:
        raise bad("it has more than one ':'")
    model, sep, tag = raw.partition(":")
    if not model:
        raise bad("the model part before ':' is empty")
    if sep and not tag:
        raise bad("the tag after ':' is empty")
    for part in (model, tag or DEFAULT_TAG):
        if not _PART.fullmatch(part):
            raise bad(f"{part!r} must start with a letter or digit and use only letters, digits, '.', '_', '-'"
                      if len(part) <= 80 else f"{part[:20]!r}... is longer than 80 characters")
    return ModelName(model, tag or DEFAULT_TAG)
