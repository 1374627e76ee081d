"""A tiny random Llama with a BPE tokenizer trained on the built-in corpus: nothing downloads."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def train_tokenizer(vocab_size: int) -> Any:
    """A byte-level BPE tokenizer trained on the built-in corpus (also bench/scale.py's)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from workers.models.datasets import builtin_text

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([builtin_text("pydoc-topics")], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>"
    )


def build_tiny_model(
    target: Path, *, vocab_size: int = 512, seed: int = 0, layers: int = 2
) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    fast = train_tokenizer(vocab_size)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=fast.vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        eos_token_id=0,
        bos_token_id=0,
    )
    model = LlamaForCausalLM(config)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    fast.save_pretrained(target)
    return target


def train_tiny_teacher(source: Path, target: Path, *, steps: int = 200, seed: int = 0) -> Path:
    """The tiny model after a short plain language-model training on the calibration share of
    the built-in corpus: a teacher with real preferences (a random one predicts nearly
    uniformly, leaving a student nothing to learn)."""
    import torch
    from transformers import AutoTokenizer

    from workers.formats.loader import load_pretrained
    from workers.methods.distillation.data import pack
    from workers.models.datasets import builtin_text, split_tokens

    tokenizer = AutoTokenizer.from_pretrained(source)
    pool, _ = split_tokens(tokenizer(builtin_text("pydoc-topics"))["input_ids"])
    length, batch = 64, 16
    sequences = pack(pool, length)
    torch.manual_seed(seed)
    model = load_pretrained(source).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        ids = sequences[torch.randint(len(sequences), (batch,))]
        loss = model(ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval().save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def teacher_text(model_dir: Path, eval_tokens: int) -> dict[str, Any]:
    """The distillation tests' text: the model's tokenizer, 8 calibration samples of 64 tokens
    and `eval_tokens` held-out tokens of the built-in corpus (disjoint shares)."""
    from transformers import AutoTokenizer

    from workers.models.datasets import builtin_text, split_tokens

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    calibration, held_out = split_tokens(tokenizer(builtin_text("pydoc-topics"))["input_ids"])
    return {
        "tokenizer": tokenizer,
        "calibration": [calibration[i : i + 64] for i in range(0, 64 * 8, 64)],
        "eval": held_out[:eval_tokens],
    }


def build_tiny_smollm_tokenized(target: Path, *, hidden: int = 256, seed: int = 0) -> Path:
    """A tiny random Llama with SmolLM2's tokenizer (read from the built-in GGUF file), for
    what needs a tokenizer llama.cpp's converter recognizes (it identifies a BPE pre-tokenizer
    by hashing how it splits a fixed text, so a freshly trained one is refused). Rows of 256
    let the k-quants apply."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from workers.models.sources import builtin_gguf

    gguf = builtin_gguf("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    model = LlamaForCausalLM(config)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target
