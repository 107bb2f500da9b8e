"""Document retrieval (RAG): reading files into sections, chunking them, indexing and searching the chunks."""
