"""`tunelab export --format gguf` on the real default model (SmolLM2-135M-Instruct): a short LoRA run on chat
records that all carry one system prompt, exported to GGUF q8_0 with verify on, answers through
llama-cpp-python as the run answers through transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.jsonl import write_jsonl
from tunelab.config import load_config
from tunelab.objectives import run as train

pytestmark = pytest.mark.slow

SYSTEM = "You are a helpful assistant who answers in one short sentence."
PAIRS = [("What colour is the sky?", "The sky is blue."), ("How many legs does a cat have?", "A cat has four legs."),
         ("What do bees make?", "Bees make honey."), ("What is frozen water called?", "Frozen water is ice."),
         ("Which animal says moo?", "A cow says moo."), ("What do we breathe?", "We breathe air."),
         ("What is the opposite of hot?", "The opposite of hot is cold."), ("How many days are in a week?",
                                                                            "A week has seven days.")]
# Questions it trained on, whose greedy answers the run is sure of: every token's top log-prob leads the
# runner-up by 2.6 nats or more (measured), while q8_0 moves this model's log-probs by up to ~0.3. On new
# questions near-ties are common ("colour"/"color" 0.1 apart for "What colour is grass?"), q8_0 breaks
# some of them the other way, and the texts part from there: that is rounding, not a broken export.
PROMPTS = [q for q, _ in PAIRS[:3]]
TOKENS = 16


@pytest.fixture(scope="module")
def run(default_model_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export-default")
    rows = [{"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q},
                          {"role": "assistant", "content": a}]} for q, a in PAIRS]
    train(load_config(None, [f"model.name={default_model_dir}", f"data.train={write_jsonl(root / 'chat.jsonl', rows)}",
                             "data.val_split=0.25", f"train.output_dir={root}", "train.run_name=lora",
                             "train.max_steps=4", "train.batch_size=4", "train.lr=1e-3", "train.precision=fp32",
                             "method=lora", "method.r=8", "train.predict=false"]))
    return root / "lora"


def test_q8_0_gguf_passes_verify_and_answers_as_the_run(run, tmp_path):
    import llama_cpp

    from tunelab.compress.export import ExportConfig, export
    from tunelab.compress.source import open_source
    from tunelab.infer import DecodingConfig, Request
    from tunelab.infer.engine import generate
    from tunelab.infer.load import load_engine

    assert open_source(run).system_prompt == SYSTEM
    target = tmp_path / "model.gguf"
    exported = export(str(run), ExportConfig(format="gguf", quant="q8_0", output=str(target), verify_prompts=4,
                                             verify_tokens=TOKENS))
    figures = exported.verify
    assert figures["passed"], figures
    assert figures["token_agreement"] >= 0.95 and figures["template_agrees"] and figures["stops_agree"], figures
    assert json.loads(target.with_name(target.name + ".verify.json").read_text())["passed"] is True

    engine = load_engine(adapters=str(run), dtype="fp32", quantize=None)  # the run, as `tunelab chat` serves it
    try:
        want = [c.text for c in generate(engine, [Request(p, DecodingConfig(max_new_tokens=TOKENS)) for p in PROMPTS])]
    finally:
        engine.close()
    llm = llama_cpp.Llama(str(target), n_ctx=512, verbose=False)
    try:
        assert SYSTEM in llm.metadata["tokenizer.chat_template"]
        got = [llm.create_chat_completion(messages=[{"role": "user", "content": p}], temperature=0.0,
                                          repeat_penalty=1.0, max_tokens=TOKENS)["choices"][0]["message"]["content"]
               for p in PROMPTS]
    finally:
        llm.close()
    assert [g.strip() for g in got] == [w.strip() for w in want]
    assert all(w.strip() for w in want)
