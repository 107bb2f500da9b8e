"""Conversation memory: a model's past turns kept in a collection of their own and recalled when they bear on a new
question (seed 004's "vector memory", without a separate FAISS or Chroma script).

Each finished turn (the user's message and the answer) goes into the collection `memory-<model>` as one small source,
embedded like any document. A later chat with memory on searches it with the new question; turns close enough to it,
and not already in the conversation the client sent, are put in front of the model as notes from earlier
conversations. The memory is an ordinary collection: `ember rag show memory-smollm2.latest` lists it, `ember rag rm`
forgets it (or one turn).
"""

import hashlib
import logging
import re
import time

import numpy as np

from ember.core.errors import NotFound
from ember.core.types import GenerateRequest
from ember.rag import keywords
from ember.rag.collections import Collections, relevance_floor
from ember.rag.index import ChunkRow, SourceFile

log = logging.getLogger("ember.memory")

RECALL = 3  # turns recalled into a chat at most
# The cosine a remembered turn must reach to be recalled, stricter than a document search's floor: a chat is often
# small talk. With multilingual-e5, questions about three remembered turns scored 0.848–0.885 to their turn, while
# unrelated ones ("Hello!", "Привет, как дела?", "Explain photosynthesis.", "Кто написал «Войну и мир»?") scored at
# most 0.833 to any. (A question in the other language than the turn scored 0.78: not recalled.)
RECALL_FLOOR = {"multilingual-e5": 0.84}
# A remembered turn is cut to this many characters: a memory is a note, not the transcript.
TURN_CHARS = 2000
MEMORY_PROMPT = ("Notes from earlier conversations with this user (use them if they help; the user may not "
                 "remember saying them):\n{memories}")


def collection_name(model: str) -> str:
    """memory-smollm2.latest for smollm2:latest (collection names allow letters, digits, '.', '_' and '-')."""
    return ("memory-" + re.sub(r"[^A-Za-z0-9._-]", ".", model.replace(":", ".")))[:64]


def turn_text(question: str, answer: str) -> str:
    return f"User: {question.strip()}\nAssistant: {answer.strip()}"[:TURN_CHARS]


def recall(collections: Collections, model: str, request: GenerateRequest, question: str) -> list[str]:
    """The remembered turns that bear on `question`, best first, leaving out what the conversation already holds
    (blocking: embeds the question)."""
    name = collection_name(model)
    if name not in collections.names():
        return []
    hits, relevant = collections.search(name, question, RECALL + 2, mode="vector")
    if not relevant:
        return []
    present = "\n".join(m.content for m in request.messages or [] if m.content)
    floor = _floor(collections, name)
    out = []
    for hit in hits:
        text = hit.chunk.text
        said = text.split("\nAssistant: ", 1)[0].removeprefix("User: ").strip()
        if (hit.similarity or 0.0) < floor or (said and said in present):
            continue
        out.append(text)
    return out[:RECALL]


def _floor(collections: Collections, name: str) -> float:
    model = collections.index(name).meta()["embed_model"]
    return RECALL_FLOOR.get(model.split(":")[0], relevance_floor(model))


def prompt(memories: list[str]) -> str:
    return MEMORY_PROMPT.format(memories="\n\n".join(memories))


def remember(collections: Collections, model: str, question: str, answer: str) -> str | None:
    """Keep one finished turn (blocking: embeds it). The memory's key, or None when there was nothing to keep."""
    if not question.strip() or not answer.strip():
        return None
    name = collection_name(model)
    if name not in collections.names():
        try:
            collections.create(name)
        except NotFound as e:  # the embedding model is not in the store: chatting goes on, unremembered
            log.warning("memory for %s is off: %s", model, e.message)
            return None
    index = collections.index(name)
    meta = index.meta()
    text = turn_text(question, answer)
    vector = np.array(collections.embed(meta["embed_model"], [meta.get("document_prefix", "") + text]),
                      dtype=np.float32)
    now, digest = time.time(), hashlib.sha256(text.encode()).hexdigest()
    key = f"memory:{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(now))}-{digest[:12]}"
    title = " ".join(question.split())[:80]
    index.replace_source(SourceFile(key, digest, len(text.encode()), "conversation", title, 1, now),
                         [ChunkRow(text, (), None, 0, len(text), keywords.search_text(text))], vector)
    return key
