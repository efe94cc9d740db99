"""`tunelab export` and `tunelab quantize` end to end on tiny runs: a merged export computes what the run
computes (every mergeable method, fp32 and bf16), it keeps the run's stop tokens, chat template and system
prompt, unmergeable runs ship in their own loadable form, GGUF (f16, q8_0, LoRA adapter, Ollama) passes
verify and loads in llama.cpp, verify catches a broken export, bad input is refused with one message and
leaves nothing behind, and what was exported is served by `load_engine`.

The merge runs use the byte-level tiny model (fast); llama.cpp's converter only knows real tokenizers, so
the GGUF runs use a tiny Llama carrying the default model's tokenizer (`default_model_dir`, converted once
from its packaged GGUF, about 20 s the first time on a machine).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.jsonl import write_jsonl
from tunelab.cli import main
from tunelab.config import load_config
from tunelab.objectives import run as train

SYSTEM = "Answer in JSON."  # every chat record of the merge runs carries it
GGUF_SYSTEM = "You are Tuna, a terse assistant."  # every record of the real-vocabulary run carries it
CONVERSATION = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "item 7"},
                {"role": "assistant", "content": '{"id": 7}'}]

# Largest |logit| difference allowed between the merged export and the run (the base with its adapter
# on top, unmerged), on one rendered conversation; logits of the tiny model are about 1.3 in size.
# Measured on a 2-core x86 CPU (torch 2.13, peft 0.21): fp32 lora 4.8e-7, dora 3.0e-7, ia3 2.4e-7,
# freeze and full 0 (whole models, nothing to merge) -> 1e-4.
FP32_ATOL = 1e-4
# qlora: the run is its NF4 base in bitsandbytes (computing in bfloat16 where the CPU has it) plus the
# adapter, the export its dequantized NF4 weights plus the adapter folded in float32: 2.4e-3 measured
# -> 2e-2, still ten times below what the adapter changes.
QLORA_FP32_ATOL = 2e-2
# bf16: the run computes in bfloat16 around an unmerged adapter, the export has the merge (done in
# float32) rounded to bfloat16 once; one bfloat16 ulp at |logit| 1..2 is 2**-7 = 7.8e-3. Measured:
# lora 3.9e-3, dora and ia3 7.8e-3, freeze and full 0, qlora 2.1e-2 -> 4 ulps (qlora 8).
BF16_ATOL = 3e-2
QLORA_BF16_ATOL = 6e-2
# the trained weights must move the logits at least this many tolerances, or "merged == unmerged" proves
# nothing (a merge that dropped the adapter would pass)
EFFECT_OVER_TOLERANCE = 10

# name -> (method, extra settings); lr 1e-2 for 2 steps moves the fp32 logits by 0.3 (lora), 0.9 (freeze,
# full); ia3 only scales activations, so it gets 1e-1 to move them well past its tolerance
MERGEABLE = {
    "lora": ("lora", []),
    "dora": ("lora", ["method.dora=true"]),
    "ia3": ("ia3", ["train.lr=1e-1"]),
    "qlora": ("qlora", []),
    "freeze": ("freeze", []),
    "full": ("full", []),
}


def train_run(base: Path, data: Path, root: Path, name: str, method: str, *extra: str, precision: str = "fp32",
              steps: int = 2) -> Path:
    train(load_config(None, [f"model.name={base}", f"data.train={data}", "data.val_split=0",
                             f"train.output_dir={root / 'runs'}", f"train.run_name={name}", f"train.max_steps={steps}",
                             "train.lr=1e-2", f"train.precision={precision}", f"method={method}",
                             "train.predict=false", "train.logging_steps=100", *extra]))
    return root / "runs" / name


def cli(argv: list[str]) -> tuple[int, str, str]:
    """main(argv) with its stdout and stderr captured (usable from module-scoped fixtures)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def printed_json(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{"):])


def leftovers(folder: Path) -> list[str]:
    """Staging folders and temporary files an interrupted or refused write could leave in `folder`."""
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name or ".old-" in p.name
                  or p.name.startswith("tunelab-gguf-") or p.name.endswith(".tmp"))


@torch.no_grad()
def logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model.eval()(input_ids=ids).logits.float()


def conversation_ids(tokenizer, conversation=CONVERSATION) -> torch.Tensor:
    text = tokenizer.apply_chat_template(conversation, tokenize=False)
    return tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids


def contains(ids: list[int], part: list[int]) -> bool:
    return any(ids[i:i + len(part)] == part for i in range(len(ids) - len(part) + 1))


# --- runs, shared by the module -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def chat_data(root) -> Path:
    rows = [{"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"item {i}"},
                          {"role": "assistant", "content": json.dumps({"id": i})}]} for i in range(12)]
    return write_jsonl(root / "chat.jsonl", rows)


