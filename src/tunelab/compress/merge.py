"""`tunelab merge MERGE.yaml`: one model, or one adapter, made from several.

Three kinds of YAML, told apart by their keys (`merge_kind`):

- mergekit's own merge config (`merge_method` with `models`, `slices` or `modules`), run by
  mergekit itself: linear, slerp, task_arithmetic, ties, dare_ties and every other method it registers;
- mergekit-moe's config (`base_model`, `gate_mode`, `experts`): fine-tunes of one base become the
  experts of a mixture-of-experts model (a Llama or Mistral base gives a Mixtral model);
- tunelab's adapter merge (`adapters`, `weights`, `combination_type`, `density`): LoRA runs of one
  base combined into one LoRA adapter by peft's `add_weighted_adapter`, written as a run folder.

Wherever a model goes, a tunelab run folder (runs/NAME) or an alias may stand as well as a model
folder or Hub id: a run is first written as a plain merged Hugging Face folder
(`compress.hf.export_hf`), an alias is resolved to its folder. Everything is checked before
anything heavy loads, and the output is built beside its place and renamed there only when complete.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import model_validator

from tunelab.config.files import read_yaml, staged_output
from tunelab.config.options import Options, did_you_mean, fail, opt
from tunelab.errors import ConfigError, ModelError

__all__ = ["AdapterMerge", "MergeOptions", "merge", "merge_kind"]

KINDS = {"merge_method": "mergekit", "experts": "moe", "adapters": "adapters"}  # the key that marks each kind
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # our names -> mergekit's
GATE_MODES = ("hidden", "hidden_avg", "hidden_last", "cheap_embed", "random", "uniform_random")
COMBINATIONS = Literal["cat", "linear", "svd", "ties", "ties_svd", "dare_ties", "dare_linear", "dare_ties_svd",
                       "dare_linear_svd", "magnitude_prune", "magnitude_prune_svd"]
SAME_RANK = ("linear", "ties", "dare_ties", "dare_linear", "magnitude_prune")  # peft combines A and B factor-wise
NEED_DENSITY = ("ties", "ties_svd", "dare_ties", "dare_linear", "dare_ties_svd", "dare_linear_svd", "magnitude_prune",
                "magnitude_prune_svd")
SHAPE_KEYS = ("architectures", "model_type", "hidden_size", "intermediate_size", "vocab_size")
REFERENCE_KEYS = ("model", "base_model", "source_model", "tokenizer_source", "source")  # where mergekit takes a model
TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer.model",
                   "added_tokens.json", "merges.txt", "vocab.json", "chat_template.jinja", "generation_config.json")


class MergeOptions(Options):
    """The `tunelab merge` command's own options; what is merged, and how, is in the YAML."""

    output: str | None = opt(None, "the folder to write; default: merged/<the YAML file's name>", aka=("out",))
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = opt(
        "auto", "weights of the result; auto keeps the YAML's dtype (or the inputs')", aka=("torch_dtype", "out_dtype"))
    copy_tokenizer: bool = opt(True, "write the base model's tokenizer beside a merged model")
    seed: int = opt(42, "seed of the random parts (DARE pruning, random gates)", aka=("random_seed",))
    force: bool = opt(False, "replace an existing output (only once the new one is complete)", aka=("overwrite",))


class AdapterEntry(Options):
    """One LoRA run of an adapter merge, in the list form."""

    run: str = opt(help="the run folder (runs/NAME) holding a LoRA adapter/")
    weight: float | None = opt(None, "its weight in the combination")
    name: str | None = opt(None, "its name in messages; default the folder's name")


