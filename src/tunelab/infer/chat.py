"""Interactive terminal chat with streamed tokens, multi-turn history, /reset and /system."""

from __future__ import annotations

import threading

from rich.console import Console

from tunelab.infer.generate import DecodingConfig, generation_kwargs, prompt_text

HELP = "commands: /reset (forget the conversation), /system TEXT (set the system prompt), /exit"


def chat_loop(model, tokenizer, cfg: DecodingConfig, system: str | None = None, console: Console | None = None,
              read=input) -> None:
    """Read user lines, stream answers, keep history until /reset or /exit (or end of input)."""
    from transformers import TextIteratorStreamer

    console = console or Console()
    history: list[dict] = []
    console.print(f"[dim]{HELP}[/dim]")
    model.eval()
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
        enc = tokenizer(prompt_text(tokenizer, history, system), return_tensors="pt", add_special_tokens=False)
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = {**enc.to(model.device), **generation_kwargs(model, tokenizer, cfg), "streamer": streamer}
        worker = threading.Thread(target=model.generate, kwargs=kwargs, daemon=True)
        worker.start()
        console.print("bot> ", end="")
        parts = []
        for piece in streamer:
            parts.append(piece)
            console.print(piece, end="", markup=False, highlight=False)
        worker.join()
        console.print()
        history.append({"role": "assistant", "content": "".join(parts).strip()})