@pytest.fixture(scope="module")
def base_dir(root) -> Path:
    """The byte-level tiny model with <|endoftext|> as its EOS, as a base model's often is: its runs stop at that
    EOS and at the template's <|im_end|>, so an export that kept the base's stop tokens would lose one."""
    from tunelab.models.tiny import tiny_llama

    model, tokenizer = tiny_llama()
    model.config.eos_token_id = model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    folder = root / "base"
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def runs(base_dir, chat_data, root):
    """runs(name, precision) -> a run folder of MERGEABLE[name] on the tiny model, trained on first use."""
    done: dict = {}

    def get(name: str, precision: str = "fp32") -> Path:
        if (name, precision) not in done:
            method, extra = MERGEABLE[name]
            done[name, precision] = train_run(base_dir, chat_data, root, f"{name}-{precision}", method, *extra,
                                              precision=precision)
        return done[name, precision]

    return get


@pytest.fixture(scope="module")
def exports(runs, root):
    """exports(name) -> the fp32 hf export of the fp32 run `name` (export_hf), written on first use."""
    from tunelab.compress.hf import export_hf
    from tunelab.compress.source import open_source

    done: dict = {}

    def get(name: str) -> Path:
        if name not in done:
            done[name] = export_hf(open_source(runs(name)), root / "hf" / name, dtype="fp32").path
        return done[name]

    return get


# --- 1. merged == unmerged --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(MERGEABLE))
def test_fp32_merged_export_computes_what_the_run_computes(name, runs, exports, base_dir):
    from transformers import AutoModelForCausalLM

    from tunelab.compress.source import load_trained, open_source

    source = open_source(runs(name))
    assert source.mergeable and source.method == MERGEABLE[name][0]
    trained, tokenizer = load_trained(source)
    ids = conversation_ids(tokenizer)
    run_logits = logits(trained, ids)
    if hasattr(trained, "disable_adapter"):  # peft: the same base (qlora: 4-bit) without the adapter
        with trained.disable_adapter():
            base_logits = logits(trained, ids)
    else:
        base_logits = logits(AutoModelForCausalLM.from_pretrained(str(base_dir)), ids)
    tolerance = QLORA_FP32_ATOL if name == "qlora" else FP32_ATOL
    effect = float((run_logits - base_logits).abs().max())
    assert effect > EFFECT_OVER_TOLERANCE * tolerance, f"the {name} run barely changed its base ({effect:.2g})"

    folder = exports(name)
    assert not (folder / "adapter_config.json").exists()
    plain = AutoModelForCausalLM.from_pretrained(str(folder))  # plain transformers: no peft, no tunelab
    assert type(plain).__name__ == "LlamaForCausalLM" and plain.dtype == torch.float32
    assert not [m for m in plain.modules() if "4bit" in type(m).__name__ or "lora" in type(m).__name__.lower()]
    gap = float((logits(plain, ids) - run_logits).abs().max())
    assert gap <= tolerance, f"{name}: merged export differs from the run by {gap:.3g} (allowed {tolerance})"


@pytest.mark.parametrize("name", list(MERGEABLE))
def test_bf16_export_is_the_bf16_run_within_bf16_rounding(name, runs, tmp_path):
    from transformers import AutoModelForCausalLM

    from tunelab.compress.hf import export_hf
    from tunelab.compress.source import load_trained, open_source

    source = open_source(runs(name, "bf16"))
    assert source.config.train.precision == "bf16"
    trained, tokenizer = load_trained(source, torch.bfloat16)
    ids = conversation_ids(tokenizer)
    exported = export_hf(source, tmp_path / "hf", dtype="bf16")
    assert json.loads((exported.path / "config.json").read_text()).get("dtype") == "bfloat16"
    plain = AutoModelForCausalLM.from_pretrained(str(exported.path), dtype=torch.bfloat16)
    assert next(plain.parameters()).dtype == torch.bfloat16
    tolerance = QLORA_BF16_ATOL if name == "qlora" else BF16_ATOL
    gap = float((logits(plain, ids) - logits(trained, ids)).abs().max())
    assert gap <= tolerance, f"{name}: bf16 export differs from the bf16 run by {gap:.3g} (allowed {tolerance})"


