"""Interactive terminal chat with streamed tokens, multi-turn history, /reset and /system."""

from __future__ import annotations

from rich.console import Console

from tunelab.config.options import Options, opt
from tunelab.infer.decoding import DecodingConfig
from tunelab.infer.engine import Request, stream

class ChatConfig(Options):
    """How a conversation starts."""

    system: str | None = opt(None, "a system prompt", aka=("system_prompt", "system_message"))


HELP = "commands: /reset (forget the conversation), /system TEXT (set the system prompt), /exit"


def chat_loop(engine, cfg: DecodingConfig, system: str | None = None, console: Console | None = None,
              read=input) -> None:
    """Read user lines, stream answers from `engine`, keep history until /reset or /exit (or end of input).

    Ctrl-C during an answer stops that answer (and keeps what was said); at the prompt it exits.
    """
    console = console or Console()
    history: list[dict] = []
    console.print(f"[dim]{HELP}[/dim]")
    while True:
        try:
            line = read("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            return
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return
        if line == "/reset":
            history = []
            console.print("[dim](conversation reset)[/dim]")
            continue
        if line.startswith("/system"):
            system = line[len("/system"):].strip() or None
            history = []
            console.print(f"[dim](system prompt {'set' if system else 'cleared'}; conversation reset)[/dim]")
            continue
        if line.startswith("/"):
            console.print(f"[dim]unknown command; {HELP}[/dim]")
            continue
        history.append({"role": "user", "content": line})
        console.print("bot> ", end="")
        parts = []
        try:
            for delta in stream(engine, Request(list(history), cfg, system=system)):
                parts.append(delta.text)
                console.print(delta.text, end="", markup=False, highlight=False)
                if delta.finish_reason == "length":
                    console.print(" [dim](cut at --max-new-tokens)[/dim]", end="")
        except KeyboardInterrupt:
            console.print(" [dim](stopped)[/dim]", end="")
        console.print()
        history.append({"role": "assistant", "content": "".join(parts).strip()})
