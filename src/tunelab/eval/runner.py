"""`tunelab eval`: every model on every task, the same examples for each, one report.

Data is read and checked before any model loads, so a bad file fails in a second, not
after an hour. Models load one at a time (memory holds one); generations are kept so a
judge can compare them once every model has answered.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from tunelab.config import to_dict
from tunelab.errors import ConfigError, DataError, ModelError, RunError, TunelabError
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
            _check_golds(task, data)
        if taskdata.uses_prompting(task):  # examples are chosen once, before any model loads
            data = taskdata.with_prompting(task, data)
    else:
        data = taskdata.bias_pairs(task)
    n = len(data[0]) if isinstance(data, tuple) else len(data.prompts) if hasattr(data, "prompts") else len(data)
    return Prepared(task, data, n)


def _check_golds(task: TaskConfig, data) -> None:
    """Every gold answer the metrics must read (a number, a JSON record, a label) is checked
    now, naming its record, rather than after an hour of generating."""
    from tunelab.eval.metrics import score_generations

    options = {"labels": task.labels}
    score_generations(task.metrics, [""], data.golds[:1], options)  # unknown metric names, missing options
    strict = [m for m in task.metrics if m in ("numeric", "json", "label")]
    for where, gold in zip(data.wheres, data.golds) if strict else ():
        try:
            score_generations(strict, [""], [gold], options)
        except (DataError, ValueError) as e:
            raise DataError(f"{where}: task '{task.name}': the gold answer in '{task.answer_field}' does not suit "
                            f"metric {'/'.join(strict)}: {e}") from None


def load(spec: ModelSpec, default_model: str | None, dtype_name: str):
    """(model, tokenizer) for a model spec, on the GPU when there is one; any failure is one ModelError."""
    from tunelab.hardware import compute_dtype
    from tunelab.models import load_model, load_run

    base = spec.model or (None if spec.adapter else default_model)
    what = f"adapter {spec.adapter} on {base or 'its recorded base'}" if spec.adapter else f"model {base}"
    try:
        if spec.adapter:
            model, tokenizer = load_run(spec.adapter, base=base, dtype=compute_dtype(dtype_name, "eval.dtype"))
        else:
            model, tokenizer = load_model(base, dtype=compute_dtype(dtype_name, "eval.dtype"))
    except TunelabError:
        raise
    except Exception as e:  # noqa: BLE001  a broken folder, bad weights, a wrong architecture: name it and the cause
        raise ModelError(f"{what} ('{spec.name}') cannot be loaded: {type(e).__name__}: {e}") from None
    config = getattr(model, "config", None)
    if tokenizer is None or config is None or config.is_encoder_decoder or model.get_output_embeddings() is None:
        kind = "an encoder-decoder model" if getattr(config, "is_encoder_decoder", False) else \
            "a classifier or probe (no language-model head)"
        raise ModelError(f"{what} ('{spec.name}') is {kind}; tunelab eval scores causal language models. "
                         "Classifiers report their held-out accuracy in their run's summary.json")
    return _to_device(model), tokenizer


def _to_device(model):
    """The GPU when there is one (quantized weights already sit where they were loaded)."""
    if torch.cuda.is_available() and not getattr(model, "is_quantized", False) and \
            next(model.parameters()).device.type == "cpu":
        model = model.to("cuda")
    return model


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
            return result, [{"context": q.context, "endings": q.endings, "loglikelihoods": [round(x, 4) for x in ll],
                             **p} for q, ll, p in zip(data, lls, result.pop("predictions"))]
        if task.kind == "bias":
            from tunelab.eval.bias import bias_probe

            return bias_probe(model, tokenizer, *data, batch_size=batch_size), None
    from tunelab.infer import generate

    decoding = task.decoding  # sampled answers are seeded by the task unless decoding names its own seed
    if decoding.temperature > 0 and decoding.seed is None:
        decoding = decoding.model_copy(update={"seed": task.seed})
    from tunelab.eval.metrics import score_generations

    if taskdata.uses_prompting(task):
        return _run_prompting(model, tokenizer, prepared, decoding, batch_size)
    outputs = generate(model, tokenizer, data.prompts, decoding, batch_size=batch_size, system=task.system,
                       chat=task.chat)
    if task.kind == "judge":
        return {"n": len(outputs)}, outputs
    return {"n": len(outputs), **score_generations(task.metrics, outputs, data.golds, {"labels": task.labels})}, outputs


def _run_prompting(model, tokenizer, prepared: Prepared, decoding, batch_size: int) -> tuple[dict, list]:
    """A generate task through the prompting route: scored on the final answers when chain-of-thought or
    self-consistency reads them out of the outputs, on the outputs otherwise."""
    from tunelab.eval.metrics import score_generations
    from tunelab.prompting import answer

    task, data = prepared.config, prepared.data
    cfg = taskdata.prompting_config(task)
    results = answer((model, tokenizer), data.prompts, cfg, decoding, system=task.system, batch_size=batch_size)
    preds = [r.answer or "" for r in results]
    figures = {"n": len(results), **score_generations(task.metrics, preds, data.golds, {"labels": task.labels})}
    if cfg.reads_answers:
        figures["answered"] = round(sum(r.answer is not None for r in results) / max(len(results), 1), 5)
    rows = [{"output": r.text, **({"answer": r.answer} if cfg.reads_answers else {}),
             **({"votes": r.votes, "samples": r.samples} if r.votes is not None else {})} for r in results]
    return figures, rows


def _prompt_text(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(f"{m.get('role')}: {m.get('content')}" for m in prompt)


def run_judge(cfg: EvalConfig, prepared: Prepared, outputs: dict[str, list[str]], names: list[str]) -> dict:
    """Pairwise: every model against the first; single: a 1-10 grade for every model."""
    from tunelab.eval.judge import grade, make_judge, pairwise

    try:
        judge = make_judge(cfg.judge)
    except TunelabError:
        raise
    except Exception as e:  # noqa: BLE001  the judge model's own load failure, named
        raise ModelError(f"judge model {cfg.judge.model or cfg.judge.adapter} cannot be loaded: "
                         f"{type(e).__name__}: {e}") from None
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
    done = folder / "report.json"
    if done.exists() and not cfg.overwrite and json.loads(done.read_text(encoding="utf-8")).get("complete", True):
        raise RunError(f"{folder}: an evaluation report is already there; choose another --name, or --overwrite")
    shutil.rmtree(folder / "samples", ignore_errors=True)  # from an earlier, replaced or unfinished, report
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def slug(name: str) -> str:
    """A name safe as one file name (model and task names may hold slashes)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "_"


