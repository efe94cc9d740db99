"""Chat: the base model and up to three adapters answering the same message side by side, streamed,
with the decoding settings and structured output of `tunelab chat` and `tunelab generate`."""

from __future__ import annotations

import threading
import time

import gradio as gr

from tunelab.config import DecodingConfig
from tunelab.ui.context import Context, error_text
from tunelab.ui.forms import Form

COLUMNS = 4  # the base and three adapters: one engine decodes them together
SHOWN_OPTIONS = ("max_new_tokens", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "seed", "stop",
                 "ignore_eos")
STRUCTURES = ("none", "json_schema", "regex", "choice")


def build(ctx: Context) -> None:
    with gr.Tab("Chat", id="chat") as tab:
        with gr.Row():
            model = gr.Textbox(ctx.default_model, label="base model", elem_id="chat-model", scale=2)
            adapters = gr.Dropdown(ctx.run_names(), multiselect=True, max_choices=COLUMNS - 1, scale=3,
                                   label="adapters", info="LoRA runs answering beside the base",
                                   elem_id="chat-adapters")
        with gr.Accordion("decoding and structured output", open=False):
            decoding = Form(DecodingConfig, "chat", only=SHOWN_OPTIONS, values={"max_new_tokens": 256})
            system = gr.Textbox(label="system prompt", info="default: the run's own, if it trained with one",
                                elem_id="chat-system")
            with gr.Row():
                structure = gr.Dropdown(list(STRUCTURES), value="none", label="structured output",
                                        elem_id="chat-structure")
                spec = gr.Textbox(label="JSON schema, regular expression, or choices (one per line)", lines=3,
                                  elem_id="chat-structure-spec")
        with gr.Row():
            bots = [gr.Chatbot(label="base" if i == 0 else f"adapter {i}", visible=i == 0, height=360,
                               elem_id=f"chat-answer-{i}") for i in range(COLUMNS)]
        with gr.Row():
            message = gr.Textbox(label="message", placeholder="ask something", elem_id="chat-message", scale=5)
            send = gr.Button("Send", variant="primary", elem_id="chat-send", scale=1)
            clear = gr.Button("Clear", elem_id="chat-clear", scale=1)
        error = gr.Markdown(elem_id="chat-error")

        tab.select(lambda: gr.update(choices=ctx.run_names()), None, adapters)
        adapters.change(lambda names: [gr.update(visible=i <= len(names or []),
                                                 label="base" if i == 0 else (names or [""] * COLUMNS)[i - 1]
                                                 if i <= len(names or []) else "")
                                       for i in range(COLUMNS)], adapters, bots)
        inputs = [model, adapters, system, structure, spec, message, *bots, *decoding.inputs]
        for event in (send.click, message.submit):
            event(lambda *v: (yield from respond(ctx, decoding, *v)), inputs, [error, message, *bots])
        clear.click(lambda: [[] for _ in bots], None, bots)


def respond(ctx: Context, form: Form, model, names, system, structure, spec, message, *rest):
    """Stream every column's answer to `message` as the engine decodes them together."""
    from tunelab.infer.engine import BASE_ADAPTER, Request

    histories, values = rest[:COLUMNS], rest[COLUMNS:]
    names = list(names or [])
    if not (message or "").strip():
        yield "", gr.skip(), *[gr.skip()] * COLUMNS
        return
    try:
        decoding = DecodingConfig.load(form.raw(values), "decoding")
        constraint = _constraint(structure, spec)
        adapters = {n: str(ctx.run(n)) for n in names}
        engine = ctx.engines.get(ctx.sandbox.model(model) or ctx.default_model, adapters, streams=COLUMNS)
    except Exception as e:  # noqa: BLE001
        yield error_text(e), gr.skip(), *[gr.skip()] * COLUMNS
        return
    columns = [BASE_ADAPTER if adapters else None, *names]
    chats = [[*_plain(histories[i]), {"role": "user", "content": message}] for i in range(len(columns))]
    texts, finished, lock = [""] * len(columns), [False] * len(columns), threading.Lock()

    def sink(i):
        def take(delta):
            with lock:
                texts[i] += delta.text + (f" [error: {delta.error}]" if delta.error else "")
                finished[i] = finished[i] or bool(delta.finish_reason)
        return take

    try:
        for i, adapter in enumerate(columns):
            engine.submit(Request(list(chats[i]), decoding, system=system or None, adapter=adapter,
                                  constraint=constraint), sink=sink(i))
    except Exception as e:  # noqa: BLE001  a bad schema or adapter: said before anything streams
        yield error_text(e), gr.skip(), *[gr.skip()] * COLUMNS
        return
    while True:
        with lock:
            shown = [chat + [{"role": "assistant", "content": text}] for chat, text in zip(chats, texts)]
            done = all(finished)
        yield "", "", *shown, *[gr.skip()] * (COLUMNS - len(columns))
        if done:
            return
        time.sleep(0.1)


def _plain(history) -> list[dict]:
    """Chatbot messages as the engine's chat messages (text parts joined)."""
    out = []
    for m in history or []:
        content = m["content"]
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        out.append({"role": m["role"], "content": str(content)})
    return out


def _constraint(structure: str, spec: str):
    import json

    from tunelab.errors import ConfigError
    from tunelab.infer.structured import Constraint

    if structure == "none":
        return None
    if not (spec or "").strip():
        raise ConfigError(f"structured output {structure}: give the {structure.replace('_', ' ')} in the box below it")
    if structure == "json_schema":
        try:
            return Constraint.json_schema(json.loads(spec))
        except json.JSONDecodeError as e:
            raise ConfigError(f"structured output json_schema: not valid JSON ({e})") from None
    if structure == "regex":
        return Constraint.regex(spec.strip())
    return Constraint.choice([line.strip() for line in spec.splitlines() if line.strip()])