class AdapterMerge(Options):
    """tunelab's adapter merge: LoRA runs of one base combined into one LoRA adapter (peft add_weighted_adapter)."""

    adapters: dict[str, str] | list[str | AdapterEntry] = opt(
        help="the LoRA runs: {name: run folder}, a list of run folders, or a list of {run, weight}")
    weights: list[float] | None = opt(None, "one weight per adapter, in order; default equal weights summing to 1")
    combination_type: COMBINATIONS = opt(
        "cat", "how peft combines them: cat (exact, ranks add up), linear, svd, ties, dare_ties, dare_linear, "
        "magnitude_prune and their _svd forms", aka=("method",))
    density: float | None = opt(None, "share of each adapter's weights kept by ties / dare / magnitude_prune",
                                gt=0, le=1)
    majority_sign_method: Literal["total", "frequency"] = opt("total", "how ties / dare_ties elect each weight's sign")
    svd_rank: int | None = opt(None, "rank of the result of an _svd combination; default the largest input rank", ge=1)
    base: str | None = opt(None, "the base model to load the adapters on; default the first run's")

    @model_validator(mode="after")
    def _consistent(self) -> AdapterMerge:
        n = len(self.adapters)
        if n == 0:
            fail("adapters", "none given; name two or more LoRA runs")
        own = [e.weight for e in self.adapters if isinstance(e, AdapterEntry) and e.weight is not None] \
            if isinstance(self.adapters, list) else []
        if own and self.weights is not None:
            fail("weights", "given both per adapter and as a list; keep one")
        if own and len(own) != n:
            fail("adapters", "give every adapter a weight, or none")
        if self.weights is not None and len(self.weights) != n:
            fail("weights", f"{len(self.weights)} weights for {n} adapters; give one per adapter, in order")
        if self.combination_type in NEED_DENSITY and self.density is None:
            fail("density", f"combination_type {self.combination_type} keeps a share of each adapter's weights: "
                            "set density between 0 and 1 (0.5 is common)")
        return self

    def entries(self) -> list[tuple[str, str, float]]:
        """(name, run folder, weight) of each adapter, in order."""
        if isinstance(self.adapters, dict):
            items = [(name, run, None) for name, run in self.adapters.items()]
        else:
            items = [(e, e, None) if isinstance(e, str) else (e.name or e.run, e.run, e.weight) for e in self.adapters]
            items = [(Path(name).name if name == run else name, run, w) for name, run, w in items]
        weights = self.weights or [w for _, _, w in items]
        if any(w is None for w in weights):
            weights = [1 / len(items)] * len(items)  # the average of the adapters
        return [(name, run, float(w)) for (name, run, _), w in zip(items, weights)]


def merge_kind(config: dict | str | Path, where: str = "config") -> str:
    """Which kind of merge YAML `config` (a mapping, or a YAML file) is: "mergekit", "moe" or "adapters".

    Raises ConfigError naming `where` (or the file) when it is none of them, or looks like more than one.
    """
    if not isinstance(config, dict):
        where, config = str(config), read_yaml(config, sections="merge_method, experts or adapters")
    found = [kind for key, kind in KINDS.items() if key in config]
    if len(found) == 1:
        return found[0]
    if found:
        raise ConfigError(f"{where}: has {' and '.join(k for k in KINDS if k in config)}; a merge YAML is one kind: "
                          "merge_method (mergekit), experts (mixture of experts) or adapters (LoRA runs)")
    raise ConfigError(
        f"{where}: not a merge config (keys: {', '.join(map(str, config)) or 'none'}). Expected mergekit's "
        "(merge_method: linear and models: [{model: A, parameters: {weight: 0.5}}, ...]), mergekit-moe's "
        "(base_model, gate_mode, experts: [{source_model: A, positive_prompts: [...]}, ...]) or an adapter merge "
        "(adapters: {a: runs/A, b: runs/B}, combination_type: cat)")


def merge(config_path: str | Path, output: str | Path | None = None, **options: Any) -> Path:
    """Merge what `config_path` describes and write the result; returns the output folder.

    Args:
        config_path: a merge YAML (see the module docstring for the three kinds).
        output: the folder to write; default `options["output"]`, else merged/<YAML name>.
        options: `MergeOptions` fields (dtype, copy_tokenizer, seed, force).
    Returns the output folder: a Hugging Face model folder, or for an adapter merge a run folder
    (config.yaml + adapter/) that loads like a run's.
    Raises:
        ConfigError: the YAML is none of the kinds, names an unknown method or key, or the output
            exists without `force`.
        ModelError: a model or run is missing, cannot be merged, or the models do not fit together
            (another architecture, vocabulary or size).
    """
    opts = MergeOptions(**{**options, **({"output": str(output)} if output is not None else {})})
    path = Path(config_path)
    raw = read_yaml(path, sections="merge_method, experts or adapters")
    out = Path(opts.output or Path("merged") / path.stem)
    if out.exists() and not opts.force:
        raise ConfigError(f"{out}: already exists; choose another --output or add --force to replace it")
    plan = {"mergekit": _plan_mergekit, "moe": _plan_moe, "adapters": _plan_adapters}[merge_kind(raw, str(path))]
    write = plan(raw, path, opts)  # every check runs here, before anything heavy
    with staged_output(out, overwrite=opts.force) as folder:
        # Runs written as plain folders for mergekit live beside the output (same disk), gone afterwards.
        with tempfile.TemporaryDirectory(prefix=f"{out.name}.inputs-", dir=out.parent) as scratch:
            folder.mkdir()
            write(folder, Path(scratch))
    return out


