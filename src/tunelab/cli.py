"""The `tunelab` command line: one table of subcommands, each a thin call into the library."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path

from tunelab.errors import ConfigError, TunelabError


def _decoding(args):
    from tunelab.infer import DecodingConfig

    return DecodingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                          presence_penalty=args.presence_penalty, frequency_penalty=args.frequency_penalty,
                          num_beams=args.num_beams, stop=args.stop or [], seed=args.seed,
                          logprobs=args.logprobs).check()


def _engine(args, max_batch_size: int = 16):
    """The inference engine the model flags describe."""
    from tunelab.infer.load import load_engine

    return load_engine(args.model, adapters=args.adapter, backend=args.backend, dtype=args.dtype,
                       quantize=args.quantize, draft=args.draft, max_batch_size=max_batch_size, use=args.use)


def cmd_train(args) -> int:
    from tunelab.config import load_config
    from tunelab.objectives import run
    from tunelab.training.records import is_main_process

    overrides = list(args.set or [])
    if args.resume:
        overrides.append("train.resume=true")
    if args.skip_bad:
        overrides.append("data.skip_bad=true")
    cfg = load_config(args.config, overrides)
    summary = run(cfg)
    if is_main_process():  # under accelerate launch every rank returns here
        print(json.dumps({k: v for k, v in summary.items() if k != "data"}, indent=2))
    return 0


def cmd_data(args) -> int:
    from tunelab.config import DataConfig
    from tunelab.data import build_sft, describe
    from tunelab.models import load_tokenizer, resolve

    cfg = DataConfig(train=args.file, format=args.format, max_length=args.max_length, skip_bad=args.skip_bad,
                     val_split=0.0)
    data = build_sft(cfg, load_tokenizer(resolve(args.model)))
    print(describe(data.stats))
    for line in data.bad[:10]:
        print(f"skipped: {line}")
    return 0


def cmd_generate(args) -> int:
    from dataclasses import replace

    from tunelab.data.readers import read_records
    from tunelab.errors import DataError
    from tunelab.infer.engine import Request, generate

    records = list(read_records(args.input))
    prompting = _prompting(args)
    if prompting is not None:
        from tunelab.prompting import answer, build_prompts

        prompts = build_prompts(prompting, records)  # examples chosen and records checked before the model loads
    else:
        prompts = []
        for r in records:
            prompt = r.data.get(args.field, r.data.get("messages"))
            if not isinstance(prompt, (str, list)):
                raise DataError(f"{r.where}: needs a '{args.field}' string (or a 'messages' list)")
            prompts.append(prompt)
    cfg, constraint = _decoding(args), _constraint(args)
    engine = _engine(args, max_batch_size=args.batch_size)
    try:
        if prompting is not None:
            extra = [{"output": a.text, "finish_reason": a.finish_reason,
                      **({"answer": a.answer} if prompting.reads_answers else {}),
                      **({"votes": a.votes} if a.votes is not None else {})}
                     for a in answer(engine, prompts, prompting, cfg, system=args.system, constraint=constraint,
                                     batch_size=args.batch_size)]
        else:
            requests = [Request(p, replace(cfg, seed=None if cfg.seed is None else cfg.seed + i), chat=not args.raw,
                                system=args.system, constraint=constraint) for i, p in enumerate(prompts)]
            extra = [{"output": a.text.strip(), "finish_reason": a.finish_reason,
                      **({"logprobs": [lp.logprob for lp in a.logprobs]} if a.logprobs is not None else {})}
                     for a in generate(engine, requests)]
    finally:
        engine.close()
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for r, row in zip(records, extra):
            f.write(json.dumps({**r.data, **row}, ensure_ascii=False) + "\n")
    print(f"wrote {len(extra)} generations to {out}")
    return 0


def _prompting(args):
    """The prompting route the generate flags ask for, or None when they ask for none of it."""
    from tunelab.prompting import PromptingConfig

    if args.k is not None and not args.fewshot:
        raise ConfigError("--k: the number of few-shot examples needs --fewshot FILE to take them from")
    if not (args.template or args.fewshot or args.cot or args.self_consistency != 1):
        return None
    if args.logprobs:
        raise ConfigError("--logprobs: log-probabilities are not recorded on the prompting route (--template, "
                          "--fewshot, --cot, --self-consistency); drop --logprobs or those flags")
    def split(text: str | None) -> list[str]:
        return [x.strip() for x in (text or "").split(",") if x.strip()]

    return PromptingConfig(template=args.template, labels=split(args.labels), keys=split(args.keys),
                           input_field=args.field, output_field=args.answer_field, fewshot_file=args.fewshot,
                           k=(4 if args.k is None else args.k) if args.fewshot else 0, select=args.select,
                           embedder=args.embedder, chat=not args.raw, cot=args.cot, answer_kind=args.answer_kind,
                           samples=args.self_consistency, temperature=args.sc_temperature,
                           seed=args.seed or 0).check()


def _constraint(args):
    from tunelab.infer.structured import Constraint

    if args.json_schema:
        path = Path(args.json_schema)
        try:
            return Constraint.json_schema(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"--json-schema {path}: cannot read a JSON schema from it ({e})") from None
    if args.regex:
        return Constraint.regex(args.regex)
    if args.choice:
        return Constraint.choice(args.choice)
    return None


def cmd_chat(args) -> int:
    from tunelab.infer.chat import chat_loop

    engine = _engine(args, max_batch_size=1)
    try:
        chat_loop(engine, _decoding(args), system=args.system)
    finally:
        engine.close()
    return 0


def cmd_serve(args) -> int:
    from tunelab.serve import ServerConfig, load_embedder, serve

    names = [a.split("=", 1)[0] for a in args.adapter or [] if "=" in a]
    if args.adapter and len(names) != len(args.adapter):
        raise ConfigError("--adapter: the server picks adapters by name; give each as NAME=RUN_FOLDER")
    engine = _engine(args, max_batch_size=args.max_batch_size)
    cfg = ServerConfig(served_name=args.served_name or args.model or "smollm2-135m-instruct",
                       api_key=args.api_key or os.environ.get("TUNELAB_API_KEY") or None,
                       max_prompt_tokens=args.max_prompt_tokens, max_tokens=args.max_tokens,
                       max_body_bytes=args.max_body_bytes, max_concurrent=args.max_concurrent, timeout_s=args.timeout)
    embedder = load_embedder(args.embedding_model)
    print(f"serving {cfg.served_name}" + (f" with adapters {', '.join(names)}" if names else "")
          + f" on http://{args.host}:{args.port}/v1" + (" (API key required)" if cfg.api_key else ""), flush=True)
    serve(engine, cfg, host=args.host, port=args.port, embedder=embedder, embedding_name=args.embedding_model)
    return 0


def _task_spec(spec: str, args) -> dict:
    """FILE[:KIND[:METRIC+METRIC]] -> a task mapping; the kind is guessed from the file when omitted."""
    from tunelab.eval.config import KINDS

    drive = spec[:2] if len(spec) > 2 and spec[1] == ":" and spec[2] in "\\/" else ""  # a Windows drive, C:\data\qa.jsonl
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
    if args.limit:
        task["limit"] = args.limit
    if args.max_new_tokens:
        task["max_new_tokens"] = args.max_new_tokens
    return task


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
    from tunelab.eval import evaluate, load_eval_config

    base: dict = {"overwrite": True} if args.overwrite else {}  # flags given win over the YAML; others leave it be
    for key in ("output_dir", "batch_size", "dtype", "harness_limit", "harness_include", "harness_num_fewshot"):
        if getattr(args, key) is not None:
            base[key] = getattr(args, key)
    if args.name:
        base["run_name"] = args.name
    if args.run:
        base["run"] = args.run
    if args.tasks:
        base["tasks"] = [_task_spec(s.strip(), args) for s in args.tasks.split(",") if s.strip()]
    if args.harness:
        base["harness"] = [t.strip() for t in args.harness.split(",") if t.strip()]
    if args.model or args.adapter:
        first = (args.model or [None])[0] or _run_base((args.adapter or [""])[0].split("=")[-1])
        models = [{"name": "base" if len(args.model or []) <= 1 else Path(m).name, "model": m}
                  for m in (args.model or [first])]
        for a in args.adapter or []:
            name, _, run = a.rpartition("=")
            models.append({"name": name or Path(run).name, "model": first, "adapter": run})
        base["models"] = models
    if args.judge or args.judge_url:
        judge = {"model": args.judge, "base_url": args.judge_url, "endpoint_model": args.judge_model}
        base["judge"] = {k: v for k, v in judge.items() if v is not None}
    cfg = load_eval_config(args.config, args.set, base)
    report = evaluate(cfg)
    print(json.dumps({"folder": report["folder"], "models": report["models"]}))
    return 0


def cmd_demo(args) -> int:
    from tunelab.demo import run_demo

    run_demo(output_dir=args.output_dir, n_train=args.train_examples, epochs=args.epochs)
    return 0


def _decoding_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--presence-penalty", type=float, default=0.0)
    p.add_argument("--frequency-penalty", type=float, default=0.0)
    p.add_argument("--num-beams", type=int, default=1, help="beam search when above 1 (greedy)")
    p.add_argument("--stop", action="append", help="stop string (repeatable)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--logprobs", action="store_true", help="record each chosen token's log-probability")
    p.add_argument("--system", default=None, help="system prompt")


def _prompting_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("prompting", "templates, few-shot examples, chain-of-thought, self-consistency")
    g.add_argument("--template", default=None, metavar="NAME|FILE", help="qa, classify, extract, math, a .yaml "
                   "template file, or a format string over the record's fields such as '{question}\\nAnswer:'")
    g.add_argument("--labels", default=None, help="comma-separated labels (--template classify; --answer-kind choice)")
    g.add_argument("--keys", default=None, help="comma-separated fields to extract (--template extract)")
    g.add_argument("--fewshot", default=None, metavar="FILE", help="solved examples to show before each question")
    g.add_argument("--k", type=int, default=None, help="few-shot examples per question (default 4)")
    g.add_argument("--select", default="random", choices=["random", "similar"],
                   help="few-shot examples at random (seeded) or the most similar to the question")
    g.add_argument("--answer-field", default="completion",
                   help="the field holding a few-shot example's answer (default completion)")
    g.add_argument("--embedder", default="all-minilm-l6-v2", help="sentence-transformers model for --select similar")
    g.add_argument("--cot", action="store_true", help="ask for step-by-step reasoning; rows gain the final 'answer'")
    g.add_argument("--answer-kind", default=None, choices=["text", "number", "choice"],
                   help="how the final answer is read (default: the template's, else text)")
    g.add_argument("--self-consistency", type=int, default=1, metavar="N",
                   help="sample N answers per prompt and keep the majority; rows gain 'answer' and 'votes'")
    g.add_argument("--sc-temperature", type=float, default=0.7, help="sampling temperature for --self-consistency")


def _model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="alias, folder, .gguf or Hub id (default smollm2-135m-instruct)")
    p.add_argument("--adapter", action="append", help="a run folder (runs/NAME) whose adapter or model to use; "
                   "repeat as NAME=RUN to load several adapters on one base")
    p.add_argument("--use", default=None, help="with several named adapters: the one to generate with")
    p.add_argument("--backend", default="transformers", help="transformers | llamacpp (GGUF) | vllm (GPU)")
    p.add_argument("--dtype", default="auto", help="auto (bfloat16 where native) | bf16 | fp16 | fp32")
    p.add_argument("--quantize", default="auto", help="auto (int8 weights for one stream on a CPU with native "
                   "bfloat16, as in chat: about 1.7x faster decoding, +0.1%% perplexity; none for batches) | int8 | "
                   "none (exact bfloat16/--dtype weights)")
    p.add_argument("--draft", default=None, help="speculative decoding for greedy requests: ngram, layers:N or a "
                   "draft model with the same tokenizer")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tunelab", description="Turn a general language model into a specialist.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logs")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model from a YAML config")
    p.add_argument("config", nargs="?", help="YAML config file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. train.lr=1e-4")
    p.add_argument("--resume", action="store_true", help="continue from the run's latest complete checkpoint")
    p.add_argument("--skip-bad", action="store_true", help="skip and count bad records instead of stopping")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("data", help="check a data file: format, token lengths, truncation, bad records")
    p.add_argument("file")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--format", default="auto")
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--skip-bad", action="store_true")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("generate", help="batched generation over a JSONL file of prompts")
    _model_flags(p)
    p.add_argument("--input", required=True, help="JSONL with a 'prompt' field (or 'messages')")
    p.add_argument("--output", required=True)
    p.add_argument("--field", default="prompt")
    p.add_argument("--batch-size", type=int, default=16, help="answers decoded together")
    p.add_argument("--raw", action="store_true", help="continue the prompt text as is (no chat template)")
    p.add_argument("--json-schema", default=None, help="a JSON schema file every answer must match")
    p.add_argument("--regex", default=None, help="a regular expression every answer must match")
    p.add_argument("--choice", action="append", help="an allowed answer (repeatable)")
    _decoding_flags(p)
    _prompting_flags(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="interactive chat in the terminal")
    _model_flags(p)
    _decoding_flags(p)
    p.set_defaults(func=cmd_chat, max_new_tokens=512)

    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (chat, completions, embeddings, adapters)")
    _model_flags(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-name", default=None, help="the base model's name in requests (default the --model value)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (or set TUNELAB_API_KEY)")
    p.add_argument("--embedding-model", default="all-minilm-l6-v2", help="sentence-transformers model for "
                   "/v1/embeddings, or none")
    p.add_argument("--max-batch-size", type=int, default=16, help="answers decoded together")
    p.add_argument("--max-prompt-tokens", type=int, default=4096)
    p.add_argument("--max-tokens", type=int, default=1024, help="the most new tokens a request may ask for")
    p.add_argument("--max-body-bytes", type=int, default=1_000_000)
    p.add_argument("--max-concurrent", type=int, default=64, help="requests answered at once; more get 429")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds before a request is cancelled (408)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("eval", help="evaluate models side by side: perplexity, multiple choice, generation "
                       "metrics, LLM-as-judge, bias probe, lm-eval tasks")
    p.add_argument("run", nargs="?", help="a training run folder: base vs tuned on its validation split")
    p.add_argument("--config", help="eval YAML (models, tasks, judge, harness)")
    p.add_argument("--model", action="append", help="base model (repeat to compare several bases)")
    p.add_argument("--adapter", action="append", help="a run folder evaluated on the first model, as NAME=RUN or "
                   "RUN (repeatable)")
    p.add_argument("--tasks", help="comma-separated FILE[:KIND[:METRIC+METRIC]], KIND one of perplexity, choice, "
                   "generate, judge, bias (judge takes :pairwise or :single)")
    p.add_argument("--harness", help="comma-separated lm-evaluation-harness task names")
    p.add_argument("--harness-limit", type=int, default=None)
    p.add_argument("--harness-include", default=None, help="folder of your own lm-eval task YAMLs")
    p.add_argument("--harness-num-fewshot", type=int, default=None)
    p.add_argument("--judge", default=None, help="judge model (alias, folder, .gguf)")
    p.add_argument("--judge-url", default=None, help="OpenAI-compatible base URL of a judge (key from OPENAI_API_KEY)")
    p.add_argument("--judge-model", default=None, help="the model name to ask the judge endpoint for")
    p.add_argument("--limit", type=int, default=None, help="only the first N records of each --tasks file")
    p.add_argument("--max-new-tokens", type=int, default=None, help="generation length for --tasks generate/judge")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--dtype", default=None, help="auto | bf16 | fp32")
    p.add_argument("--output-dir", default=None, help="where the report folder goes (default runs)")
    p.add_argument("--name", default=None, help="the report folder's name (default eval-<timestamp>)")
    p.add_argument("--overwrite", action="store_true", help="replace a report of the same name")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override an eval config key")
    p.set_defaults(func=cmd_eval)

    from tunelab.rag.cli import add_parser as add_rag_parser

    add_rag_parser(sub)

    p = sub.add_parser("demo", help="the main job: LoRA SFT on the built-in requests-to-JSON task, before/after")
    p.add_argument("--output-dir", default="runs")
    p.add_argument("--train-examples", type=int, default=400)
    p.add_argument("--epochs", type=float, default=1.0)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.verbose:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # per-tensor loading bars; tunelab shows its own progress
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # optional-kernel notices on every import
        warnings.filterwarnings("ignore", category=FutureWarning)  # libraries' deprecation notes, not the user's
    try:
        return args.func(args)
    except TunelabError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