@pytest.mark.parametrize("name", list(MERGEABLE))
def test_export_keeps_the_runs_stop_tokens_template_and_system_prompt(name, runs, exports, base_dir):
    from transformers import AutoTokenizer

    from tunelab.compress.source import SYSTEM_PROMPT_FILE, open_source

    source = open_source(runs(name))
    assert source.system_prompt == SYSTEM  # recorded by training: every record carried it
    folder = exports(name)
    run_eos = json.loads((source.result / "generation_config.json").read_text())["eos_token_id"]
    eos = json.loads((folder / "generation_config.json").read_text())["eos_token_id"]
    as_set = lambda e: set(e if isinstance(e, list) else [e])  # noqa: E731
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    ends = {tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>")}
    assert as_set(eos) == as_set(run_eos) == ends  # the base's EOS and the template's end of turn
    assert as_set(json.loads((base_dir / "generation_config.json").read_text())["eos_token_id"]) != ends
    assert tokenizer.chat_template
    run_tokenizer = AutoTokenizer.from_pretrained(str(source.result))
    user_only = [{"role": "user", "content": "hi"}]
    rendered = tokenizer.apply_chat_template(user_only, tokenize=False, add_generation_prompt=True)
    assert SYSTEM in rendered
    assert rendered == run_tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM}] + user_only,
                                                         tokenize=False, add_generation_prompt=True)
    own = tokenizer.apply_chat_template([{"role": "system", "content": "Be brief."}] + user_only, tokenize=False)
    assert "Be brief." in own and SYSTEM not in own  # a caller's own system message wins
    assert json.loads((folder / SYSTEM_PROMPT_FILE).read_text())["system_prompt"] == SYSTEM


def test_system_prompt_option_replaces_or_drops_the_runs_own(runs, chat_data, tmp_path):
    from transformers import AutoTokenizer

    from tunelab.compress.hf import export_hf
    from tunelab.compress.source import SYSTEM_PROMPT_FILE, common_system_prompt, open_source

    source = open_source(runs("lora"))
    user_only = [{"role": "user", "content": "hi"}]
    none = export_hf(source, tmp_path / "none", dtype="fp32", system_prompt="").path
    text = AutoTokenizer.from_pretrained(str(none)).apply_chat_template(user_only, tokenize=False)
    assert SYSTEM not in text and "system" not in text and not (none / SYSTEM_PROMPT_FILE).exists()
    tricky = 'Say "yes" \\ then\nstop.'  # quotes, a backslash and a newline survive the Jinja literal
    other = export_hf(source, tmp_path / "other", dtype="fp32", system_prompt=tricky).path
    text = AutoTokenizer.from_pretrained(str(other)).apply_chat_template(user_only, tokenize=False)
    assert tricky in text and SYSTEM not in text
    # records with different system prompts (or some with none) give the run no default
    cfg = load_config(runs("lora") / "config.yaml")
    rows = [json.loads(x) for x in chat_data.read_text().splitlines()]
    common = lambda name: common_system_prompt(  # noqa: E731
        cfg.data.model_copy(update={"train": str(write_jsonl(tmp_path / name, rows))}))
    assert common("same.jsonl") == SYSTEM
    rows[3]["messages"][0]["content"] = "Something else."
    assert common("mixed.jsonl") is None
    rows[3]["messages"] = rows[3]["messages"][1:]
    assert common("some-without.jsonl") is None


# --- 2. methods that cannot be merged ---------------------------------------------------------------------

UNMERGEABLE = ["prompt", "adapter", "probe"]


