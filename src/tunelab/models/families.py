"""Architecture families and task heads: which Auto class, which blocks, which head.

Three families: decoder-only (Llama, SmolLM2, GPT-2 ...), encoder-only (BERT, MiniLM ...)
and encoder-decoder (T5 ...). Three tasks: causal_lm (next token), classify (a sequence
classification head) and seq2seq (encoder input -> decoder output).
"""

from __future__ import annotations

from torch import nn

from tunelab.errors import ConfigError

PEFT_TASK_TYPES = {"causal_lm": "CAUSAL_LM", "classify": "SEQ_CLS", "seq2seq": "SEQ_2_SEQ_LM"}
HEAD_NAMES = ("score", "classifier", "classification_head")  # sequence-classification heads across families


def family(config) -> str:
    """'encoder-decoder', 'encoder' or 'decoder' for a transformers config."""
    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder"
    if getattr(config, "model_type", "") in ENCODER_TYPES:
        return "encoder"
    return "decoder"


ENCODER_TYPES = {"bert", "roberta", "xlm-roberta", "distilbert", "deberta", "deberta-v2", "electra", "albert",
                 "mpnet", "modernbert", "camembert", "ernie"}


def auto_class(task: str):
    """The transformers Auto class that builds a model with `task`'s head."""
    import transformers

    names = {"causal_lm": "AutoModelForCausalLM", "classify": "AutoModelForSequenceClassification",
             "seq2seq": "AutoModelForSeq2SeqLM"}
    return getattr(transformers, names[task])


def task_of(model) -> str:
    """The task of a loaded model (peft-wrapped or not), from its class name."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cls = type(base).__name__
    if cls.endswith("ForSequenceClassification"):
        return "classify"
    if getattr(base.config, "is_encoder_decoder", False):
        return "seq2seq"
    return "causal_lm"


def peft_task_type(model) -> str:
    """peft's TaskType string for `model` (it decides which head peft keeps trainable)."""
    return PEFT_TASK_TYPES[task_of(model)]


def classifier_head(model) -> nn.Module | None:
    """The sequence-classification head of `model`, or None for other heads."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for name in HEAD_NAMES:
        head = getattr(base, name, None)
        if isinstance(head, nn.Module):
            return head
    return None


def transformer_blocks(model) -> nn.ModuleList:
    """The model's list of transformer blocks (the ModuleList as long as num_hidden_layers).

    Encoder-decoders have two such lists; this returns the decoder's (the last found).
    """
    config = model.config
    n = getattr(config, "num_hidden_layers", None) or getattr(config, "num_layers", None)
    found = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) == n]
    if not found:
        raise ConfigError(f"cannot find the {n} transformer blocks of {type(model).__name__}")
    return found[-1]


def all_block_lists(model) -> list[nn.ModuleList]:
    """Every list of transformer blocks (one for decoders and encoders, two for
    encoder-decoders): ModuleLists as long as a configured layer count, outermost only
    (a T5 block keeps its sub-layers in a ModuleList of its own)."""
    config = model.config
    sizes = {getattr(config, k, None) for k in ("num_hidden_layers", "num_layers", "num_decoder_layers")} - {None}
    named = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) in sizes]
    return [m for n, m in named if not any(n.startswith(outer + ".") for outer, _ in named)]
