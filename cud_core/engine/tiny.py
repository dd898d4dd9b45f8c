"""Tiny random models of every supported family, built in-process (no files, no network).

Used by the tests and for quick demos of the engine: `tiny_model("llama")` returns a LoadedModel
with a few-layer random model and a small byte-level BPE tokenizer trained on the spot.
"""
from __future__ import annotations

import torch

from cud_core.engine.models import LoadedModel, model_info, prepare_tokenizer

FAMILIES = ("llama", "qwen2", "mistral", "gpt2", "gpt_neox")

_CORPUS = [
    "Question: What is the capital of France?\nAnswer: The capital of France is Paris.",
    "The quick brown fox jumps over the lazy dog. Water boils at 100 degrees.",
    "Shakespeare wrote Hamlet. Jupiter is the largest planet. Gold has the symbol Au.",
    "Alice was born in Lisbon in 1961 and writes mystery novels about the sea.",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,;:!?'\"-()",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}<|end|>\n{% else %}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def tiny_tokenizer(chat: bool = False, vocab_size: int = 384):
    """A byte-level BPE tokenizer trained in milliseconds; `chat=True` adds a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|pad|>", "<|end|>", "<|user|>", "<|assistant|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS * 4, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>",
                                 bos_token=None, unk_token=None)
    hf.chat_template = CHAT_TEMPLATE if chat else None
    prepare_tokenizer(hf)
    return hf


def tiny_config(family: str, vocab_size: int, n_layers: int = 2, d_model: int = 32, n_heads: int = 4,
                n_kv_heads: int = 2, context: int = 128):
    import transformers as tf

    common = dict(vocab_size=vocab_size, bos_token_id=None, eos_token_id=0, pad_token_id=1)
    if family in ("llama", "qwen2", "mistral"):
        cls = {"llama": tf.LlamaConfig, "qwen2": tf.Qwen2Config, "mistral": tf.MistralConfig}[family]
        extra = {"attention_bias": True} if family == "qwen2" else {}
        return cls(hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=n_layers,
                   num_attention_heads=n_heads, num_key_value_heads=n_kv_heads,
                   max_position_embeddings=context, tie_word_embeddings=False, **extra, **common)
    if family == "gpt2":
        return tf.GPT2Config(n_embd=d_model, n_layer=n_layers, n_head=n_heads, n_positions=context,
                             resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common)
    if family == "gpt_neox":
        return tf.GPTNeoXConfig(hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=n_layers,
                                num_attention_heads=n_heads, max_position_embeddings=context,
                                use_parallel_residual=True, rotary_pct=0.5, hidden_dropout=0.0,
                                attention_dropout=0.0, **common)
    raise ValueError(f"unknown tiny family {family!r}; choose one of {', '.join(FAMILIES)}")


def tiny_model(family: str = "llama", seed: int = 0, chat: bool = False, **config_overrides) -> LoadedModel:
    """A random tiny model of `family` with its tokenizer, float32 on CPU, eval mode."""
    from transformers import AutoModelForCausalLM

    tokenizer = tiny_tokenizer(chat=chat)
    config = tiny_config(family, vocab_size=len(tokenizer), **config_overrides)
    config.name_or_path = f"tiny-{family}"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager").eval()
    return LoadedModel(model, tokenizer, f"tiny-{family}", "in-process", torch.device("cpu"),
                       torch.float32, model_info(model))