# ---------------------------------------------------------------- models named in a YAML


@dataclass
class _Model:
    """A model the YAML names: where (`key`), as written (`name`), and what it is."""

    key: str
    name: str
    source: Any  # compress.source.Source: a run (run_dir set) or a plain model folder (result)
    shape_folder: Path  # a folder whose config.json has its architecture and sizes
    tokenizer_folder: Path  # the folder of its tokenizer

    def shape(self) -> dict:
        return json.loads((self.shape_folder / "config.json").read_text())


def _open(name: str, key: str, where: Path) -> _Model:
    """The model `name` (run folder, model folder, alias, Hub id[@revision]) checked without loading weights."""
    from tunelab.compress.source import Source, open_source
    from tunelab.models import hub

    path = Path(name)
    if path.name in ("adapter", "model") and (path.parent / "config.yaml").is_file():
        path = path.parent  # runs/NAME/adapter given for runs/NAME
    try:
        if "@" in name and not path.exists():  # a Hub id at a revision (mergekit's model@revision)
            repo, revision = name.split("@", 1)
            source = Source(name, None, None, name, hub.resolve(repo, revision))
        else:
            source = open_source(path if path.exists() else name)
    except ModelError as e:
        raise ModelError(f"{where}: {key}: {e}") from None
    if source.run_dir is None:
        return _Model(key, name, source, source.result, source.result)
    if not source.mergeable:
        raise ModelError(f"{where}: {key}: {name} is a {source.method} run, which cannot be merged into its base "
                         f"({source.why_not_mergeable}); merge runs of LoRA, IA3, freeze or full fine-tuning")
    has_config = (source.result / "config.json").is_file()
    try:
        shape_folder = source.result if has_config else hub.resolve(source.base)
    except ModelError as e:
        raise ModelError(f"{where}: {key}: the base of {name}: {e}") from None
    own_tokenizer = (source.result / "tokenizer_config.json").is_file()  # runs save theirs; else the base's
    return _Model(key, name, source, shape_folder, source.result if own_tokenizer else shape_folder)


def _check_same_shape(models: list[_Model], where: Path, vocab: bool = True, hint: str = "") -> None:
    """ModelError naming both models when two differ in architecture, sizes or (with `vocab`) vocabulary."""
    keys = [k for k in SHAPE_KEYS if vocab or k != "vocab_size"]
    first, first_shape, first_vocabulary = models[0], models[0].shape(), _vocabulary(models[0].tokenizer_folder)
    for other in models[1:]:
        shape = other.shape()
        for k in keys:
            if k in first_shape and k in shape and first_shape[k] != shape[k]:
                raise ModelError(
                    f"{where}: {first.key} ({first.name}) and {other.key} ({other.name}) differ in {k}: "
                    f"{first_shape[k]} vs {shape[k]}; merging needs models of one architecture, size and vocabulary "
                    f"(fine-tunes of one base){hint}")
        vocabulary = _vocabulary(other.tokenizer_folder) if vocab and first_vocabulary is not None else None
        if vocabulary is not None and vocabulary != first_vocabulary:
            raise ModelError(f"{where}: {first.key} ({first.name}) and {other.key} ({other.name}) have tokenizers "
                             f"with other tokens for the same ids; merge fine-tunes of one base{hint}")


def _vocabulary(folder: Path) -> Any:
    """The token -> id table of a folder's tokenizer.json (None when it has none: nothing to compare)."""
    file = folder / "tokenizer.json"
    if not file.is_file():
        return None
    data = json.loads(file.read_text(encoding="utf-8"))
    return (data.get("model") or {}).get("vocab"), sorted((t["id"], t["content"]) for t in data.get("added_tokens", []))


