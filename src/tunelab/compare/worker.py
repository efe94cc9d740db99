"""One route, run in its own process: `python -m tunelab.compare.worker ROUTE_FOLDER`.

Reads job.json, trains when the route trains, answers every test example, and writes
predictions.jsonl (one line per test example: prediction, gold, score) and result.json (the
metric and the costs). result.json is written last and atomically: its presence means the
route finished, which is what `--resume` trusts.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

from tunelab.config.files import write_text_atomic


def run_job(folder: Path) -> dict:
    """Run the job in `folder`; return (and write) its result."""
    job = json.loads((folder / "job.json").read_text(encoding="utf-8"))
    started = time.time()
    train_s, extra = 0.0, {}
    if job["family"] in ("training", "features"):
        summary = _train(job)
        train_s = summary.get("train_runtime_s") or (summary.get("embed_seconds", 0) + summary.get("fit_seconds", 0))
        extra = {"trainable_params": summary.get("trainable_params", 0), "artifact_bytes":
                 summary.get("artifact_bytes", 0), "steps": summary.get("steps"), "run_folder": str(folder / "run")}
    t0 = time.time()
    times = {"prepare": 0.0, "load": 0.0}  # choosing examples or indexing; reading the model
    if job["kind"] == "labels":
        preds, golds = _labels(job, folder, times)
    else:
        preds, golds = _generate(job, folder, times)
    infer_s = time.time() - t0 - times["prepare"] - times["load"]
    scores = per_example(job["metric"], preds, golds)
    write_text_atomic(folder / "predictions.jsonl", "".join(
        json.dumps({"prediction": p, "gold": g, "score": s}, ensure_ascii=False) + "\n"
        for p, g, s in zip(preds, golds, scores)))
    result = {"status": "ok", "name": job["name"], "route": job["route"], "family": job["family"],
              "metric": job["metric"], "value": metric_value(job["metric"], preds, golds, scores),
              "n": len(golds), "train_s": round(train_s + times["prepare"], 2), "load_s": round(times["load"], 2),
              "infer_s": round(infer_s, 2),
              "infer_ms_per_example": round(1000 * infer_s / max(len(golds), 1), 2),
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
              "wall_s": round(time.time() - started, 2), "trainable_params": 0, "artifact_bytes": 0, **extra}
    write_text_atomic(folder / "result.json", json.dumps(result, indent=2, ensure_ascii=False))
    return result


def per_example(metric: str, preds: list, golds: list) -> list[float]:
    """Each example's score under the metric (1/0 for labels and exact matches)."""
    if metric in ("accuracy", "macro_f1"):
        return [float(p == g) for p, g in zip(preds, golds)]
    from tunelab.eval.metrics import score_generations

    key = {"json": "field_accuracy", "numeric": "numeric_accuracy"}.get(metric, metric)
    out = []
    for p, g in zip(preds, golds):
        figures = score_generations([metric], [p], [g])
        out.append(float(figures.get(key, next(iter(figures.values())))))
    return out


def metric_value(metric: str, preds: list, golds: list, scores: list[float]) -> float:
    """The task's metric over every example (macro-F1 is not a mean of per-example scores)."""
    if metric == "macro_f1":
        from sklearn.metrics import f1_score

        return round(float(f1_score(golds, preds, average="macro")), 5)
    return round(sum(scores) / max(len(scores), 1), 5)


# ---------------------------------------------------------------- training and feature routes


def _train(job: dict) -> dict:
    from tunelab.config import load_config
    from tunelab.objectives import run

    return run(load_config(None, base=job["run"]))


# ---------------------------------------------------------------- labels


def _labels(job: dict, folder: Path, times: dict) -> tuple[list, list]:
    """(predicted label names, gold names); `times` gets the seconds spent preparing and loading."""
    from tunelab.data.readers import read_records

    test = [r.data for r in read_records(job["test"])]
    texts, golds = [r["text"] for r in test], [r["label"] for r in test]
    if job["family"] == "features":
        from tunelab.methods.probe import FeatureProbe

        t0 = time.time()
        probe = FeatureProbe.load(folder / "run" / "adapter")
        times["load"] += time.time() - t0
        return [str(x) for x in probe.predict(texts)], golds
    if job["family"] == "training":
        return _classifier(folder / "run", texts, job["batch_size"], times), golds
    return _label_scoring(job, texts, times), golds


def _classifier(run: Path, texts: list[str], batch_size: int, times: dict) -> list[str]:
    import torch

    from tunelab.hardware import compute_dtype
    from tunelab.models import load_run

    t0 = time.time()
    model, tokenizer = load_run(run, dtype=compute_dtype("auto"))
    times["load"] += time.time() - t0
    model.eval()
    names = model.config.id2label
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=512,
                              return_tensors="pt")
            logits = model(**batch).logits
            out += [names[i] for i in logits.argmax(-1).tolist()]
    return out


