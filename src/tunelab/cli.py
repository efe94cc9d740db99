"""The `tunelab` command line: one table of subcommands, each a thin call into the library."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path

from tunelab.config.run import DEFAULT_MODEL
from tunelab.errors import ConfigError, TunelabError


def cmd_train(args) -> int:
    from tunelab.config import load_config
    from tunelab.config.flags import given
    from tunelab.objectives import run
    from tunelab.training.records import is_main_process

    cfg = load_config(args.config, args.set, flags=given(args, "run"))
    summary = run(cfg)
    if is_main_process():  # under accelerate launch every rank returns here
        print(json.dumps({k: v for k, v in summary.items() if k not in ("data", "plan")}, indent=2))
    return 0


def cmd_generate(args) -> int:
    from tunelab.config.schemas import from_command_line
    from tunelab.data.readers import read_records
    from tunelab.errors import DataError
    from tunelab.infer.engine import Request, generate

    opts = from_command_line("generate", args)
    load, decoding, out_cfg = opts.model, opts.decoding, opts.generate
    prompting = opts.prompting.model_copy(update={"seed": decoding.seed or 0})
    if prompting.in_use and decoding.logprobs:
        raise ConfigError("--logprobs: log-probabilities are not recorded on the prompting route (--template, "
                          "--fewshot, --cot, --self-consistency); drop --logprobs or those flags")
    records = list(read_records(out_cfg.input))
    if prompting.in_use:
        from tunelab.prompting import answer, build_prompts

        prompts = build_prompts(prompting, records)  # examples chosen and records checked before the model loads
    else:
        prompts = []
        for r in records:
            prompt = r.data.get(prompting.prompt_field, r.data.get("messages"))
            if not isinstance(prompt, (str, list)):
                raise DataError(f"{r.where}: needs a '{prompting.prompt_field}' string (or a 'messages' list)")
            prompts.append(prompt)
    constraint = out_cfg.constraint()
    engine = load.engine()
    try:
        if prompting.in_use:
            extra = [{"output": a.text, "finish_reason": a.finish_reason,
                      **({"answer": a.answer} if prompting.reads_answers else {}),
                      **({"votes": a.votes} if a.votes is not None else {})}
                     for a in answer(engine, prompts, prompting, decoding, system=out_cfg.system,
                                     constraint=constraint, batch_size=load.max_batch_size)]
        else:
            requests = [Request(p, decoding.model_copy(update={"seed": None if decoding.seed is None
                                                                 else decoding.seed + i}),
                                chat=prompting.chat, system=out_cfg.system, constraint=constraint)
                        for i, p in enumerate(prompts)]
            extra = [{"output": a.text.strip(), "finish_reason": a.finish_reason,
                      **({"logprobs": [lp.logprob for lp in a.logprobs]} if a.logprobs is not None else {})}
                     for a in generate(engine, requests)]
    finally:
        engine.close()
    out = Path(out_cfg.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for r, row in zip(records, extra):
            f.write(json.dumps({**r.data, **row}, ensure_ascii=False) + "\n")
    print(f"wrote {len(extra)} generations to {out}")
    return 0


def cmd_chat(args) -> int:
    from tunelab.config.schemas import from_command_line
    from tunelab.infer.chat import chat_loop

    opts = from_command_line("chat", args)
    engine = opts.model.engine()
    try:
        chat_loop(engine, opts.decoding, system=opts.chat.system)
    finally:
        engine.close()
    return 0


def cmd_serve(args) -> int:
    from tunelab.config.schemas import from_command_line
    from tunelab.serve import load_embedder, serve

    opts = from_command_line("serve", args)
    load = opts.model
    names = [a.split("=", 1)[0] for a in load.adapter if "=" in a]
    if load.adapter and len(names) != len(load.adapter):
        raise ConfigError("--adapter: the server picks adapters by name; give each as NAME=RUN_FOLDER")
    server = opts.server
    cfg = server.model_copy(update={"served_name": server.served_name or load.model or DEFAULT_MODEL,
                                    "api_key": server.api_key or os.environ.get("TUNELAB_API_KEY") or None})
    engine = load.engine()
    embedder = load_embedder(cfg.embedding_model)
    print(f"serving {cfg.served_name}" + (f" with adapters {', '.join(names)}" if names else "")
          + f" on http://{cfg.host}:{cfg.port}/v1" + (" (API key required)" if cfg.api_key else ""), flush=True)
    serve(engine, cfg, host=cfg.host, port=cfg.port, embedder=embedder, embedding_name=cfg.embedding_model)
    return 0


def _task_spec(spec: str, flags: dict) -> dict:
    """FILE[:KIND[:METRIC+METRIC]] -> a task mapping; the kind is guessed from the file when omitted."""
    from tunelab.config import deep_merge
    from tunelab.eval.config import KINDS

    drive = spec[:2] if len(spec) > 2 and spec[1] == ":" and spec[2] in "\\/" else ""  # C:\data\qa.jsonl
    file, _, rest = spec[len(drive):].partition(":")
    file = drive + file
    kind, _, extra = rest.partition(":")
    if kind and kind not in KINDS:
        raise ConfigError(f"--tasks {spec!r}: '{kind}' is not a task kind; write FILE:KIND[:METRICS] with KIND one "
                          f"of {', '.join(KINDS)}, e.g. qa.jsonl:generate:exact_match+f1")
    task: dict = {"file": file, "kind": kind or _guess_kind(file)}
    if task["kind"] == "choice" and not kind and "endings" in _first_record(file):
        task["choices_field"] = "endings"
    if extra and task["kind"] == "judge":
        task["mode"] = extra
    elif extra:
        task["metrics"] = extra.split("+")
    return deep_merge(task, flags)  # --limit, --max-new-tokens ... apply to every task given here


def _first_record(file: str) -> dict:
    from tunelab.data.readers import read_records

    return next(iter(read_records(file))).data


def _guess_kind(file: str) -> str:
    path = Path(file)
    if path.suffix.lower() == ".txt" or path.is_dir():
        return "perplexity"
    first = _first_record(file)
    if "stereotyped" in first:
        return "bias"
    if "choices" in first or "endings" in first:
        return "choice"
    if "text" in first and len(first) == 1:
        return "perplexity"
    return "generate"


def _run_base(run: str) -> str | None:
    """The base model a training run folder recorded, if any."""
    path = Path(run) / "config.yaml"
    if not path.is_file():
        return None
    from tunelab.config import load_config

    return load_config(path).model.name


def cmd_eval(args) -> int:
    from tunelab.config.flags import given
    from tunelab.eval import evaluate, load_eval_config

    base = given(args, "eval")  # flags given win over the YAML; others leave it be
    if args.run:
        base["run"] = args.run
    if args.tasks:
        base["tasks"] = [_task_spec(s.strip(), given(args, "task")) for s in args.tasks.split(",") if s.strip()]
    if args.model or args.adapter:
        first = (args.model or [None])[0] or _run_base((args.adapter or [""])[0].split("=")[-1])
        models = [{"name": "base" if len(args.model or []) <= 1 else Path(m).name, "model": m}
                  for m in (args.model or [first])]
        for a in args.adapter or []:
            name, _, run = a.rpartition("=")
            models.append({"name": name or Path(run).name, "model": first, "adapter": run})
        base["models"] = models
    if given(args, "judge"):
        base["judge"] = given(args, "judge")
    cfg = load_eval_config(args.config, args.set, base)
    report = evaluate(cfg)
    print(json.dumps({"folder": report["folder"], "models": report["models"]}))
    return 0


def cmd_plan(args) -> int:
    from tunelab.compare.planner import PlanConfig, plan
    from tunelab.config import load_config
    from tunelab.config.flags import given

    cfg = load_config(args.config, args.set)  # the run config checked before anything loads
    options = PlanConfig.load(given(args, "plan"), "flags")
    p = plan(cfg, device=options.device, probe=options.probe)
    print(json.dumps(p.to_dict(), indent=2) if args.json else p.table())
    return 0


def cmd_compare(args) -> int:
    from tunelab.compare.routes import LADDERS, ROUTES, TRAINING
    from tunelab.compare.runner import compare
    from tunelab.compare.task import load_task
    from tunelab.config.flags import given

    if args.list_routes:
        for name, route in ROUTES.items():
            print(f"{name:<18} {route.family:<10} {'/'.join(route.kinds):<16} {route.help}")
        print(f"{'METHOD':<18} {'training':<10} {'labels/generate':<16} any trainable method of the method table "
              f"({', '.join(TRAINING)}, ...)")
        print("\ndefault ladders: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in LADDERS.items()))
        return 0
    if not args.task:
        raise ConfigError("tunelab compare needs a task file: tunelab compare TASK.yaml (examples/compare/ has two; "
                          "tunelab config show --kind compare lists every key)")
    task = load_task(args.task, args.set, given(args, "compare"))  # checked before anything loads
    report = compare(task, resume=args.resume, ray=args.ray, search=args.search)
    summary = {"folder": str(report.folder), "best": report.recommendation.get("best"),
               "recommended": report.recommendation.get("recommended"),
               "routes": {r["name"]: r.get("value", r["status"]) for r in report.routes}}
    print(json.dumps(report.data if args.json else summary, indent=2, default=str))
    return 0


def cmd_export(args) -> int:
    from tunelab.compress.export import ExportConfig, export
    from tunelab.config.flags import given

    exported = export(args.source, ExportConfig.load(given(args, "export"), "flags"))
    if exported.note:
        print(exported.note, file=sys.stderr)
    if exported.verify:
        from tunelab.compress.verify import Verification

        figures = {k: v for k, v in exported.verify.items() if k != "passed"}
        print(Verification(**figures).summary(), file=sys.stderr)
    print(json.dumps({"output": str(exported.path), "format": exported.format, "merged": exported.merged,
                      "files": exported.files, "verify": exported.verify}, indent=2))
    return 0


def cmd_quantize(args) -> int:
    from tunelab.compress.quantize import QuantizeConfig, quantize_source
    from tunelab.compress.quantizers import QUANTIZERS
    from tunelab.config.flags import given

    if args.list:
        for name, q in QUANTIZERS.items():
            print(f"{name:<29} {q.bits:>2} bits  {'calibrated' if q.calibrated else '':<10} "
                  f"{'GPU' if q.needs_gpu else 'CPU':<4} {q.help}")
        return 0
    if not args.source:
        raise ConfigError("tunelab quantize needs a run or a model: tunelab quantize runs/NAME --method bnb-nf4 "
                          "(--list shows the methods)")
    print(json.dumps(quantize_source(args.source, QuantizeConfig.load(given(args, "quantize"), "flags")), indent=2))
    return 0


def cmd_merge(args) -> int:
    from tunelab.compress.merge import merge
    from tunelab.config.flags import given

    print(json.dumps({"output": str(merge(args.config, **given(args, "merge")))}))
    return 0


def cmd_config(args) -> int:
    from tunelab.config import schemas

    if args.config_command == "schema":
        text = json.dumps(schemas.json_schema(args.kind), indent=2)
        if args.output:
            Path(args.output).write_text(text + "\n", encoding="utf-8")
            print(f"wrote the {args.kind} JSON Schema to {args.output}")
        else:
            print(text)
    elif args.config_command == "show":
        print(schemas.show(args.kind, args.config, args.set), end="")
    else:
        text = schemas.starter(args.objective, args.method)
        if args.output:
            if Path(args.output).exists() and not args.force:
                raise ConfigError(f"{args.output}: already exists; choose another name or add --force to replace it")
            Path(args.output).write_text(text, encoding="utf-8")
            print(f"wrote {args.output}; train with: tunelab train {args.output}")
        else:
            print(text, end="")
    return 0


def cmd_env(args) -> int:
    from tunelab.hardware import choices, detect

    hw, made = detect(), choices()
    if args.json:
        print(json.dumps({"hardware": hw.as_dict(), "choices": [vars(c) for c in made]}, indent=2))
        return 0
    print(hw.line())
    print(f"instruction sets: {', '.join(hw.isa) or 'none that tunelab uses'}")
    width = max(len(c.what) for c in made)
    for c in made:
        print(f"  {c.what:<{width}}  {c.value}  ({c.why})")
    return 0


def cmd_ui(args) -> int:
    import importlib.util

    from tunelab.config.flags import given
    from tunelab.ui.settings import UIConfig

    cfg = UIConfig.load(given(args, "ui"), "flags")
    if importlib.util.find_spec("gradio") is None:
        raise ConfigError("tunelab ui needs Gradio, an optional extra: pip install 'tunelab[ui]'")
    from tunelab.ui.app import launch

    launch(cfg)
    return 0


def cmd_demo(args) -> int:
    from tunelab.demo import run_demo

    run_demo(output_dir=args.output_dir, n_train=args.train_examples, epochs=args.epochs)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Every command; their option flags come from the config schema (tunelab.config.flags)."""
    from tunelab.compare.planner import PlanConfig
    from tunelab.compare.task import CompareTask
    from tunelab.compress.export import ExportConfig
    from tunelab.compress.merge import MergeOptions
    from tunelab.compress.quantize import QuantizeConfig
    from tunelab.config import RunConfig
    from tunelab.config.flags import add_command_flags, add_flags
    from tunelab.eval.config import KINDS as TASK_KINDS
    from tunelab.eval.config import EvalConfig, TaskConfig
    from tunelab.eval.judge import JudgeConfig
    from tunelab.ui.settings import UIConfig

    parser = argparse.ArgumentParser(prog="tunelab", description="Turn a general language model into a specialist.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logs")
    sub = parser.add_subparsers(dest="command", required=True)
    set_help = "override any config key, e.g. train.lr=1e-4 (applied last)"

    p = sub.add_parser("train", help="train a model from a YAML config")
    p.add_argument("config", nargs="?", help="YAML config file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help=set_help)
    add_flags(p, RunConfig, "run", dotted=True, skip=("method", "objective"), title="run config")
    p.add_argument("--method", dest="opt:run.method", default=argparse.SUPPRESS, metavar="NAME",
                   help="which parameters change (lora, qlora, full, ...); its options with --set method.KEY=VALUE")
    p.add_argument("--objective", dest="opt:run.objective", default=argparse.SUPPRESS, metavar="NAME",
                   help="what training optimises (sft, dpo, grpo, ...); its options with --set objective.KEY=VALUE")
    p.set_defaults(func=cmd_train)

    from tunelab.data.cli import add_parser as add_data_parser
    from tunelab.data.cli import add_tokenizer_parser

    add_data_parser(sub)
    add_tokenizer_parser(sub)

    p = sub.add_parser("generate", help="batched generation over a JSONL file of prompts")
    add_command_flags(p, "generate")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="interactive chat in the terminal (/reset, /system, /exit)")
    add_command_flags(p, "chat", skip=("model.max_batch_size",))
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (chat, completions, embeddings, adapters)")
    add_command_flags(p, "serve")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("eval", help="evaluate models side by side: perplexity, multiple choice, generation "
                       "metrics, LLM-as-judge, bias probe, lm-eval tasks")
    p.add_argument("run", nargs="?", help="a training run folder: base vs tuned on its validation split")
    p.add_argument("--config", help="eval YAML (models, tasks, judge, harness); see tunelab config schema eval")
    p.add_argument("--model", action="append", help="base model (repeat to compare several bases)")
    p.add_argument("--adapter", action="append", help="a run folder evaluated on the first model, as NAME=RUN or "
                   "RUN (repeatable)")
    p.add_argument("--tasks", help="comma-separated FILE[:KIND[:METRIC+METRIC]], KIND one of "
                   f"{', '.join(TASK_KINDS)} (judge takes :pairwise or "
                   ":single)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override an eval config key (applied last)")
    add_flags(p, EvalConfig, "eval", title="evaluation")
    add_flags(p, JudgeConfig, "judge", only=("model", "base_url", "endpoint_model"), title="judge")
    add_flags(p, TaskConfig, "task", only=("limit", "decoding.max_new_tokens"), title="every --tasks task")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("plan", help="predict a run's peak memory, time, parameters and artifact before training")
    p.add_argument("config", nargs="?", help="YAML run config")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help=set_help)
    add_flags(p, PlanConfig, "plan")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("compare", help="one task through a ladder of routes (prompting, retrieval, probes, "
                       "every training method) within a budget; a report and a recommendation")
    p.add_argument("task", nargs="?", help="task YAML (train, test, metric, constraints, routes)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a task key (applied last)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted comparison; finished routes are "
                   "kept")
    p.add_argument("--ray", metavar="ADDRESS", help="run the routes as Ray tasks on a cluster (ADDRESS or auto; "
                   "pip install 'tunelab[ray]')")
    p.add_argument("--search", action="store_true", help="a few trials of each training route's settings "
                   "(Optuna; pip install 'tunelab[search]')")
    p.add_argument("--list-routes", action="store_true", help="print every route and the default ladders")
    p.add_argument("--json", action="store_true", help="print the whole report as JSON")
    add_flags(p, CompareTask, "compare", title="task")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("export", help="ship a run or a model: merged Hugging Face folder, GGUF (llama.cpp, LM "
                       "Studio), GGUF LoRA adapter or Ollama folder, checked against the run")
    p.add_argument("source", help="a run folder (runs/NAME), a model folder, .gguf or alias")
    add_flags(p, ExportConfig, "export", title="export")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("quantize", help="a smaller model: naive absmax / zero-point (int8, int4), bitsandbytes "
                       "int8 / NF4, torchao int8 / int4, calibrated 4-bit (AutoRound); saved, reloaded and measured")
    p.add_argument("source", nargs="?", help="a run folder (runs/NAME), a model folder, .gguf or alias")
    p.add_argument("--list", action="store_true", help="print every method: bits, calibration, CPU or GPU")
    add_flags(p, QuantizeConfig, "quantize", title="quantize")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("merge", help="merge models or adapters: mergekit's YAML (linear, slerp, ties, dare_ties, ...), "
                       "a mixture of experts, or LoRA runs combined by peft; run folders work as models")
    p.add_argument("config", help="MERGE.yaml: a mergekit config, a mergekit-moe config, or adapters: {name: run}")
    add_flags(p, MergeOptions, "merge", title="merge")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("config", help="the config schema: JSON Schema for editors, a resolved config, a starter")
    commands = p.add_subparsers(dest="config_command", required=True)
    from tunelab.config.schemas import KINDS as SCHEMA_KINDS

    q = commands.add_parser("schema", help="write the JSON Schema of a config kind (for editors' YAML checking)")
    q.add_argument("kind", nargs="?", default="run", choices=SCHEMA_KINDS)
    q.add_argument("--output", "-o", help="write it to this file instead of printing it")
    q = commands.add_parser("show", help="print a config fully resolved, defaults marked")
    q.add_argument("config", nargs="?", help="YAML config file (none: the defaults)")
    q.add_argument("--kind", default="run", choices=SCHEMA_KINDS)
    q.add_argument("--set", action="append", metavar="KEY=VALUE", help=set_help)
    q = commands.add_parser("new", help="write a commented starting config for an objective and a method")
    q.add_argument("--objective", default="sft")
    q.add_argument("--method", default="lora")
    q.add_argument("--output", "-o", help="write it to this file instead of printing it")
    q.add_argument("--force", action="store_true", help="replace the file if it exists")
    p.set_defaults(func=cmd_config)

    from tunelab.rag.cli import add_parser as add_rag_parser

    add_rag_parser(sub)

    p = sub.add_parser("env", help="this machine (CPU, instruction sets, cores, memory, GPUs) and every default "
                       "tunelab chooses from it, with why")
    p.add_argument("--json", action="store_true", help="print it as JSON")
    p.set_defaults(func=cmd_env)

    p = sub.add_parser("ui", help="the web UI: data, training, runs, evaluation, chat, RAG, compare and export in "
                       "a browser (Gradio; loopback only unless --host)")
    add_flags(p, UIConfig, "ui", title="web UI")
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser("demo", help="the main job: LoRA SFT on the built-in requests-to-JSON task, before/after")
    p.add_argument("--output-dir", default="runs")
    p.add_argument("--train-examples", type=int, default=400)
    p.add_argument("--epochs", type=float, default=1.0)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    from tunelab.data.cli import COMMANDS as DATA_COMMANDS

    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) > 1 and argv[0] == "data" and argv[1] not in (*DATA_COMMANDS, "-h", "--help"):
        argv.insert(1, "check")  # `tunelab data FILE` reads as it always did
    args = build_parser().parse_args(argv)
    if not args.verbose:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # per-tensor loading bars; tunelab shows its own progress
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
        for noisy in ("bitsandbytes", "torchao", "torch.utils._pytree"):  # optional-kernel notices on every import
            logging.getLogger(noisy).setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", category=FutureWarning)  # libraries' deprecation notes, not the user's
    try:
        return args.func(args)
    except TunelabError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