@pytest.fixture(scope="module")
def unmerged_runs(root, chat_data):
    """A prompt-tuning, a bottleneck-adapter and a probe run on their own tiny base (which a test moves away)."""
    from tunelab.models import save_tiny

    base = save_tiny(root / "own-base" / "model")
    labelled = write_jsonl(root / "labels.jsonl", [{"text": f"{'good' if i % 2 else 'bad'} thing {i}",
                                                    "label": "pos" if i % 2 else "neg"} for i in range(16)])
    return base, {
        "prompt": train_run(base, chat_data, root, "prompt", "prompt"),
        "adapter": train_run(base, chat_data, root, "adapter", "adapter"),
        "probe": train_run(base, labelled, root, "probe", "probe", "objective=classify", "data.val_split=0.25",
                           "method.cache=false"),  # no embeddings written to the user's cache
    }


def run_outputs(method: str, model, tokenizer) -> torch.Tensor:
    """What the loaded run computes: logits on a conversation, or a probe's class probabilities."""
    if method == "probe":
        return torch.tensor(model.predict_proba(["good thing 99", "bad thing 98", "a thing"]))
    return logits(model, conversation_ids(tokenizer))


@pytest.fixture(scope="module")
def unmerged_exports(unmerged_runs, root):
    """method -> (exit code, stdout, stderr, output) of `tunelab export RUN --format hf`."""
    _, found = unmerged_runs
    return {method: (*cli(["export", str(run), "--format", "hf", "--output", str(root / "unmerged" / method),
                           "--verify-prompts", "1", "--verify-tokens", "4"]), root / "unmerged" / method)
            for method, run in found.items()}


@pytest.mark.parametrize("method", UNMERGEABLE)
def test_unmergeable_run_exports_in_its_own_form_and_loads_as_the_run(method, unmerged_runs, unmerged_exports):
    from tunelab.compress.source import NOT_MERGEABLE
    from tunelab.models.loading import load_run

    run = unmerged_runs[1][method]
    rc, out, err, folder = unmerged_exports[method]
    assert rc == 0, err
    printed = printed_json(out)
    assert printed["format"] == "adapter" and printed["merged"] is False and printed["output"] == str(folder)
    assert {"adapter", "base", "config.yaml"} <= set(printed["files"])
    assert "not merged" in err and NOT_MERGEABLE[method] in err and f"tunelab chat --adapter {folder}" in err
    if method != "probe":  # a probe does not generate; export says so instead of verifying
        assert printed["verify"]["passed"] and printed["verify"]["token_agreement"] == 1.0
    assert load_config(folder / "config.yaml").model.name == "./base"
    assert (folder / "base" / "config.json").is_file()
    want = run_outputs(method, *load_run(run))
    got = run_outputs(method, *load_run(folder))
    assert torch.allclose(got, want, atol=1e-6, rtol=0), float((got - want).abs().max())


