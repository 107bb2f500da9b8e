"""Reranking over HTTP, in the shape llama.cpp's server and the common rerank APIs (Jina, Cohere) use: `query`,
`documents`, `top_n` in; `results` with `index` and `relevance_score`, best first, out. Ollama has no rerank route."""

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ember.api import common
from ember.core.durations import parse_keep_alive
from ember.core.options import parse_options
from ember.runtime.rerank import RerankRequest

router = APIRouter()
PATHS = ("/api/rerank", "/v1/rerank", "/rerank", "/v1/reranking")  # ember's own, then llama.cpp server's names


class RerankBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    query: str = Field(min_length=1)
    documents: list[str] = Field(min_length=1, description="texts, or objects with a `text` field")
    top_n: int | None = Field(default=None, ge=1)
    return_documents: bool = False
    options: dict[str, Any] | None = None
    keep_alive: str | int | float | None = None

    @field_validator("documents", mode="before")
    @classmethod
    def _texts(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [item.get("text") if isinstance(item, dict) else item for item in value]
        return value


async def rerank(body: RerankBody, request: Request):
    """Each document's relevance to the query, best first: a cross-encoder's score (its head's logit) or, for an
    embedding model, the cosine of the two vectors."""
    result = await common.unless_gone(request, common.runtime(request).rerank(RerankRequest(
        model=body.model, query=body.query, documents=body.documents, options=parse_options(body.options),
        keep_alive=parse_keep_alive(body.keep_alive))))
    order = sorted(range(len(result.scores)), key=lambda i: -result.scores[i])[: body.top_n]
    return {"model": body.model, "object": "list", "scoring": result.kind,
            "results": [{"index": i, "relevance_score": result.scores[i],
                         **({"document": {"text": body.documents[i]}} if body.return_documents else {})}
                        for i in order],
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
            "total_duration": result.total_ns}


for path in PATHS:
    router.add_api_route(path, rerank, methods=["POST"], include_in_schema=path == "/api/rerank" or
                         path == "/v1/rerank")
