"""`tunelab serve`: an OpenAI-compatible HTTP server over the inference engine."""

from __future__ import annotations

from tunelab.serve.app import ServerConfig, create_app


def load_embedder(name: str | None):
    """A SentenceTransformer for /v1/embeddings (the packaged all-MiniLM-L6-v2 by default); None for "none"."""
    if name in (None, "", "none"):
        return None
    from sentence_transformers import SentenceTransformer

    from tunelab.methods.probe import embedder_folder

    return SentenceTransformer(str(embedder_folder(name)), device="cpu")


def serve(engine, cfg: ServerConfig, host: str = "127.0.0.1", port: int = 8000, embedder=None,
          embedding_name: str | None = None, graceful_s: float = 60.0) -> None:
    """Serve until SIGINT/SIGTERM; on either, stop taking connections and let streams in flight finish
    (up to `graceful_s` seconds) before the engine stops."""
    import uvicorn

    app = create_app(engine, cfg, embedder, embedding_name)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=graceful_s)


__all__ = ["ServerConfig", "create_app", "load_embedder", "serve"]
