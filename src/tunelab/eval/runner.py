"""`tunelab eval`: every model on every task, the same examples for each, one report.

Data is read and checked before any model loads, so a bad file fails in a second, not
after an hour. Models load one at a time (memory holds one); generations are kept so a
judge can compare them once every model has answered.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from tunelab.config import to_dict
from tunelab.errors import ModelError, RunError, TunelabError
from tunelab.eval import tasks as taskdata
from tunelab.eval.config import EvalConfig, ModelSpec, TaskConfig
from tunelab.eval.report import with_differences, write_report


@dataclass
class Prepared:
    config: TaskConfig
    data: Any  # documents | questions | Prompted | (stereotyped, other, categories)
    n: int


def prepare(task: TaskConfig) -> Prepared:
    """Read and check a task's data (DataError on the first bad record)."""
    if task.kind == "perplexity":
        data = taskdata.perplexity_documents(task)
    elif task.kind == "choice":
        data = taskdata.choice_questions(task)
    elif task.kind in ("generate", "judge"):
        data = taskdata.prompted(task, need_gold=task.kind == "generate")
        if task.kind == "generate":
            from tunelab.eval.metrics import score_generations

            # a metric the data cannot serve (say `label` without `labels`) fails now, not after generating
            score_generations(task.metrics, [""] * min(1, len(data.golds)), data.golds[:1], {"labels": task.labels})
    else:
        data = taskdata.bias_pairs(task)
    n = len(data[0]) if isinstance(data, tuple) else len(data.prompts) if hasattr(data, "prompts") else len(data)
    return Prepared(task, data, n)


def load(spec: ModelSpec, default_model: str | None, dtype_name: str):
    """(model, tokenizer) for a model spec; any failure becomes one ModelError naming it."""
    from tunelab.models import load_model, load_run
    from tunelab.training.precision import compute_dtype

    dtype = compute_dtype(dtype_name)
    base = spec.model or (None if spec.adapter else default_model)
    try:
        if spec.adapter:
            return load_run(spec.adapter, base=base, dtype=dtype)
        return load_model(base, dtype=dtype)
    except TunelabError:
        raise
    except Exception as e:  # noqa: BLE001  a broken folder, bad weights, a wrong architecture: name the model and the cause
        what = f"adapter {spec.adapter} on {base or 'its recorded base'}" if spec.adapter else f"model {base}"
        raise ModelError(f"{what} ('{spec.name}') cannot be loaded: {type(e).__name__}: {e}") from None


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=True)


def run_task(model, tokenizer, prepared: Prepared, batch_size: int, console: Console) -> tuple[dict, list | None]:
    """(figures, generations or None) of one model on one task."""
    task, data = prepared.config, prepared.data
    with _progress(console) as bar:
        job = bar.add_task(f"  {task.name}", total=prepared.n)

        def advance(k: int) -> None:
            bar.advance(job, k)

        if task.kind == "perplexity":
            from tunelab.eval.perplexity import document_nll, perplexity_metrics, windows

            bar.update(job, total=sum(len(windows(len(tokenizer.encode(d, add_special_tokens=False)) + 1,
                                                  task.window, task.stride)) for d in data))
            nll = document_nll(model, tokenizer, data, task.window, task.stride, batch_size, advance)
            return perplexity_metrics(data, nll), None
        if task.kind == "choice":
            from tunelab.eval.choice import choice_metrics, ending_loglikelihoods

            lls = ending_loglikelihoods(model, tokenizer, data, batch_size, advance)
            result = choice_metrics(lls, data)
            return result, [{"loglikelihoods": [round(x, 4) for x in ll], **p}
                            for ll, p in zip(lls, result.pop("predictions"))]
        if task.kind == "bias":
            from tunelab.eval.bias import bias_probe

            return bias_probe(model, tokenizer, *data, batch_size=batch_size), None
    from tunelab.infer import DecodingConfig, generate

    decoding = DecodingConfig(max_new_tokens=task.max_new_tokens, temperature=task.temperature, top_p=task.top_p,
                              stop=task.stop, seed=0 if task.temperature > 0 else None)
    outputs = generate(model, tokenizer, data.prompts, decoding, batch_size=batch_size, system=task.system,
                       chat=task.chat)
    if task.kind == "judge":
        return {"n": len(outputs)}, outputs
    from tunelab.eval.metrics import score_generations

    return {"n": len(outputs), **score_generations(task.metrics, outputs, data.golds, {"labels": task.labels})}, outputs


