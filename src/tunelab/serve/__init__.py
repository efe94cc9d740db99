"""`tunelab serve`: an OpenAI-compatible HTTP server over the inference engine."""

from __future__ import annotations

from tunelab.serve.app import ServerConfig, create_app


def load_embedder(name: str | None):
    """A SentenceTransformer for /v1/embeddings (the packaged all-MiniLM-L6-v2 by default); None for "none"."""
    if name in (None, "", "none"):
        return None
    from sentence_transformers import SentenceTransformer

    from tunelab.models.hub import embedder_folder

    return SentenceTransformer(str(embedder_folder(name, "--embedding-model")), device="cpu")


def serve(engine, cfg: ServerConfig, host: str = "127.0.0.1", port: int = 8000, embedder=None,
          embedding_name: str | None = None, graceful_s: float = 60.0) -> None:
    """Serve until SIGINT/SIGTERM; on either, stop taking connections and let streams in flight finish
    (up to `graceful_s` seconds) before the engine stops.

    The engine's steps run on this (the main) thread and HTTP runs in a second one: on a CPU
    the model is fastest on the thread that loaded it (see the transformers backend).
    """
    import signal
    import threading

    import uvicorn

    from tunelab.errors import ConfigError

    owns_loop = hasattr(engine, "run_forever")
    app = create_app(engine, cfg, embedder, embedding_name, start_engine=not owns_loop)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info",
                                           timeout_graceful_shutdown=graceful_s))

    def stop(signum, frame):
        if server.should_exit:  # a second signal: stop now
            server.force_exit = True
        server.should_exit = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    http = threading.Thread(target=server.run, name="tunelab-http")
    http.start()
    # whatever ends the HTTP thread (shutdown, or a port that cannot be bound) also ends the engine loop
    threading.Thread(target=lambda: (http.join(), engine.close()), daemon=True).start()
    if owns_loop:
        engine.run_forever()
    http.join()
    if not server.started:
        raise ConfigError(f"could not serve on {host}:{port} (is the port in use?)")


__all__ = ["ServerConfig", "create_app", "load_embedder", "serve"]
