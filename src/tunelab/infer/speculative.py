"""Speculative decoding: a cheap draft proposes several tokens, the target checks them in one pass.

Greedy answers are token for token those of plain decoding: the target keeps a proposed
token only where it would have picked it itself (transformers' assisted generation,
Leviathan et al. 2023). Drafts:

- a smaller model with the same tokenizer (`--draft FOLDER`);
- the target's own first N layers with its final norm and head (`--draft layers:N`), an
  early-exit draft that shares the target's weights and costs no memory;
- `ngram`: prompt lookup (Saxena 2023), which proposes the tokens that followed the last
  few tokens where they already occur in the prompt; strong when answers copy the input.
"""

from __future__ import annotations

from tunelab.errors import ConfigError


def draft_kwargs(draft) -> dict:
    """`model.generate` kwargs for a draft model or "ngram"."""
    if draft == "ngram":
        return {"prompt_lookup_num_tokens": 10}
    return {"assistant_model": draft}


def truncated_draft(model, layers: int):
    """The first `layers` decoder blocks of `model`, with its embeddings, final norm and head.

    The draft shares the target's tensors (nothing is copied).
    """
    import copy

    from transformers import AutoModelForCausalLM

    total = model.config.num_hidden_layers
    if not 1 <= layers < total:
        raise ConfigError(f"draft layers:{layers}: the target has {total} layers; pick 1..{total - 1}")
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = layers
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:layers]
    with _meta_device():
        draft = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    state = {k: v for k, v in model.state_dict().items() if not _layer_beyond(k, layers)}
    draft.load_state_dict(state, strict=False, assign=True)
    buffers = dict(model.named_buffers())
    for name, buffer in list(draft.named_buffers()):  # non-persistent buffers (rotary frequencies) are not in state
        if buffer.is_meta:
            module, _, leaf = name.rpartition(".")
            draft.get_submodule(module).register_buffer(leaf, buffers[name], persistent=False)
    draft.tie_weights()
    draft.generation_config = copy.deepcopy(model.generation_config)
    return draft.eval()


def make_draft(spec: str | None, target, dtype=None):
    """A draft from a CLI spec: None, "ngram", "layers:N", or a model name/folder."""
    if spec in (None, "", "none"):
        return None
    if spec == "ngram":
        return "ngram"
    if spec.startswith("layers:"):
        try:
            return truncated_draft(target, int(spec.split(":", 1)[1]))
        except ValueError:
            raise ConfigError(f"--draft {spec}: write layers:N with N a whole number") from None
    from tunelab.models import load_model

    draft, _ = load_model(spec, dtype=dtype or target.dtype)
    if draft.get_output_embeddings().weight.shape[0] != target.get_output_embeddings().weight.shape[0]:
        raise ConfigError(f"--draft {spec}: its vocabulary differs from the target's; a draft must share the "
                          "tokenizer (or use --draft ngram / layers:N)")
    return draft.to(target.device).eval()


def _layer_beyond(key: str, layers: int) -> bool:
    parts = key.split(".")
    return "layers" in parts and int(parts[parts.index("layers") + 1]) >= layers


class _meta_device:
    """Build modules without allocating weights (they are assigned from the target)."""

    def __enter__(self):
        import torch

        self._ctx = torch.device("meta")
        self._ctx.__enter__()

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)
