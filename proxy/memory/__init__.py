"""Memories: the model, the Chroma store and its cache, ranking, retrieval and injection."""