@pytest.mark.parametrize("method", [
    "prompt", "adapter",
    "probe",
])
def test_unmerged_export_loads_without_the_original_base(method, unmerged_runs, unmerged_exports):
    """The export carries its base (base/): with the run's own base moved away it still loads and answers alike."""
    from tunelab.models.loading import load_run

    base, found = unmerged_runs
    folder = unmerged_exports[method][3]
    want = run_outputs(method, *load_run(found[method]))
    away = base.with_name("moved-away")
    base.rename(away)
    try:
        got = run_outputs(method, *load_run(folder))
    finally:
        away.rename(base)
    assert torch.allclose(got, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", UNMERGEABLE)
def test_unmergeable_run_to_gguf_exits_2_with_the_reason(method, unmerged_runs, tmp_path):
    from tunelab.compress.source import NOT_MERGEABLE

    target = tmp_path / "model.gguf"
    rc, _, err = cli(["export", str(unmerged_runs[1][method]), "--format", "gguf", "--output", str(target)])
    assert rc == 2
    assert err.startswith("error: ") and "cannot be merged" in err and NOT_MERGEABLE[method] in err
    assert "--format hf" in err and "Traceback" not in err
    assert not target.exists() and leftovers(tmp_path) == []


# --- 3. GGUF -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gguf_run(default_model_dir, root) -> Path:
    """A tiny Llama with the default model's real tokenizer, 3 LoRA steps on chat records with GGUF_SYSTEM."""
    from tunelab.compress.source import load_trained, open_source
    from tunelab.models import load_tokenizer
    from tunelab.models.tiny import tiny_llama

    model, tokenizer = tiny_llama(tokenizer=load_tokenizer(default_model_dir))
    base = root / "real-vocab-base"
    model.save_pretrained(str(base), safe_serialization=True)
    tokenizer.save_pretrained(str(base))
    rows = [{"messages": [{"role": "system", "content": GGUF_SYSTEM}, {"role": "user", "content": f"What is item {i}?"},
                          {"role": "assistant", "content": f"Item {i} is a fish."}]} for i in range(12)]
    run = train_run(base, write_jsonl(root / "fish.jsonl", rows), root, "real-vocab-lora", "lora",
                    "data.val_split=0.25", steps=3)
    # the adapter must change the answers, or an export that lost it would still pass verify
    trained, tokenizer = load_trained(open_source(run))
    ids = conversation_ids(tokenizer, [{"role": "system", "content": GGUF_SYSTEM},
                                       {"role": "user", "content": "What is item 3?"},
                                       {"role": "assistant", "content": "Item 3 is a fish."}])
    with trained.disable_adapter():
        base_top = logits(trained, ids).argmax(-1)
    same = float((logits(trained, ids).argmax(-1) == base_top).float().mean())
    assert same < 0.9, f"the LoRA run picks the base's next token at {same:.0%} of positions: it learned too little"
    return run


@pytest.fixture(scope="module")
def gguf_exports(gguf_run, root):
    """gguf_exports(quant) -> (exit code, stdout, stderr, file) of `tunelab export RUN --format gguf`."""
    done: dict = {}

    def get(quant: str):
        if quant not in done:
            target = root / "gguf" / f"tiny-{quant}.gguf"
            # f16 is all but exact; q8_0 is judged on more tokens, so that one near-tie flip stays under 5%
            checks = ["--verify-prompts", "2", "--verify-tokens", "8"] if quant == "f16" else \
                ["--verify-prompts", "4", "--verify-tokens", "12"]
            done[quant] = (*cli(["export", str(gguf_run), "--format", "gguf", "--quant", quant, "--output",
                                 str(target), *checks]), target)
        return done[quant]

    return get


# (llama.cpp's general.file_type, largest |log-prob| difference from the run on one conversation):
# measured 3.9e-4 (f16) and 9.5e-3 (q8_0), against 0.91 for the adapter itself
GGUF_TYPES = {"f16": (1, 5e-3), "q8_0": (7, 5e-2)}


@pytest.mark.parametrize("quant", list(GGUF_TYPES))
def test_gguf_export_passes_verify_and_loads_in_llama_cpp(quant, gguf_exports, gguf_run):
    import llama_cpp

    from tunelab.compress.source import open_source
    from tunelab.compress.verify import GGUFSide, HFSide

    rc, out, err, target = gguf_exports(quant)
    assert rc == 0, err
    verified = printed_json(out)["verify"]
    assert verified["passed"] and verified["token_agreement"] >= 0.95, verified
    assert verified["template_agrees"] and verified["stops_agree"]
    assert target.with_name(target.name + ".verify.json").is_file() and leftovers(target.parent) == []
    llm = llama_cpp.Llama(str(target), n_ctx=256, verbose=False)
    try:
        file_type, _ = GGUF_TYPES[quant]
        assert int(llm.metadata["general.file_type"]) == file_type
        assert GGUF_SYSTEM in llm.metadata["tokenizer.chat_template"]
        end = llm.tokenize(b"<|im_end|>", add_bos=False, special=True)
        assert len(end) == 1 and llama_cpp.llama_vocab_is_eog(llm._model.vocab, end[0])
    finally:
        llm.close()
    # its log-probs are the run's, within the type's rounding
    source = open_source(gguf_run)
    run_side, file_side = HFSide.from_source(source), GGUFSide(target, n_ctx=256)
    try:
        question = [{"role": "user", "content": "What is item 3?"}]
        ids = run_side.render([{"role": "system", "content": GGUF_SYSTEM}] + question)
        assert file_side.render(question) == ids  # the file's template brings the default system prompt
        ids += run_side.tokenizer.encode("Item 3 is a fish.")
        gap = float((file_side.logprobs(ids) - run_side.logprobs(ids)).abs().max())
    finally:
        file_side.close()
    assert gap <= GGUF_TYPES[quant][1], f"{quant}: log-probs differ from the run by {gap:.3g}"


def test_gguf_lora_adapter_exports_verifies_and_changes_its_base(gguf_run, root, tmp_path, monkeypatch):
    from tunelab.compress.export import ExportConfig, base_gguf, export
    from tunelab.compress.source import open_source
    from tunelab.compress.verify import GGUFSide, HFSide

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))  # the base's f32 GGUF is cached there
    target = tmp_path / "adapter.gguf"
    exported = export(str(gguf_run), ExportConfig(format="gguf-lora", quant="f16", output=str(target),
                                                  verify_prompts=2, verify_tokens=8))
    assert exported.format == "gguf-lora" and not exported.merged and target.is_file()
    assert exported.verify["passed"] and exported.verify["token_agreement"] >= 0.95, exported.verify
    source = open_source(gguf_run)
    base_file = base_gguf(source)
    assert base_file.is_relative_to(tmp_path / "cache")
    run_side = HFSide.from_source(source)
    ids = run_side.render([{"role": "user", "content": "What is item 5?"}]) + run_side.tokenizer.encode("Item 5")
    want = run_side.logprobs(ids)
    gaps = {}
    for name, side in (("with", GGUFSide(base_file, lora=target, n_ctx=256)),
                       ("without", GGUFSide(base_file, n_ctx=256))):
        try:
            gaps[name] = float((side.logprobs(ids) - want).abs().max())
        finally:
            side.close()
    assert gaps["with"] < 5e-3 < 0.1 < gaps["without"], gaps  # measured 4.4e-4 with, 0.91 without