def _local(model: _Model, scratch: Path, done: dict[Path, str]) -> str:
    """A local plain Hugging Face folder for `model`: a run is written merged into its base (once)."""
    if model.source.run_dir is None:
        return str(model.source.result.resolve())
    run = model.source.run_dir.resolve()
    if run not in done:
        from tunelab.compress.hf import export_hf

        folder = scratch / f"{len(done)}-{run.name}"
        export_hf(model.source, folder, dtype="fp32")  # lossless: the merge decides the output's dtype
        done[run] = str(folder.resolve())
    return done[run]


def _references(node: Any, key: str = ""):
    """(dotted key, mapping, field) of every model reference written as text in a mergekit or mergekit-moe YAML."""
    if isinstance(node, dict):
        for k, v in node.items():
            where = f"{key}.{k}" if key else str(k)
            if k in REFERENCE_KEYS and isinstance(v, str) and v not in ("union", "base"):
                yield where, node, k
            elif k != "parameters":  # parameter values are numbers and filters, never models
                yield from _references(v, where)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _references(v, f"{key}[{i}]")


def _open_references(raw: dict, where: Path) -> list[tuple[str, dict, str, _Model]]:
    """Every model reference of `raw` opened; a `model+lora` reference is opened for its model part."""
    found = []
    for key, mapping, field in _references(raw):
        name = mapping[field].split("+", 1)[0]
        found.append((key, mapping, field, _open(name, key, where)))
    return found


def _rewrite(references: list[tuple[str, dict, str, _Model]], scratch: Path) -> None:
    """Point each reference at a local plain folder (the LoRA part of `model+lora` at a run's adapter folder)."""
    from tunelab.models.loading import result_folder

    done: dict[Path, str] = {}
    for _key, mapping, field, model in references:
        lora = mapping[field].split("+", 1)[1:]
        local = _local(model, scratch, done)
        mapping[field] = f"{local}+{result_folder(lora[0])}" if lora else local


def _parse(cls: Any, raw: dict, where: Path, what: str) -> Any:
    """`raw` as mergekit's pydantic config `cls`; ConfigError naming the file otherwise."""
    from pydantic import ValidationError

    unknown = [k for k in raw if k not in cls.model_fields]
    if unknown:  # mergekit ignores unknown keys, so a misspelt one would silently do nothing
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}{did_you_mean(unknown[0], list(cls.model_fields))} in "
                          f"a {what} config; known: {', '.join(cls.model_fields)}")
    try:
        return cls.model_validate(raw)
    except (ValidationError, ValueError, RuntimeError) as e:  # mergekit's own validators raise RuntimeError
        raise ConfigError(f"{where}: not a valid {what} config: {e}") from None


def _kit_options(opts: MergeOptions, scratch: Path | None = None, **changes: Any):
    """mergekit's options for a CPU merge (`changes` over them)."""
    from mergekit.options import MergeOptions as KitOptions

    values = {"device": "cpu", "cuda": False, "lazy_unpickle": False, "copy_tokenizer": opts.copy_tokenizer,
              "random_seed": opts.seed, "safe_serialization": True,
              "lora_merge_cache": str(scratch / "lora") if scratch else None}  # where model+lora is merged first
    return KitOptions(**{**values, **changes})


