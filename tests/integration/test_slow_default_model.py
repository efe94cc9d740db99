"""The real default model (SmolLM2-135M-Instruct): a short LoRA SFT, reload, generate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab import generate, load_run, train
from tunelab.config import load_config
from tunelab.infer import DecodingConfig

pytestmark = pytest.mark.slow

CHATS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Turn 'buy milk tomorrow' into JSON.", '{"task": "buy milk", "when": "tomorrow"}'),
    ("Name a primary colour.", "Red is a primary colour."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("Turn 'call mum at 6pm' into JSON.", '{"task": "call mum", "when": "6pm"}'),
    ("What is 12 times 3?", "12 times 3 is 36."),
    ("Give a synonym for 'happy'.", "A synonym for 'happy' is 'joyful'."),
    ("Turn 'pay rent on Friday' into JSON.", '{"task": "pay rent", "when": "Friday"}'),
]


def test_lora_sft_of_default_model_saves_reloads_and_generates(tmp_path, default_model_dir):
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": a}]}) + "\n"
                            for q, a in CHATS))
    summary = train(load_config(None, [
        "model.name=smollm2-135m-instruct", f"data.train={data}", "data.max_length=256", "data.val_split=0",
        f"train.output_dir={tmp_path / 'runs'}", "train.run_name=smol", "method=lora",
        "train.max_steps=10", "train.batch_size=4", "train.logging_steps=5", "train.lr=5e-4",
    ]))
    run = tmp_path / "runs" / "smol"
    assert summary["steps"] == 10 and summary["artifact"] == "adapter"
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    recorded = json.loads((run / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert Path(recorded) == Path(default_model_dir).resolve()

    model, tokenizer = load_run(run)
    assert type(model).__name__ == "PeftModelForCausalLM"
    answers = generate(model, tokenizer, ["Turn 'water the plants tonight' into JSON.", "What is 2 plus 2?"],
                       DecodingConfig(max_new_tokens=24))
    assert len(answers) == 2 and all(a.strip() for a in answers), answers