def _label_scoring(job: dict, texts: list[str], times: dict) -> list[str]:
    """Prompting for labels: each label name's likelihood as the model's answer; the highest wins.
    Few-shot examples go in the same user turn, each with its label."""
    from tunelab.data.readers import read_records
    from tunelab.eval.classification import name_scores
    from tunelab.hardware import compute_dtype
    from tunelab.models import load_model
    from tunelab.prompting.fewshot import Example, FewShotSelector

    labels, settings = job["labels"], job["prompting"]
    instruction = job["instruction"] or f"Classify the text. Answer with one word: {', '.join(labels)}."
    t0 = time.time()
    questions = [f"Text: {t}" for t in texts]
    if settings.get("k"):
        pool = [Example(f"Text: {r.data['text']}", r.data["label"], r.where) for r in read_records(job["train"])]
        selector = FewShotSelector(pool, settings["k"], settings.get("select", "random"), job["seed"])
        shots = selector.select(questions)
        questions = ["\n\n".join([*(f"{e.input}\nAnswer: {e.output}" for e in chosen), q])
                     for chosen, q in zip(shots, questions)]
    times["prepare"] += time.time() - t0  # choosing examples (embedding the pool) is the route's preparation
    t0 = time.time()
    model, tokenizer = load_model(job["model"], dtype=compute_dtype("auto"))
    times["load"] += time.time() - t0
    scores = name_scores(model, tokenizer, [f"{instruction}\n\n{q}\nAnswer:" for q in questions], labels,
                         job["batch_size"])
    return [labels[i] for i in scores.argmax(dim=1).tolist()]


# ---------------------------------------------------------------- generation


def _generate(job: dict, folder: Path, times: dict) -> tuple[list, list]:
    """Answers to the test prompts through eval's generate task: the same prompts, few-shot
    examples, chain-of-thought and votes `tunelab eval` uses."""
    from rich.console import Console

    from tunelab.eval.config import TaskConfig
    from tunelab.eval.runner import prepare, run_task

    settings = job.get("prompting", {})
    fields = {"prompt_field": "prompt", "answer_field": "completion", "metrics": [job["metric"]],
              "decoding": {"max_new_tokens": job["max_new_tokens"],
                           **({"temperature": settings["temperature"]} if "temperature" in settings else {})},
              "seed": job["seed"]}
    if settings.get("k"):
        fields.update(num_fewshot=settings["k"], fewshot_file=job["train"],
                      fewshot_select=settings.get("select", "random"))
    if settings.get("cot"):
        fields.update(cot=True, self_consistency=settings.get("self_consistency", 1))
    task = TaskConfig(name=job["name"], kind="generate", file=job["test"], **fields)
    t0 = time.time()
    prepared = prepare(task)
    times["prepare"] += time.time() - t0
    if job["family"] == "retrieval":
        return _rag(job, folder, prepared, times), prepared.data.golds
    t0 = time.time()
    model, tokenizer = _generator(job, folder)
    times["load"] += time.time() - t0
    _, rows = run_task(model, tokenizer, prepared, job["batch_size"], Console(stderr=True))
    preds = [r.get("answer") or "" if isinstance(r, dict) and "answer" in r else
             (r["output"] if isinstance(r, dict) else r) for r in rows]
    return preds, prepared.data.golds


def _generator(job: dict, folder: Path):
    from tunelab.hardware import compute_dtype
    from tunelab.models import load_model, load_run

    if job["family"] == "training":
        return load_run(folder / "run", dtype=compute_dtype("auto"))
    return load_model(job["model"], dtype=compute_dtype("auto"))


def _rag(job: dict, folder: Path, prepared, times: dict) -> list[str]:
    """Index the documents (once, in the route's folder), then answer each prompt from them."""
    from tunelab.infer.load import load_engine
    from tunelab.rag.ingest import index
    from tunelab.rag.pipeline import RagConfig, RagPipeline

    store = folder / "index"
    t0 = time.time()
    index([job["documents"]], store)
    times["prepare"] += time.time() - t0
    settings = job["prompting"]
    cfg = RagConfig.load({"retrieval": {"top_k": settings.get("top_k", 4)},
                          "decoding": {"max_new_tokens": job["max_new_tokens"]}}, "rag")
    t0 = time.time()
    pipeline = RagPipeline(store, load_engine(job["model"]), cfg)
    times["load"] += time.time() - t0
    questions = [p if isinstance(p, str) else p[-1]["content"] for p in prepared.data.prompts]
    try:
        return [a.text for a in pipeline.ask_many(questions)]
    finally:
        pipeline.close()


def main(argv: list[str]) -> int:
    from tunelab.errors import TunelabError

    folder = Path(argv[0])
    try:
        run_job(folder)
    except TunelabError as e:
        write_text_atomic(folder / "failure.json", json.dumps({"error": str(e)}))
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
