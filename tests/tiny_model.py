"""A tiny random-weight Llama and a locally trained tokenizer, for fast engine tests.

Nothing comes from the hub: the tokenizer is a byte-level BPE trained here on
generated text, so any string (any UTF-8 byte) can be encoded, and the model
is a 2-layer Llama with random weights. Its output is gibberish, which is fine:
the tests check the decode loop, not the language.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_WORDS = ("the quick brown fox jumps over a lazy dog while Paris is the capital of France "
          "and every worker streams tokens to the network, héllo wörld café naïve 東京 🙂").split()


def _corpus(lines: int = 300) -> list[str]:
    """Deterministic pseudo-sentences: enough repetition for BPE to learn some merges."""
    cycle = itertools.cycle(_WORDS)
    return [" ".join(next(cycle) for _ in range(5 + i % 7)) + "." for i in range(lines)]


def build_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", chat_template=CHATML_TEMPLATE)


def build_tiny_model(path: Path, seed: int = 0, context: int = 512) -> Path:
    """Write a tiny LlamaForCausalLM and its tokenizer into ``path``; returns ``path``."""
    path = Path(path)
    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
        # No EOS in the model config: random weights could emit it at any step,
        # and the tests need generations that run to max_tokens.
        bos_token_id=None, eos_token_id=None)
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG alone
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        # A wider init than the default 0.02 so greedy picks vary from step to step.
        for p in model.parameters():
            if p.dim() > 1:
                torch.nn.init.normal_(p, std=0.5)
    model.generation_config.eos_token_id = None
    model.generation_config.bos_token_id = None
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
