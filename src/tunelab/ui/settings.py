"""What `tunelab ui` is started with, and the fence around the files it may touch.

The UI reads and writes only inside its roots (the folders it was started with, `.` by
default) and its own folder (uploads, stores, job logs); a path a user types is resolved,
symlinks followed, and refused when it lands outside them.
"""

from __future__ import annotations

import re
from pathlib import Path

from tunelab.config.options import Options, opt
from tunelab.errors import ConfigError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class UIConfig(Options):
    """The web UI: where it listens, who may use it, which folders it may read and write."""

    host: str = opt("127.0.0.1", "address to listen on; loopback only unless you give another (then set --auth)")
    port: int = opt(7860, "port to listen on", ge=1, le=65535)
    auth: str | None = opt(None, "USER:PASS, or a file with one USER:PASS per line, needed to open the UI")
    root: list[str] = opt(["."], "folders the UI may read and write (data, documents, runs); repeat the flag for "
                          "several; paths outside them are refused")
    runs_dir: str = opt("runs", "where run, evaluation and comparison folders go (relative to the first root)")
    state_dir: str = opt(".tunelab-ui", "the UI's own folder for uploads, stores, configs and job logs (relative to "
                         "the first root)")
    max_upload_mb: int = opt(100, "the largest file an upload may be", ge=1)
    model: str | None = opt(None, "the model the forms start with; default the default model")


class Sandbox:
    """The folders the UI may use; `path()` refuses anything outside them."""

    def __init__(self, roots: list[str | Path]):
        self.roots = [Path(r).expanduser().resolve() for r in roots]
        for root in self.roots:
            if not root.is_dir():
                raise ConfigError(f"--root {root}: not a folder; give folders that exist")

    def path(self, text: str | Path, what: str = "path", must_exist: bool = True) -> Path:
        """`text` as an absolute path inside a root (a relative one is taken from the first root)."""
        raw = str(text).strip()
        if not raw:
            raise ConfigError(f"{what}: empty; give a file or folder inside {self.listed()}")
        path = Path(raw).expanduser()
        path = (path if path.is_absolute() else self.roots[0] / path).resolve()
        if not self.inside(path):
            raise ConfigError(f"{what} {raw}: outside the folders this UI may use ({self.listed()}); move it into "
                              "one of them, or start tunelab ui with --root FOLDER")
        if must_exist and not path.exists():
            raise ConfigError(f"{what} {raw}: no such file or folder")
        return path

    def model(self, text: str | None, what: str = "model") -> str | None:
        """A model field: a built-in alias as is; anything else is a path and must lie inside a root."""
        from tunelab.models.hub import ALIASES

        if not text or not text.strip() or text.strip() in ALIASES:
            return text.strip() if text and text.strip() else None
        return str(self.path(text, what))

    def inside(self, path: Path) -> bool:
        return any(path == r or path.is_relative_to(r) for r in self.roots)

    def listed(self) -> str:
        return ", ".join(str(r) for r in self.roots)


def read_auth(value: str | None) -> list[tuple[str, str]] | None:
    """`--auth USER:PASS` or a file of such lines -> [(user, password)]."""
    if not value:
        return None
    path = Path(value).expanduser()
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else [value]
    pairs = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user or not password:
            where = f"{path}:{number}" if path.is_file() else "--auth"
            raise ConfigError(f"{where}: expected USER:PASS (a user name, a colon, a password)")
        pairs.append((user, password))
    if not pairs:
        raise ConfigError(f"--auth {value}: no USER:PASS line in it")
    return pairs


def safe_name(text: str, what: str = "name") -> str:
    """A folder name typed by a user: letters, digits, dot, dash, underscore; never a path."""
    text = (text or "").strip()
    if not re.fullmatch(r"[\w][\w.-]{0,99}", text) or ".." in text:
        raise ConfigError(f"{what} {text!r}: use letters, digits, '.', '-' and '_' only (it names a folder)")
    return text
