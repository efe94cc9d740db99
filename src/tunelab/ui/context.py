"""What every tab shares: the settings, the folder fence, the jobs, and the one loaded engine."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from tunelab.config.options import plain_type
from tunelab.errors import ConfigError, TunelabError
from tunelab.ui import runs
from tunelab.ui.jobs import Jobs
from tunelab.ui.settings import Sandbox, UIConfig, safe_name


@dataclass
class Context:
    cfg: UIConfig
    sandbox: Sandbox
    root: Path  # the first root: relative paths start here
    runs_dir: Path
    state: Path  # the UI's own folder
    jobs: Jobs
    engines: Engines = field(default_factory=lambda: Engines())

    @classmethod
    def create(cls, cfg: UIConfig) -> Context:
        first = Sandbox(cfg.root).roots[0]
        runs_dir = (first / cfg.runs_dir).resolve()
        state = (first / cfg.state_dir).resolve()
        for folder in (runs_dir, state, state / "uploads", state / "stores", state / "configs"):
            folder.mkdir(parents=True, exist_ok=True)
        sandbox = Sandbox([*cfg.root, runs_dir, state])
        return cls(cfg, sandbox, first, runs_dir, state, Jobs(state, first))

    @property
    def default_model(self) -> str:
        from tunelab.config.run import DEFAULT_MODEL

        return self.cfg.model or DEFAULT_MODEL

    def run_names(self) -> list[str]:
        return [p.name for p in runs.run_folders(self.runs_dir)]

    def run(self, name: str) -> Path:
        """A run folder by name (only inside the runs folder)."""
        folder = self.runs_dir / safe_name(name, "run")
        if not folder.is_dir():
            raise ConfigError(f"run {name}: no such run folder in {self.runs_dir}")
        return folder

    def running_runs(self) -> set[str]:
        return {Path(j.folder).name for j in self.jobs.all("train") if self.jobs.running(j)}


class Engines:
    """One engine at a time (a model plus named adapters), shared by Chat and RAG: loading is slow and
    memory is what a small machine has least of, so asking for another closes the one before."""

    def __init__(self):
        self._lock = threading.Lock()
        self._key: tuple | None = None
        self._engine = None

    def get(self, model: str | None, adapters: dict[str, str] | None = None, streams: int = 4):
        from tunelab.infer.load import load_engine

        key = (model, tuple(sorted((adapters or {}).items())), streams)
        with self._lock:
            if self._key != key:
                if self._engine is not None:
                    self._engine.close()
                    self._engine, self._key = None, None
                engine = load_engine(model, adapters=adapters or None, max_batch_size=streams)
                if hasattr(engine, "start"):
                    engine.start()  # a loop of its own, so several streams decode together while the page waits
                self._engine, self._key = engine, key
            return self._engine


def error_text(e: Exception) -> str:
    """What a form shows for a failure: the schema's own message for anything a user can fix."""
    if isinstance(e, TunelabError):
        return f"**error**: {e}".replace("\n", "  \n")
    return f"**unexpected error** ({type(e).__name__}): {e}"


def flag_args(cls: type[BaseModel], raw: dict) -> list[str]:
    """Command-line flags for the non-default values of a flat options class (export, quantize)."""
    args: list[str] = []
    for key, value in raw.items():
        info = cls.model_fields[key]
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        flag = extra.get("flag") or "--" + key.replace("_", "-")
        if plain_type(info.annotation) is bool:
            args.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            for item in value:
                args += [flag, str(item)]
        elif value is not None:
            args += [flag, str(value)]
    return args


def set_args(raw: dict, prefix: str = "") -> list[str]:
    """`--set a.b=VALUE` for every leaf of a nested mapping (values written as YAML)."""
    import yaml

    args: list[str] = []
    for key, value in raw.items():
        if isinstance(value, dict) and value:
            args += set_args(value, f"{prefix}{key}.")
        else:
            text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
            text = text.removesuffix("...").strip()  # a bare scalar ends its YAML document
            args += ["--set", f"{prefix}{key}={text}"]
    return args


def as_text(value: Any) -> str:
    return "" if value is None else str(value)
