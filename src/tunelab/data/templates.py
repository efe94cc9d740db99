"""Chat templates and the end-of-answer check.

A tuned chat model stops answering when it emits a token its generation config treats as
end-of-sequence. If the template ends answers with a token that is not among those (for
example `<|im_end|>` while eos is `</s>`), the model learns to stop with a token nobody
stops on, and rambles. `answer_end_ids` detects this and `eos_ids_for_generation` fixes it.
"""

from __future__ import annotations

import logging

from tunelab.errors import DataError

log = logging.getLogger(__name__)

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + END + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def ensure_chat_template(tokenizer) -> bool:
    """Give `tokenizer` a ChatML template if it has none. Returns True when one was added.

    The turn end is `<|im_end|>` when the vocabulary has that token, else the EOS token,
    so every answer still ends with a token generation stops on.
    """
    if tokenizer.chat_template:
        return False
    vocab = tokenizer.get_vocab()
    end = "<|im_end|>" if "<|im_end|>" in vocab else tokenizer.eos_token
    if end is None:
        raise DataError("the tokenizer has neither a chat template nor an EOS token; set one before training")
    tokenizer.chat_template = CHATML_TEMPLATE.replace("END", repr(end))
    return True


def answer_end_ids(tokenizer) -> list[int]:
    """Token ids the chat template puts right after an answer (e.g. [<|im_end|>]); [] if none.

    Found by rendering a probe conversation and reading the special tokens that follow
    the answer text.
    """
    probe = "ANSWER_PROBE_7f3"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": probe}], tokenize=False
    )
    tail = text[text.rindex(probe) + len(probe):]
    ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids)
    out = []
    for i in ids:
        if i not in special:
            break
        out.append(i)
    return out[:1]


def eos_ids_for_generation(tokenizer, model_eos: int | list[int] | None) -> list[int]:
    """All ids generation must stop on: the model's EOS plus the template's end-of-answer token.

    Logs a warning when the two differ (the mismatch that makes tuned models ramble);
    the returned list, saved in generation_config.json, stops generation correctly.
    """
    eos = [model_eos] if isinstance(model_eos, int) else list(model_eos or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos:
        eos.append(tokenizer.eos_token_id)
    for end in answer_end_ids(tokenizer):
        if end not in eos:
            log.warning(
                "chat template ends answers with %r but the model's EOS is %r: adding it to the stop tokens "
                "so the tuned model stops where it was taught to", tokenizer.convert_ids_to_tokens(end),
                tokenizer.convert_ids_to_tokens(eos[0]) if eos else None,
            )
            eos.append(end)
    return eos
