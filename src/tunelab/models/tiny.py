"""Tiny random models built in code, for tests that must run in seconds offline.

Same architecture families as the real ones (Llama-style decoder by default; BERT
encoder; T5 encoder-decoder), a few layers, and either a 260-token byte-level tokenizer with a ChatML template or the real
tokenizer of a given folder.
"""

from __future__ import annotations

from pathlib import Path

import torch

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def byte_tokenizer():
    """A byte-level BPE tokenizer with no merges: 256 byte tokens + ChatML specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {s: i for i, s in enumerate(specials)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    tok.add_special_tokens({"additional_special_tokens": specials})
    tok.chat_template = CHATML
    return tok


def tiny_llama(tokenizer=None, layers: int = 2, hidden: int = 64, seed: int = 0, init_std: float = 0.02):
    """(model, tokenizer): a randomly initialised Llama-style causal LM.

    A larger `init_std` gives the frozen head room to express confident predictions,
    so methods that leave it frozen can still fit a sentence in a few steps.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or byte_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=init_std,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config), tokenizer


def tiny_bert(tokenizer=None, layers: int = 2, hidden: int = 32, seed: int = 0):
    """(model, tokenizer): a randomly initialised BERT-family encoder (masked-LM head)."""
    from transformers import BertConfig, BertForMaskedLM

    tokenizer = tokenizer or byte_tokenizer()
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=4, intermediate_size=hidden * 2, max_position_embeddings=512,
                        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    return BertForMaskedLM(config), tokenizer


def tiny_t5(tokenizer=None, layers: int = 2, hidden: int = 32, seed: int = 0):
    """(model, tokenizer): a randomly initialised T5-family encoder-decoder."""
    from transformers import T5Config, T5ForConditionalGeneration

    tokenizer = tokenizer or byte_tokenizer()
    config = T5Config(vocab_size=len(tokenizer), d_model=hidden, d_ff=hidden * 2, d_kv=hidden // 4, num_layers=layers,
                      num_decoder_layers=layers, num_heads=4, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    return T5ForConditionalGeneration(config), tokenizer


BUILDERS = {"llama": tiny_llama, "bert": tiny_bert, "t5": tiny_t5}


def save_tiny(folder: str | Path, family: str = "llama", **kwargs) -> Path:
    """Write a tiny model (family llama, bert or t5) + tokenizer as a local HF folder and return it."""
    folder = Path(folder)
    model, tokenizer = BUILDERS[family](**kwargs)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
