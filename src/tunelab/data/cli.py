"""`tunelab data check | clean | dedup | decontaminate`: the command-line face of the data package.

`tunelab data FILE` (no subcommand) is `tunelab data check FILE`, as it always was.
"""

from __future__ import annotations

import json

from tunelab.config.flags import add_flags, given

COMMANDS = ("check", "clean", "dedup", "decontaminate", "synth")


def cmd_check(args) -> int:
    from tunelab.config import DataConfig, ModelConfig
    from tunelab.data import build_sft, describe
    from tunelab.models import load_tokenizer, resolve

    cfg = DataConfig.load({**given(args, "data"), "train": args.file, "val_split": 0.0}, "data")
    model = ModelConfig.load(given(args, "model"), "model")
    data = build_sft(cfg, load_tokenizer(resolve(model.name)))
    print(describe(data.stats))
    for line in data.bad[:10]:
        print(f"skipped: {line}")
    return 0


def cmd_clean(args) -> int:
    from tunelab.data.curate.clean import CleanConfig, clean_file

    cfg, scale = CleanConfig.load(given(args, "clean"), "flags"), _scale(args)
    if scale.ray:
        from tunelab.data.curate import on_ray

        summary = on_ray.clean(args.input, args.output, cfg, scale.ray, scale.workers, force=args.force)
    else:
        summary = clean_file(args.input, args.output, cfg, workers=scale.workers or 1, force=args.force)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_dedup(args) -> int:
    from tunelab.data.curate.dedup import DedupConfig, dedup_files

    cfg, scale = DedupConfig.load(given(args, "dedup"), "flags"), _scale(args)
    if scale.ray:
        from tunelab.data.curate import on_ray

        summary = on_ray.dedup(args.inputs, args.output, cfg, scale.ray, scale.workers, force=args.force)
    else:
        summary = dedup_files(args.inputs, args.output, cfg, force=args.force, workers=scale.workers or 1)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_decontaminate(args) -> int:
    from tunelab.data.curate.decontaminate import DecontaminateConfig, decontaminate_file

    cfg, scale = DecontaminateConfig.load(given(args, "decontaminate"), "flags"), _scale(args)
    if scale.ray:
        from tunelab.data.curate import on_ray

        summary = on_ray.decontaminate(args.train, args.against, args.output, cfg, scale.ray, scale.workers,
                                       force=args.force)
    else:
        summary = decontaminate_file(args.train, args.against, args.output, cfg, force=args.force,
                                     workers=scale.workers or 1)
    print(json.dumps(summary, indent=2))
    return 0


def _scale(args):
    from tunelab.data.curate.parallel import ScaleConfig

    return ScaleConfig.load(given(args, "scale"), "flags")


def cmd_synth(args) -> int:
    from tunelab.data.synth import answers, evol, self_instruct
    from tunelab.data.synth.output import Output
    from tunelab.data.synth.teacher import TeacherConfig, make_teacher

    teacher_cfg = TeacherConfig.load(given(args, "teacher"), "flags")
    method = args.synth_command
    options = {"self-instruct": self_instruct.SelfInstructConfig, "evol": evol.EvolConfig,
               "answers": answers.AnswersConfig, "pairs": answers.PairsConfig}[method]
    cfg = options.load(given(args, "synth"), "flags")  # checked before the teacher loads
    records = [] if method == "self-instruct" else [data for data, _ in _records(args.input)]
    out = Output(args.output, resume=args.resume)
    teacher = make_teacher(teacher_cfg)
    try:
        if method == "self-instruct":
            summary = self_instruct.self_instruct(teacher, out, cfg, teacher_cfg.name)
        elif method == "evol":
            summary = evol.evolve(teacher, records, out, cfg, teacher_cfg.name)
        elif method == "answers":
            summary = answers.answer(teacher, records, out, teacher_cfg.name, cfg)
        else:
            summary = answers.pairs(teacher, records, out, cfg, teacher_cfg.name)
    finally:
        out.close()
        teacher.close()
    print(json.dumps(summary, indent=2))
    return 0


def _records(path):
    from tunelab.data.curate.io import records

    return records(path)


def cmd_tokenizer_train(args) -> int:
    from tunelab.data.tokenizer import TokenizerConfig, train

    cfg = TokenizerConfig.load(given(args, "tokenizer"), "flags")
    print(json.dumps(train(args.corpus, args.output, cfg, force=args.force), indent=2))
    return 0


def cmd_tokenizer_extend(args) -> int:
    from tunelab.data.tokenizer import extend

    print(json.dumps(extend(args.model, args.add_tokens, args.output, corpus=args.corpus, force=args.force), indent=2))
    return 0