def test_ollama_folder_has_modelfile_with_stops_and_system(gguf_run, tmp_path):
    from tunelab.compress.export import ExportConfig, export

    folder = tmp_path / "ollama"
    exported = export(str(gguf_run), ExportConfig(format="ollama", quant="q8_0", output=str(folder), verify=False))
    assert exported.format == "ollama" and (folder / "model.gguf").is_file()
    lines = (folder / "Modelfile").read_text().splitlines()
    assert lines[0] == "FROM ./model.gguf"
    assert 'PARAMETER stop "<|im_end|>"' in lines
    assert f'SYSTEM """{GGUF_SYSTEM}"""' in lines
    assert any(line.startswith('TEMPLATE """') for line in lines)
    assert leftovers(tmp_path) == []


# --- 4. verify catches a broken export ---------------------------------------------------------------------

def break_eos(folder: Path, other: int) -> None:
    path = folder / "generation_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "eos_token_id": [other]}))


@pytest.fixture
def lora_copy(exports, tmp_path) -> Path:
    return Path(shutil.copytree(exports("lora"), tmp_path / "copy"))


def test_verify_fails_when_the_export_lost_its_eos(runs, lora_copy):
    from tunelab.compress.source import open_source
    from tunelab.compress.verify import HFSide, verify

    source = open_source(runs("lora"))
    good = verify(source, HFSide.from_folder(lora_copy), n_prompts=2, max_new_tokens=8)
    assert good.passed and good.stops_agree, good.summary()
    tokenizer = HFSide.from_folder(lora_copy).tokenizer
    break_eos(lora_copy, tokenizer.convert_tokens_to_ids("<|endoftext|>"))  # another id: <|im_end|> is lost
    result = verify(source, HFSide.from_folder(lora_copy), n_prompts=2, max_new_tokens=8)
    assert not result.passed and not result.stops_agree and result.template_agrees
    assert any("lost EOS" in p and "<|im_end|>" in p for p in result.problems), result.problems


def replace_template(folder: Path, template: str) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tokenizer.chat_template = template
    tokenizer.save_pretrained(str(folder))


