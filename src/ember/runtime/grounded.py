"""A chat turned into a grounded one: the question searched in the request's collections, the chunks put in front of
the model as numbered sources, and the citations handed back with the answer.

Searching is the runtime's work (it embeds the question with each collection's own model, on the scheduler like any
embedding request); what the prompt says and how citations look is `ember.rag.grounding`.
"""

import asyncio
from dataclasses import dataclass, replace

from ember.core.errors import BadRequest
from ember.core.options import Options, resolve
from ember.core.types import GenerateRequest, Message
from ember.rag import grounding
from ember.rag.collections import Collections
from ember.rag.retrieve import Hit, Rerank

DEFAULT_TOP_K = 4  # sources in the prompt: enough for an answer, few enough for a small model's window


@dataclass
class Grounding:
    request: GenerateRequest  # with the sources in its system message
    hits: list[Hit]
    collection_of: dict[int, str]  # id(hit) → its collection
    nothing_found: str | None  # the answer to give without the model when no source is relevant
    cite_in_text: bool = False  # append the numbered sources to the answer's text

    @property
    def citations(self) -> list[dict]:
        return grounding.citations(self.hits, self.collection_of)

    def sources_text(self) -> str:
        return "\n\nSources:\n" + "\n".join(f"[{n}] {grounding.label(h)}" for n, h in enumerate(self.hits, 1))


def question_of(request: GenerateRequest) -> str:
    """The latest user message (or the prompt); empty when there is none."""
    for message in reversed(request.messages or []):
        if message.role == "user" and message.content.strip():
            return message.content
    return request.prompt if request.prompt and request.prompt.strip() else ""


async def search(collections: Collections, names: list[str], question: str, k: int, mode: str = "hybrid",
                 rerank: Rerank | None = None) -> tuple[list[Hit], dict[int, str], bool]:
    """The best `k` chunks over all `names`, their collections, and whether any is relevant enough to answer from."""
    found: list[tuple[str, Hit]] = []
    relevant = False
    for name in names:
        hits, close = await asyncio.to_thread(collections.search, name, question, k, mode, rerank)
        relevant = relevant or close
        found += [(name, hit) for hit in hits]
    found.sort(key=lambda item: -item[1].score)  # fused (ranks) or reranked scores: comparable across collections
    best = found[:k]
    return [hit for _, hit in best], {id(hit): name for name, hit in best}, relevant


def options_of(store, request: GenerateRequest) -> Options:
    """The request's options over its model's Modelfile PARAMETERs (blocking: reads the store)."""
    return resolve(store.get(request.model).params, request.options, request.preset)


async def ground(collections: Collections, request: GenerateRequest, options: Options,
                 rerank: Rerank | None = None) -> Grounding | None:
    """None when the request names no collections (in its body, its options or its model's Modelfile)."""
    names = list(dict.fromkeys(request.collections or options.collections or []))
    if not names:
        return None
    question = question_of(request)
    if not question:
        raise BadRequest("collections were given but there is no question: send a user message")
    hits, collection_of, relevant = await search(collections, names, question, options.rag_top_k or DEFAULT_TOP_K,
                                                 rerank=rerank)
    if not relevant:
        return Grounding(request, [], {}, grounding.nothing_found(question, names))
    grounded = with_system(request, grounding.system_prompt(hits, options.grounding_prompt))
    return Grounding(grounded, hits, collection_of, None, bool(options.cite_sources))


def with_system(request: GenerateRequest, text: str) -> GenerateRequest:
    """`text` put in front of the request's system message (one system message: some templates refuse two)."""
    if request.messages is not None:
        messages = list(request.messages)
        if messages and messages[0].role == "system":
            messages[0] = replace(messages[0], content=f"{text}\n\n{messages[0].content}")
        else:
            messages.insert(0, Message("system", text))
        return replace(request, messages=messages)
    return replace(request, system=f"{text}\n\n{request.system}" if request.system else text)