def add_tokenizer_parser(sub) -> None:
    """Register `tunelab tokenizer train | extend`."""
    from tunelab.data.tokenizer import TokenizerConfig

    tok = sub.add_parser("tokenizer", help="a byte-level BPE tokenizer trained on your corpus, or a model's extended "
                         "with domain tokens; tokens per word reported against the model's own")
    commands = tok.add_subparsers(dest="tokenizer_command", required=True)
    p = commands.add_parser("train", help="train a byte-level BPE tokenizer (ChatML special tokens and template)")
    p.add_argument("corpus", nargs="+", help=".txt files (a paragraph per text), record files, or folders")
    p.add_argument("--output", "-o", required=True, help="the tokenizer folder written (transformers' form)")
    p.add_argument("--force", action="store_true", help="replace the output if it exists")
    add_flags(p, TokenizerConfig, "tokenizer", title="tokenizer")
    p.set_defaults(func=cmd_tokenizer_train)
    p = commands.add_parser("extend", help="add domain tokens to a model; new embeddings start as the mean of their "
                            "old sub-token embeddings")
    p.add_argument("model", help="alias, model folder or run's exported model")
    p.add_argument("--add-tokens", required=True, help="a file with one new token per line")
    p.add_argument("--output", "-o", required=True, help="the model folder written (model and tokenizer)")
    p.add_argument("--corpus", nargs="*", help="text to report tokens per word on, before and after")
    p.add_argument("--force", action="store_true", help="replace the output if it exists")
    p.set_defaults(func=cmd_tokenizer_extend)


def add_synth_parser(commands) -> None:
    """`tunelab data synth self-instruct | evol | answers | pairs`."""
    from tunelab.data.synth.answers import AnswersConfig, PairsConfig
    from tunelab.data.synth.evol import EvolConfig
    from tunelab.data.synth.self_instruct import SelfInstructConfig
    from tunelab.data.synth.teacher import TeacherConfig

    synth = commands.add_parser("synth", help="data written by a teacher model (local or an OpenAI-compatible "
                                "endpoint): self-instruct, evol, answers, pairs; resumable")
    methods = synth.add_subparsers(dest="synth_command", required=True)
    helps = {"self-instruct": "new instruction records from seed tasks (Self-Instruct)",
             "evol": "instructions rewritten deeper or broader, then answered (Evol-Instruct)",
             "answers": "the teacher's answers to your instructions (distillation data)",
             "pairs": "two sampled answers per prompt ranked by a judge or a reward model (dpo / rm data)"}
    options = {"self-instruct": SelfInstructConfig, "evol": EvolConfig, "answers": AnswersConfig,
               "pairs": PairsConfig}
    for name, help_text in helps.items():
        p = methods.add_parser(name, help=help_text)
        if name != "self-instruct":
            p.add_argument("input", help="records with instruction (and input), prompt, question or messages")
        p.add_argument("--output", "-o", required=True, help="JSON Lines written as records are made")
        p.add_argument("--resume", action="store_true", help="continue an interrupted run from its output")
        add_flags(p, TeacherConfig, "teacher", title="teacher")
        add_flags(p, options[name], "synth", title=name)
        p.set_defaults(func=cmd_synth)


def add_parser(sub) -> None:
    """Register `tunelab data ...` on the main command table; option flags come from the config schema."""
    from tunelab.config import DataConfig, ModelConfig
    from tunelab.data.curate.clean import CleanConfig
    from tunelab.data.curate.decontaminate import DecontaminateConfig
    from tunelab.data.curate.dedup import DedupConfig
    from tunelab.data.curate.parallel import ScaleConfig

    data = sub.add_parser("data", help="check and improve data: check, clean, dedup, decontaminate, synth")
    commands = data.add_subparsers(dest="data_command", required=True)

    p = commands.add_parser("check", help="a data file as training reads it: format, token lengths, truncation, "
                            "bad records (also: tunelab data FILE)")
    p.add_argument("file")
    add_flags(p, ModelConfig, "model", only=("name",))
    add_flags(p, DataConfig, "data", only=("format", "max_length", "skip_bad", "train_on", "system_prompt"))
    p.set_defaults(func=cmd_check)

    force = "replace the output if it exists"
    p = commands.add_parser("clean", help="repair text, mask personal data, drop records failing quality rules "
                            "(Gopher, C4 presets; language); dropped ones go to OUT.dropped.jsonl with their rule")
    p.add_argument("input")
    p.add_argument("output")
    add_flags(p, ScaleConfig, "scale", title="scale")
    p.add_argument("--force", action="store_true", help=force)
    add_flags(p, CleanConfig, "clean", title="cleaning")
    p.set_defaults(func=cmd_clean)

    p = commands.add_parser("dedup", help="remove exact, near (MinHash LSH) and semantic duplicates across files; "
                            "clusters go to a side file")
    p.add_argument("inputs", nargs="+", help="one or more files, deduplicated together")
    p.add_argument("--output", "-o", required=True, help="the file written (one input) or a folder (several)")
    add_flags(p, ScaleConfig, "scale", title="scale")
    p.add_argument("--force", action="store_true", help=force)
    add_flags(p, DedupConfig, "dedup", title="duplicates")
    p.set_defaults(func=cmd_dedup)

    add_synth_parser(commands)

    p = commands.add_parser("decontaminate", help="remove training records sharing an n-gram (13 words) with "
                            "evaluation data; report which items were contaminated and by what")
    p.add_argument("train")
    p.add_argument("--against", nargs="+", required=True, help="evaluation files")
    p.add_argument("--output", "-o", required=True, help="the training file without the overlapping records")
    add_flags(p, ScaleConfig, "scale", title="scale")
    p.add_argument("--force", action="store_true", help=force)
    add_flags(p, DecontaminateConfig, "decontaminate", title="overlap")
    p.set_defaults(func=cmd_decontaminate)
