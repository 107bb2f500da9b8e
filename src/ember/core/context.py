"""The context-window policy: what happens when a prompt does not fit, said out loud.

A chat that does not fit loses its oldest turns (system messages and the last message are always kept); when even
that cannot fit, the request is refused with the sizes. Nothing is ever cut silently.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass

from ember.core.errors import BadRequest
from ember.core.types import Message

log = logging.getLogger("ember.context")


@dataclass
class Fitted:
    tokens: list[int]
    dropped_messages: int = 0
    dropped_tokens: int = 0


def answer_reserve(num_ctx: int, num_predict: int) -> int:
    """Room kept for the answer: num_predict when set, never more than a quarter of the window."""
    quarter = num_ctx // 4
    return min(num_predict, quarter) if num_predict > 0 else quarter


def too_long(prompt_tokens: int, num_ctx: int, reserve: int, n_ctx_train: int) -> BadRequest:
    return BadRequest(
        f"prompt is {prompt_tokens} tokens but only {num_ctx - reserve} fit: the context window is num_ctx={num_ctx} "
        f"tokens and {reserve} are kept for the answer. Raise num_ctx (this model was trained on up to "
        f"{n_ctx_train}), lower num_predict, or shorten the input."
    )


def fit_after(context: list[int], tokens: list[int], budget: int, refuse: Callable[[int], BadRequest],
              pinned: int = 0) -> Fitted:
    """Earlier tokens (a `context`) then new ones; when both don't fit, the oldest earlier tokens go, except the first
    `pinned` (a BOS)."""
    if len(context) + len(tokens) <= budget:
        return Fitted(context + tokens)
    keep = budget - len(tokens) - pinned
    if keep < 0:
        raise refuse(pinned + len(tokens))
    dropped = len(context) - pinned - keep
    fitted = Fitted(context[:pinned] + context[pinned + dropped:] + tokens, dropped_tokens=dropped)
    log.warning("context window: dropped the %d oldest context tokens to fit %d tokens", dropped, budget)
    return fitted


def fit_messages(messages: list[Message], encode: Callable[[list[Message]], list[int]], budget: int,
                 refuse: Callable[[int], BadRequest]) -> Fitted:
    tokens = encode(messages)
    if len(tokens) <= budget:
        return Fitted(tokens)
    droppable = [i for i, m in enumerate(messages[:-1]) if m.role != "system"]

    def without(k: int) -> list[Message]:
        gone = set(droppable[:k])
        return [m for i, m in enumerate(messages) if i not in gone]

    # Dropping more turns never makes the prompt longer, so search for the fewest drops that fit.
    best: list[int] | None = None
    lo, hi = 1, len(droppable)
    while lo <= hi:
        k = (lo + hi) // 2
        candidate = encode(without(k))
        if len(candidate) <= budget:
            best, best_k, hi = candidate, k, k - 1
        else:
            lo = k + 1
    if best is None:
        smallest = encode(without(len(droppable)))
        raise refuse(len(smallest))
    fitted = Fitted(best, dropped_messages=best_k, dropped_tokens=len(tokens) - len(best))
    log.warning("context window: dropped the %d oldest messages (%d tokens) to fit %d tokens",
                fitted.dropped_messages, fitted.dropped_tokens, budget)
    return fitted