def _prompt_text(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(f"{m.get('role')}: {m.get('content')}" for m in prompt)


def run_judge(cfg: EvalConfig, prepared: Prepared, outputs: dict[str, list[str]], names: list[str]) -> dict:
    """Pairwise: every model against the first; single: a 1-10 grade for every model."""
    from tunelab.eval.judge import grade, make_judge, pairwise

    judge = make_judge(cfg.judge)
    task, data = prepared.config, prepared.data
    questions = [_prompt_text(p) for p in data.prompts]
    refs = data.references if any(data.references) else None
    results = {}
    if task.mode == "single":
        for name in names:
            results[name] = grade(judge, questions, outputs[name], cfg.judge.rubric, refs)
    else:
        results[names[0]] = {}
        for name in names[1:]:  # "win" means this model beat the baseline
            results[name] = pairwise(judge, questions, outputs[name], outputs[names[0]], cfg.judge.rubric, refs)
    return results


def _folder(cfg: EvalConfig) -> Path:
    cfg.run_name = cfg.run_name or f"eval-{time.strftime('%Y%m%d-%H%M%S')}"
    folder = Path(cfg.output_dir) / cfg.run_name
    if (folder / "report.json").exists() and not cfg.overwrite:
        raise RunError(f"{folder}: an evaluation report is already there; choose another --name, or --overwrite")
    if folder.exists() and cfg.overwrite:
        shutil.rmtree(folder / "samples", ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _save_samples(folder: Path, p: Prepared, model: str, rows: list) -> None:
    """samples/<task>.<model>.jsonl: each example's prediction, for reading what the figures summarise."""
    if hasattr(p.data, "prompts"):  # generations: with their prompt and gold
        rows = [{"prompt": q, "gold": g, "output": o} for q, g, o in zip(p.data.prompts, p.data.golds, rows)]
    path = folder / "samples" / f"{p.config.name}.{model}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    tmp.replace(path)


def evaluate(cfg: EvalConfig, console: Console | None = None) -> dict:
    """Run the evaluation `cfg` describes; write report.json/.md/.html; return the report."""
    console = console or Console()
    folder = _folder(cfg)
    if cfg.run:
        from tunelab.eval.from_run import run_defaults

        models, tasks = run_defaults(cfg.run, folder)
        cfg.models = cfg.models or models
        cfg.tasks = cfg.tasks or tasks
    names = [m.name or Path(m.adapter or m.model or "model").name for m in cfg.models]
    if len(set(names)) != len(names):
        raise RunError(f"models: two models share the name {names}; give each a distinct `name`")
    for spec, name in zip(cfg.models, names):
        spec.name = name
    prepared = [prepare(t) for t in cfg.tasks]
    default_model = next((m.model for m in cfg.models if m.model), None)
    report: dict[str, Any] = {"models": names, "tasks": {}, "config": to_dict(cfg), "seconds": {}}
    for p in prepared:
        report["tasks"][p.config.name] = {"kind": p.config.kind, "file": p.config.file, "n": p.n, "results": {}}
    outputs: dict[str, dict[str, list[str]]] = {}
    started = time.time()
    for spec in cfg.models:
        console.rule(f"{spec.name}")
        model, tokenizer = load(spec, default_model, cfg.dtype)
        report["seconds"][spec.name] = {}
        for p in prepared:
            t0 = time.time()
            result, samples = run_task(model, tokenizer, p, cfg.batch_size, console)
            seconds = round(time.time() - t0, 2)
            report["seconds"][spec.name][p.config.name] = seconds
            if p.config.kind != "judge":
                report["tasks"][p.config.name]["results"][spec.name] = result
            if samples is not None:
                _save_samples(folder, p, spec.name, samples)
                if p.config.kind == "judge":
                    outputs.setdefault(p.config.name, {})[spec.name] = samples
            console.print(f"  {p.config.name}: {_headline(result)} ({seconds:.1f} s)")
        if cfg.harness:
            from tunelab.eval.harness import run_harness

            found = run_harness(model, tokenizer, cfg.harness, cfg.batch_size, cfg.harness_limit,
                                cfg.harness_num_fewshot, cfg.harness_include)
            for task, figures in found.items():
                entry = report["tasks"].setdefault(f"harness:{task}", {"kind": "harness", "n": None, "results": {}})
                entry["results"][spec.name] = figures
                console.print(f"  harness:{task}: {_headline(figures)}")
        del model
    for p in prepared:
        if p.config.kind == "judge":
            console.rule(f"judge: {p.config.name}")
            results = run_judge(cfg, p, outputs[p.config.name], names)
            report["tasks"][p.config.name]["results"] = results
    report["seconds"]["total"] = round(time.time() - started, 2)
    report["tasks"] = with_differences(report["tasks"], names)
    paths = write_report(report, folder)
    console.print(f"report: {paths['markdown']}  {paths['html']}  {paths['json']}")
    report["folder"] = str(folder)
    return report


def _headline(result: dict) -> str:
    keys = [k for k, v in result.items() if isinstance(v, float)][:4]
    return "  ".join(f"{k}={result[k]:.4f}" for k in keys)