def test_verify_fails_when_the_export_has_another_template(runs, lora_copy):
    from tunelab.compress.source import open_source
    from tunelab.compress.verify import HFSide, verify

    replace_template(lora_copy, "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
                                "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
    result = verify(open_source(runs("lora")), HFSide.from_folder(lora_copy), n_prompts=2, max_new_tokens=8)
    assert not result.passed and not result.template_agrees and result.stops_agree
    assert any("template" in p for p in result.problems), result.problems


@pytest.mark.parametrize("prompts", [
    "user-only",
    "the run's own",
])
def test_verify_fails_when_the_export_lost_the_default_system_prompt(prompts, runs, lora_copy):
    """The base's ChatML template without the run's default system prompt: a user asking without one gets
    prompts the run was never trained on."""
    from tunelab.compress.source import open_source
    from tunelab.compress.verify import HFSide, verify
    from tunelab.models.tiny import CHATML

    replace_template(lora_copy, CHATML)
    given = ["item 3", "item 5"] if prompts == "user-only" else None
    result = verify(open_source(runs("lora")), HFSide.from_folder(lora_copy), prompts=given, n_prompts=2,
                    max_new_tokens=8)
    assert not result.passed and not result.template_agrees
    assert any("lost system prompt" in p for p in result.problems), result.problems


def test_cli_export_exits_2_when_verify_finds_a_lost_eos(runs, tmp_path, monkeypatch):
    """The writer is made to lose the EOS: `tunelab export` writes, verifies, and refuses it (the export stays
    for inspection, with its figures); --no-verify keeps it without the check."""
    from tunelab.compress import hf

    original = hf.save_folder

    def lossy(model, tokenizer, folder, source, system):
        original(model, tokenizer, folder, source, system)
        break_eos(folder, tokenizer.convert_tokens_to_ids("<|endoftext|>"))

    monkeypatch.setattr(hf, "save_folder", lossy)
    target = tmp_path / "hf"
    argv = ["export", str(runs("lora")), "--format", "hf", "--dtype", "fp32", "--output", str(target),
            "--verify-prompts", "2", "--verify-tokens", "8"]
    rc, _, err = cli(argv)
    assert rc == 2 and err.startswith("error: ") and "Traceback" not in err
    assert "does not behave like" in err and "lost EOS" in err and "--no-verify" in err
    report = json.loads((target / "verify.json").read_text())
    assert report["passed"] is False and report["stops_agree"] is False
    rc, _, err = cli(argv + ["--no-verify", "--force"])
    assert rc == 0, err


# --- 5. bad input: one message, exit 2, nothing left behind ------------------------------------------------

def test_run_without_a_model_is_refused(runs, tmp_path):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy2(runs("lora") / "config.yaml", unfinished / "config.yaml")
    for fmt in ("hf", "gguf"):
        rc, out, err = cli(["export", str(unfinished), "--format", fmt])
        assert rc == 2 and out == ""
        assert err.startswith("error: ") and "has no model" in err and "--resume" in err and "Traceback" not in err
    assert sorted(p.name for p in unfinished.iterdir()) == ["config.yaml"]  # no exports/ folder
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("fmt", ["gguf", "ollama"])
def test_unknown_gguf_type_is_refused_with_the_types_listed(fmt, runs, tmp_path):
    target = tmp_path / ("m.gguf" if fmt == "gguf" else "ollama")
    rc, _, err = cli(["export", str(runs("lora")), "--format", fmt, "--quant", "q9_9", "--output", str(target)])
    assert rc == 2 and err.startswith("error: ") and "--quant q9_9" in err
    assert all(t in err for t in ("f16", "q8_0", "q4_k_m", "q6_k")) and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_gpu_only_quantizer_is_refused_on_cpu(runs, tmp_path):
    target = tmp_path / "q"
    rc, _, err = cli(["quantize", str(runs("lora")), "--method", "torchao-int4-packed", "--output", str(target)])
    assert rc == 2 and err.startswith("error: ") and "needs a CUDA GPU" in err
    assert "naive-absmax-int8-channel" in err  # the CPU methods are listed
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", ["hf", "gguf"])
def test_existing_output_is_kept_without_force(fmt, runs, tmp_path):
    if fmt == "hf":
        target = tmp_path / "hf"
        target.mkdir()
        (target / "keep.txt").write_text("mine")
    else:
        target = tmp_path / "m.gguf"
        target.write_text("mine")
    rc, _, err = cli(["export", str(runs("lora")), "--format", fmt, "--dtype", "fp32", "--output", str(target),
                      "--no-verify"])
    assert rc == 2 and "already exists" in err and "--force" in err and "Traceback" not in err
    assert (target / "keep.txt" if fmt == "hf" else target).read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]
    if fmt == "hf":  # with --force it is replaced, once the new one is complete
        rc, _, err = cli(["export", str(runs("lora")), "--format", "hf", "--dtype", "fp32", "--output", str(target),
                          "--no-verify", "--force"])
        assert rc == 0, err
        assert not (target / "keep.txt").exists() and (target / "config.json").is_file()
        assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_a_failing_conversion_leaves_nothing_behind(runs, tmp_path):
    """llama.cpp's converter refuses the byte-level tiny tokenizer: its own error is shown, exit 2, and the
    staging folder and the temporary HF folder are gone."""
    target = tmp_path / "m.gguf"
    rc, _, err = cli(["export", str(runs("lora")), "--format", "gguf", "--quant", "f16", "--output", str(target)])
    assert rc == 2 and err.startswith("error: llama.cpp failed converting") and "pre-tokenizer" in err
    assert list(tmp_path.iterdir()) == []