def _require_mergekit(where: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("mergekit") is None:
        raise ConfigError(f"{where}: merging models needs mergekit, which is not installed; install it with: "
                          "pip install mergekit==0.1.5")


@contextlib.contextmanager
def _refusals(where: Path, what: str):
    """mergekit-moe refuses a config by logging errors and calling sys.exit: turn that into a ConfigError."""
    errors: list[str] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = lambda record: errors.append(record.getMessage())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    except SystemExit:
        raise ConfigError(f"{where}: {what} refused it: {' '.join(errors) or 'no reason given'}") from None
    finally:
        root.removeHandler(handler)


# ---------------------------------------------------------------- mergekit


def _plan_mergekit(raw: dict, where: Path, opts: MergeOptions) -> Callable[[Path, Path], None]:
    """Check a mergekit merge config; return what writes the merge."""
    _require_mergekit(where)
    from mergekit.config import MergeConfiguration
    from mergekit.merge_methods import registered_methods

    methods = {m.spec.name: m for m in registered_methods()}
    method = raw["merge_method"]
    if method not in methods:
        raise ConfigError(f"{where}: merge_method: unknown {method!r}{did_you_mean(method, list(methods))}; "
                          f"mergekit knows: {', '.join(sorted(methods))}")
    _parse(MergeConfiguration, raw, where, "mergekit")
    _check_method_inputs(methods[method].spec, raw, where)
    references = _open_references(raw, where)
    models = [m for key, _, field, m in references if field in ("model", "base_model") and ".tokens." not in key]
    own_tokenizer = raw.get("tokenizer_source") or raw.get("tokenizer")  # mergekit builds a common vocabulary
    _check_same_shape(models, where, vocab=not own_tokenizer,
                      hint="" if own_tokenizer else " (or set tokenizer_source: union to merge their vocabularies)")
    text = where.read_text(encoding="utf-8")

    def write(folder: Path, scratch: Path) -> None:
        from mergekit.merge import run_merge

        resolved = copy.deepcopy(raw)
        _rewrite(_open_references(resolved, where), scratch)
        if opts.dtype != "auto":
            resolved["out_dtype"] = DTYPES[opts.dtype]
        config = _parse(MergeConfiguration, resolved, where, "mergekit")
        run_merge(config, str(folder), _kit_options(opts, scratch), config_source=text)  # the card shows the YAML

    return write


def _check_method_inputs(spec: Any, raw: dict, where: Path) -> None:
    """The base model and required parameters a mergekit method needs, checked for the `models:` form."""
    from mergekit.merge_methods import ParameterScope
    from mergekit.merge_methods.base import BasePolicy

    slices = raw.get("slices") or []
    has_base = raw.get("base_model") or (slices and all(s.get("base_model") for s in slices))
    if spec.contract.base == BasePolicy.REQUIRED and not has_base and not raw.get("modules"):
        raise ConfigError(f"{where}: merge_method {spec.name} works on differences from a base: set base_model: "
                          "(the model the others were fine-tuned from)")
    models = raw.get("models")
    if not isinstance(models, list) or raw.get("modules") or slices:
        return  # slices and modules may set parameters at several levels; mergekit checks those itself
    top = raw.get("parameters") or {}
    for p in spec.parameters:
        if not p.required or p.name in top:
            continue
        if p.scope == ParameterScope.SHARED:
            missing = ["parameters"]
        else:
            missing = [f"models[{i}]" for i, m in enumerate(models) if isinstance(m, dict)
                       and p.name not in (m.get("parameters") or {})
                       and not (p.scope == ParameterScope.NON_BASE and m.get("model") == raw.get("base_model"))]
        if missing:
            raise ConfigError(f"{where}: merge_method {spec.name} needs parameter {p.name}, missing from "
                              f"{', '.join(missing)}; set it under parameters: (for all) or under each model's "
                              f"parameters: (e.g. parameters: {{{p.name}: 0.5}})")


# ---------------------------------------------------------------- mixture of experts (mergekit-moe)


def _plan_moe(raw: dict, where: Path, opts: MergeOptions) -> Callable[[Path, Path], None]:
    """Check a mergekit-moe config; return what writes the mixture of experts."""
    _require_mergekit(where)
    from mergekit.moe.config import MoEMergeConfig, is_bad_config
    from mergekit.scripts.moe import select_output_arch

    if raw.get("gate_mode", "hidden") not in GATE_MODES:
        mode = raw["gate_mode"]
        raise ConfigError(f"{where}: gate_mode: unknown {mode!r}{did_you_mean(mode, list(GATE_MODES))}; "
                          f"known: {', '.join(GATE_MODES)}")
    if "base_model" not in raw:
        raise ConfigError(f"{where}: a mixture of experts needs base_model: (its attention and embeddings come "
                          "from it)")
    config = _parse(MoEMergeConfig, raw, where, "mergekit-moe")
    references = _open_references(raw, where)
    _check_same_shape([m for *_, m in references], where)
    # mergekit's own choice of output architecture, asked of configs alone (a run's shape is its base's)
    probe = copy.deepcopy(raw)
    for (_, _, _, model), (_, mapping, field) in zip(references, _references(probe)):
        mapping[field] = str(model.shape_folder)
    with _refusals(where, "mergekit-moe"):
        if is_bad_config(config):
            raise SystemExit(1)
        select_output_arch(_parse(MoEMergeConfig, probe, where, "mergekit-moe"), _kit_options(opts))
    text = where.read_text(encoding="utf-8")

    def write(folder: Path, scratch: Path) -> None:
        from mergekit.scripts.moe import build
        from transformers import set_seed

        resolved = copy.deepcopy(raw)
        _rewrite(_open_references(resolved, where), scratch)
        if opts.dtype != "auto":
            resolved["dtype"] = DTYPES[opts.dtype]
        set_seed(opts.seed)  # random gates and expert noise
        # mergekit-moe saves its tokenizer with the BOS token made the pad token (for its own prompts):
        # the base's tokenizer files are copied as they are instead.
        with _refusals(where, "mergekit-moe"):
            build(_parse(MoEMergeConfig, resolved, where, "mergekit-moe"), str(folder),
                  _kit_options(opts, copy_tokenizer=False), device="cpu")
        if opts.copy_tokenizer:
            _copy_files(Path(resolved["base_model"].split("+", 1)[0]), folder, TOKENIZER_FILES)
        (folder / "mergekit_moe_config.yml").write_text(text, encoding="utf-8")

    return write


# ---------------------------------------------------------------- LoRA adapters (peft)


def _plan_adapters(raw: dict, where: Path, opts: MergeOptions) -> Callable[[Path, Path], None]:
    """Check an adapter merge; return what writes the combined adapter as a run folder."""
    from tunelab.models import hub

    spec = AdapterMerge.load(raw, str(where))
    entries = spec.entries()
    runs = [_open(run, f"adapters.{name}", where) for name, run, _ in entries]
    ranks = []
    for model in runs:
        config_file = model.source.result / "adapter_config.json"
        peft_type = json.loads(config_file.read_text()).get("peft_type") if config_file.is_file() else None
        if model.source.run_dir is None or peft_type != "LORA":
            what = f"a {model.source.method} run" if model.source.run_dir else "not a run folder"
            raise ModelError(f"{where}: {model.key}: {model.name} is {what}; an adapter merge combines LoRA runs "
                             "(runs/NAME with adapter/); merge other models with merge_method (mergekit)")
        config = json.loads(config_file.read_text())
        ranks.append(max([config.get("r", 0), *(config.get("rank_pattern") or {}).values()]))
    if spec.combination_type in SAME_RANK and len(set(ranks)) > 1:
        raise ConfigError(f"{where}: combination_type {spec.combination_type} needs adapters of one rank (given "
                          f"{', '.join(map(str, ranks))}); use cat, svd or another _svd form")
    if spec.base:  # every adapter goes on this base, which must have the shape they were trained on
        try:
            folder = hub.resolve(spec.base)
        except ModelError as e:
            raise ModelError(f"{where}: base: {e}") from None
        _check_same_shape([_Model("base", spec.base, None, folder, folder), *runs], where)
    else:
        _check_same_shape(runs, where)
    text = where.read_text(encoding="utf-8")

    def write(folder: Path, _scratch: Path) -> None:
        import torch
        from transformers import set_seed

        from tunelab.models.loading import load_adapters

        names = [f"in{i}" for i in range(len(runs))]  # peft module keys: the YAML's names may hold dots
        model, _ = load_adapters(dict(zip(names, (m.source.run_dir for m in runs))), base=spec.base)
        set_seed(opts.seed)  # DARE drops weights at random
        # "default" is the name peft saves directly in the folder (others go to a subfolder of that name)
        model.add_weighted_adapter(names, [w for *_, w in entries], "default", combination_type=spec.combination_type,
                                   density=spec.density, majority_sign_method=spec.majority_sign_method,
                                   svd_rank=spec.svd_rank)
        if opts.dtype in DTYPES:
            model.to(getattr(torch, DTYPES[opts.dtype]))
        model.save_pretrained(str(folder / "adapter"), selected_adapters=["default"])
        first = runs[0].source
        _copy_files(first.result, folder / "adapter", TOKENIZER_FILES)  # its chat template and stop tokens
        _write_run_config(first.run_dir / "config.yaml", folder / "config.yaml", spec.base)
        (folder / "merge.yaml").write_text(text, encoding="utf-8")

    return write


def _write_run_config(source: Path, target: Path, base: str | None) -> None:
    """The first run's config.yaml (so tunelab loads the result like a run), on `base` when one is given."""
    if base is None:
        shutil.copy2(source, target)
        return
    from tunelab.config.files import load_yaml_text, write_yaml

    config = load_yaml_text(source.read_text(encoding="utf-8")) or {}
    config.setdefault("model", {})["name"] = base
    write_yaml(config, target)


def _copy_files(source: Path, target: Path, names: tuple[str, ...]) -> None:
    for name in names:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)
