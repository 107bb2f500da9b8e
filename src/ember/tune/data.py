"""Chat examples → token ids and the positions to learn, rendered exactly as the server will render a request.

A tuned model is asked through /api/chat, which renders the conversation with the model's chat template (plus the
Modelfile's SYSTEM, as `runtime.generation.conversation` adds it) and tokenizes it with llama.cpp. Training sees the
same text and the same tokens, so that what is learned is what will be asked. Only the assistant's replies are
learned, each through its end-of-turn marker (so the model also learns to stop).
"""

import random
from dataclasses import dataclass
from pathlib import Path

from ember.core import templates
from ember.core.errors import BadRequest
from ember.train.data import jsonl_records

ROLES = ("system", "user", "assistant")


@dataclass
class Example:
    ids: list[int]
    targets: list[int]  # the token each position should predict next, or -100 where nothing is learned

    @property
    def learned(self) -> int:
        return sum(t != -100 for t in self.targets)


def read_chats(path: Path) -> list[list[dict]]:
    """One conversation per line: {"messages": [...]} (OpenAI's fine-tuning format) or {"prompt", "completion"}."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadRequest(f"no file at {path}; --data takes a .jsonl file of {{\"messages\": [...]}} lines") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BadRequest(f"cannot read {path} as UTF-8 text: {e}") from None
    chats = []
    for n, record in jsonl_records(path, text):
        messages = _messages(record)
        if messages is None:
            raise BadRequest(f'{path} line {n}: expected {{"messages": [{{"role": "user", "content": …}}, '
                             f'{{"role": "assistant", "content": …}}]}} or {{"prompt": …, "completion": …}}')
        if not any(m["role"] == "assistant" for m in messages):
            raise BadRequest(f"{path} line {n}: no assistant message, so nothing to learn from it")
        chats.append(messages)
    if not chats:
        raise BadRequest(f"{path} holds no examples")
    return chats


def _messages(record) -> list[dict] | None:
    if not isinstance(record, dict):
        return None
    if isinstance(record.get("prompt"), str) and isinstance(record.get("completion"), str):
        return [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["completion"]}]
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    if not all(isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)
               for m in messages):
        return None
    return [{"role": m["role"], "content": m["content"]} for m in messages]


@dataclass
class ChatFormat:
    """What the server uses to turn messages into tokens for one stored model."""
    template: str
    system: str | None
    bos_token: str
    eos_token: str
    tokenize: "callable"  # text → ids, as the engine does it (BOS where the model adds one, special tokens parsed)

    def render(self, messages: list[dict], *, add_generation_prompt: bool) -> str:
        if self.system and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": self.system}] + messages
        return templates.render(self.template, messages, bos_token=self.bos_token, eos_token=self.eos_token,
                                add_generation_prompt=add_generation_prompt)

    def example(self, messages: list[dict]) -> Example:
        """The whole conversation's tokens; each assistant reply (and its end marker) is a learned span."""
        ids = self.tokenize(self.render(messages, add_generation_prompt=False))
        targets = [-100] * len(ids)
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            start = len(self.tokenize(self.render(messages[:i], add_generation_prompt=True)))
            end = len(self.tokenize(self.render(messages[:i + 1], add_generation_prompt=False)))
            # Position p predicts token p + 1: the reply's tokens start..end-1 are predicted from start-1..end-2.
            for p in range(max(start, 1), min(end, len(ids))):
                targets[p - 1] = ids[p]
        if not any(t != -100 for t in targets):
            raise BadRequest("the chat template drops the assistant's reply, so nothing can be learned from it")
        return Example(ids, targets)


def split(examples: list[Example], val_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """A held-out share chosen at random (reproducibly); none when there are too few examples to spare any."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = int(len(examples) * val_fraction) if len(examples) >= 10 else 0
    val = [examples[i] for i in sorted(order[:n_val])]
    train = [examples[i] for i in sorted(order[n_val:])]
    return train, val