# --- 6. serving what was exported --------------------------------------------------------------------------

def answer(engine, prompt="hi", tokens=6):
    from tunelab.infer import DecodingConfig, Request
    from tunelab.infer.engine import generate

    done = generate(engine, [Request(prompt, DecodingConfig(max_new_tokens=tokens))])[0]
    assert done.token_ids and done.finish_reason in ("stop", "length")
    return done


def test_exported_hf_folder_is_served_with_its_system_prompt(runs, exports):
    from transformers import AutoTokenizer

    from tunelab.infer import Request
    from tunelab.infer.load import load_engine

    engine = load_engine(str(exports("lora")), dtype="fp32", quantize=None)
    try:
        assert type(engine).__name__ != "LlamaCppEngine"
        answer(engine)
        run_tokenizer = AutoTokenizer.from_pretrained(str(runs("lora") / "adapter"))
        asked = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi"}]
        want = run_tokenizer.apply_chat_template(asked, tokenize=False, add_generation_prompt=True)
        assert engine.prompt_ids(Request("hi")) == run_tokenizer(want, add_special_tokens=False).input_ids
    finally:
        engine.close()


def test_gguf_file_is_served_by_llama_cpp_without_a_backend_flag(gguf_exports):
    from tunelab.infer import Request
    from tunelab.infer.load import load_engine

    rc, _, err, target = gguf_exports("q8_0")
    assert rc == 0, err
    engine = load_engine(str(target))
    try:
        assert type(engine).__name__ == "LlamaCppEngine"
        answer(engine)
        prompt = engine.tokenizer.decode(engine.prompt_ids(Request("hi")), skip_special_tokens=False)
        assert GGUF_SYSTEM in prompt  # the file's template brings the run's system prompt
    finally:
        engine.close()


def test_quantized_folder_is_served(runs, tmp_path):
    from tunelab.compress.quantize import QuantizeConfig, quantize_source
    from tunelab.infer import Request
    from tunelab.infer.load import load_engine

    target = tmp_path / "int8"
    result = quantize_source(str(runs("lora")), QuantizeConfig(method="naive-absmax-int8-channel", measure=False,
                                                               output=str(target)))
    assert result["output"] == str(target) and result["size_bytes"] < result["base_size_bytes"]
    engine = load_engine(str(target), dtype="fp32", quantize=None)
    try:
        answer(engine)
        assert SYSTEM in engine.tokenizer.decode(engine.prompt_ids(Request("hi")))
    finally:
        engine.close()


def test_run_adapter_engine_adds_the_recorded_system_prompt_unless_the_request_brings_one(runs):
    from tunelab.infer import Request
    from tunelab.infer.load import load_engine

    engine = load_engine(adapters=str(runs("lora")), dtype="fp32", quantize=None)
    try:
        encode = lambda text: engine.tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
        default = engine.prompt_ids(Request("hi"))
        assert contains(default, encode(SYSTEM))
        own = engine.prompt_ids(Request("hi", system="other"))
        assert contains(own, encode("other")) and not contains(own, encode(SYSTEM))
        answer(engine)
    finally:
        engine.close()