def _save_samples(folder: Path, p: Prepared, model: str, rows: list) -> None:
    """samples/<task>.<model>.jsonl: each example's prediction, for reading what the figures summarise."""
    if hasattr(p.data, "prompts"):  # generations: with their prompt and gold (and final answer, votes)
        rows = [{"prompt": q, "gold": g, **(o if isinstance(o, dict) else {"output": o})}
                for q, g, o in zip(p.data.prompts, p.data.golds, rows)]
    path = folder / "samples" / f"{slug(p.config.name)}.{slug(model)}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    tmp.replace(path)


def evaluate(cfg: EvalConfig, console: Console | None = None) -> dict:
    """Run the evaluation `cfg` describes; write report.json/.md/.html; return the report.

    The report is rewritten after each model, marked `complete: false` until the end, so
    a failure late on (a model that cannot load, a judge endpoint that goes away) keeps
    every figure already measured.
    """
    console = console or Console()
    folder = _folder(cfg)
    for warning in _overlaps(cfg):
        console.print(f"[yellow]{warning}[/yellow]")
    if cfg.run:
        from tunelab.eval.from_run import run_defaults

        models, tasks = run_defaults(cfg.run, folder)
        tuned = models[-1]
        cfg.models = cfg.models + [tuned] if cfg.models and not any(m.adapter == tuned.adapter for m in cfg.models) \
            else cfg.models or models
        cfg.tasks = cfg.tasks or tasks
    names = [m.name or Path(m.adapter or m.model or "model").name for m in cfg.models]
    if len(set(names)) != len(names):
        raise RunError(f"models: two models share the name {names}; give each a distinct `name`")
    for spec, name in zip(cfg.models, names):
        spec.name = name
    if any(t.kind == "judge" and t.mode == "pairwise" for t in cfg.tasks) and len(names) < 2:
        raise ConfigError("a pairwise judge task compares each model with the first: give at least two models, "
                          "or set mode: single to grade one model's answers")
    prepared = [prepare(t) for t in cfg.tasks]
    default_model = next((m.model for m in cfg.models if m.model), None)
    report: dict[str, Any] = {"complete": False, "models": names, "tasks": {}, "config": to_dict(cfg),
                              "seconds": {}, "versions": _versions()}
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
        _write(report, names, folder)
    for p in prepared:
        if p.config.kind == "judge":
            console.rule(f"judge: {p.config.name}")
            report["tasks"][p.config.name]["results"] = run_judge(cfg, p, outputs[p.config.name], names)
    report["total_seconds"] = round(time.time() - started, 2)
    report["complete"] = True
    paths = _write(report, names, folder)
    console.print(f"report: {paths['markdown']}  {paths['html']}  {paths['json']}")
    report["folder"] = str(folder)
    return report


def _overlaps(cfg: EvalConfig) -> list[str]:
    """A warning for each task file that shares 13-grams with the training file of a run evaluated."""
    from tunelab.data.curate.decontaminate import overlap_warning
    from tunelab.errors import TunelabError

    runs = [m.adapter for m in cfg.models if m.adapter] + ([cfg.run] if cfg.run else [])
    warnings = []
    for run in dict.fromkeys(runs):
        train = _training_file(run)
        for task in cfg.tasks:
            if train and task.file and Path(task.file).is_file():
                try:
                    warning = overlap_warning(train, task.file)
                except TunelabError:  # a file the check cannot read is the task's own error to report
                    continue
                if warning:
                    warnings.append(warning)
    return warnings


def _training_file(run: str) -> str | None:
    import yaml

    try:
        train = (yaml.safe_load((Path(run) / "config.yaml").read_text(encoding="utf-8")) or {})["data"]["train"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None
    return train if train and Path(train).is_file() else None


def _write(report: dict, names: list[str], folder: Path) -> dict[str, Path]:
    report["tasks"] = with_differences(report["tasks"], names)
    return write_report(report, folder)


def _versions() -> dict[str, str]:
    """The libraries whose versions can move the figures."""
    import importlib.metadata as md

    out = {}
    for package in ("tunelab", "torch", "transformers", "peft", "lm_eval"):
        try:
            out[package] = md.version(package)
        except md.PackageNotFoundError:
            continue
    out["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    return out


def _headline(result: dict) -> str:
    keys = [k for k, v in result.items() if isinstance(v, float)][:4]
    return "  ".join(f"{k}={result[k]:.4f}" for k in keys)
