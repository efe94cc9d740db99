"""`tunelab eval runs/NAME`: base vs tuned on the run's own validation split.

The split is rebuilt exactly as training built it (same file, same `val_split`, same
seed) and written into the eval folder, so the report's config names a real file and the
evaluation can be repeated from it alone. What is measured depends on the objective:

- sft, distill: greedy answers to the held-out prompts against the held-out answers
  (exact match, token F1, ROUGE-L; JSON validity and field accuracy when the answers are
  JSON records; for generative classification the exact match is the accuracy);
- pt: perplexity of the held-out text, with the run's block length as the window;
- dpo, orpo, simpo, kto on pairs: which completion the model finds more likely, chosen
  or rejected, as a two-ending multiple-choice task (acc and acc_norm).
"""

from __future__ import annotations

import json
from pathlib import Path

from tunelab.config import load_config
from tunelab.errors import ConfigError, RunError
from tunelab.eval.config import ModelSpec, TaskConfig

PAIRWISE = ("dpo", "orpo", "simpo", "kto")


def _write_jsonl(rows: list[dict], path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return str(path)


def run_defaults(run: str, folder: Path) -> tuple[list[ModelSpec], list[TaskConfig]]:
    """The models (base, tuned) and tasks for a training run folder; data files go under `folder`."""
    run_dir = Path(run)
    if not (run_dir / "config.yaml").is_file():
        raise RunError(f"{run_dir}: not a tunelab run folder (no config.yaml); point eval at runs/NAME")
    cfg = load_config(run_dir / "config.yaml")
    objective = cfg.objective_name
    models = [ModelSpec(name="base", model=cfg.model.name), ModelSpec(name=run_dir.name, adapter=str(run_dir))]
    name = f"{run_dir.name}-validation"
    if objective in ("sft", "distill"):
        from tunelab.data.dataset import add_system_prompt, as_chat, load_records, split_records

        loaded = load_records(cfg.data.train, cfg.data)
        if loaded.format == "text":
            raise ConfigError(f"{run_dir}: trained on plain text, which has no prompts and answers; "
                              "evaluate it with a perplexity task (--tasks FILE:perplexity)")
        _, validation, _ = split_records(loaded, cfg.data, cfg.train.seed)
        rows = [add_system_prompt(as_chat(r, cfg.data), cfg.data.system_prompt) for r in validation]
        rows = [r for r in rows if "messages" in r and r["messages"][-1]["role"] == "assistant"]
        _need(rows, run_dir)
        metrics = ["exact_match", "f1", "rouge_l"]
        if all(_is_json_object(r["messages"][-1]["content"]) for r in rows):
            metrics.append("json")
        longest = max(len(r["messages"][-1]["content"]) for r in rows)
        task = TaskConfig(name=name, kind="generate", file=_write_jsonl(rows, folder / "data" / f"{name}.jsonl"),
                          metrics=metrics, decoding={"max_new_tokens": min(1024, max(64, longest // 2))})
    elif objective == "pt":
        from tunelab.data.pretrain import read_documents, split_tail

        if cfg.data.validation:  # as training held it out
            held = read_documents(cfg.data.validation, cfg.data)
        else:
            _, held = split_tail(read_documents(cfg.data.train, cfg.data), cfg.data.val_split)
        _need(held, run_dir)
        task = TaskConfig(name=name, kind="perplexity", window=cfg.data.max_length, stride=cfg.data.max_length // 2,
                          file=_write_jsonl([{"text": d} for d in held], folder / "data" / f"{name}.jsonl"))
    elif objective in PAIRWISE:
        from tunelab.data.preference import build_pairs, build_unpaired

        build = build_unpaired if objective == "kto" else build_pairs
        pairs = build(cfg.data, cfg.train.seed, objective).validation
        rows = [{"context": p["prompt"], "choices": [p["chosen"], p["rejected"]], "gold": 0} for p in pairs
                if all(isinstance(p.get(k), str) for k in ("prompt", "chosen", "rejected"))]
        if pairs and not rows:
            raise ConfigError(f"{run_dir}: its preference pairs are conversations (message lists); the default "
                              "evaluation reads text pairs; give tasks with --tasks or --config")
        if not pairs and objective == "kto" and not cfg.data.validation and cfg.data.val_split > 0:
            raise ConfigError(f"{run_dir}: KTO on unpaired records holds out no chosen/rejected pairs to compare; "
                              "give tasks with --tasks or --config")
        _need(rows, run_dir)
        task = TaskConfig(name=name, kind="choice", target_delimiter="",
                          file=_write_jsonl(rows, folder / "data" / f"{name}.jsonl"))
    else:
        raise ConfigError(f"{run_dir}: objective '{objective}' has no default evaluation (its own summary.json holds "
                          "its held-out figures); give tasks with --tasks or --config")
    return models, [task]


def _need(rows: list, run_dir: Path) -> None:
    if not rows:
        raise RunError(f"{run_dir}: the run held out no validation examples (data.val_split is 0 and no "
                       "data.validation file); give tasks with --tasks or --config")


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except (json.JSONDecodeError, TypeError):
        return False
