"""Tiny, local, deterministic models and data: for tests, the quickstart and benchmarks.

Nothing here touches a hub. Everything is built from a fixed seed in a few seconds:

    from llmtrain.trainer import tiny
    tiny.write_corpus(d / "corpus.txt")                 # synthetic English-like text
    tok = tiny.build_tokenizer(d / "tokenizer", d / "corpus.txt")   # byte-level BPE + chat template
    tiny.train_tokenizer(out, lines, vocab_size=640, special_tokens=[...], ...)  # any other BPE
    tiny.build_model(d / "model", d / "tokenizer")      # 2-layer Llama, hidden 64, random init
    tiny.write_instructions(d / "sft.jsonl")            # prompt/completion pairs
    tiny.write_chats(d / "chat.jsonl")                  # {"messages": [...]} conversations

The chat template marks assistant turns with `{% generation %}`, so
`apply_chat_template(..., return_assistant_tokens_mask=True)` works with it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>"]

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}<|assistant|>"
    "{% generation %}{{ m['content'] }}{{ eos_token }}{% endgeneration %}"
    "{% else %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

ARCHITECTURE: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "tie_word_embeddings": True,
}

_SUBJECTS = ["the cat", "a dog", "the bird", "my friend", "the old man", "a small child"]
_VERBS = ["sees", "likes", "finds", "carries", "watches", "follows"]
_OBJECTS = ["the ball", "a red box", "the green tree", "some bread", "the river", "a book"]
_PLACES = ["in the park", "at home", "near the house", "by the sea", "on the hill"]
_NAMES = ["ann", "bob", "cid", "dee", "eve", "fay", "gus", "hal"]


def sentence(rng: random.Random) -> str:
    return (
        f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} "
        f"{rng.choice(_PLACES)}."
    )


def write_corpus(path: Path, lines: int = 2000, seed: int = 0) -> Path:
    """Plain text, one short paragraph per line (format `text`)."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(
        " ".join(sentence(rng) for _ in range(rng.randint(1, 4))) for _ in range(lines)
    )
    path.write_text(text + "\n")
    return path


def _qa(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 20), rng.randint(0, 20)
    kind = rng.randrange(3)
    if kind == 0:
        return f"what is {a} plus {b}?", f"{a} plus {b} is {a + b}."
    if kind == 1:
        name = rng.choice(_NAMES)
        return f"say hello to {name}.", f"hello {name}, nice to meet you!"
    s = sentence(rng)
    return f"repeat: {s}", s


def write_instructions(path: Path, n: int = 400, seed: int = 1) -> Path:
    """JSON lines of {"prompt", "completion"} (format `prompt-completion`)."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for _ in range(n):
            q, a = _qa(rng)
            f.write(json.dumps({"prompt": f"question: {q}\nanswer: ", "completion": a}) + "\n")
    return path


def write_chats(path: Path, n: int = 300, seed: int = 2) -> Path:
    """JSON lines of {"messages": [...]} with a system turn and 1-2 exchanges."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for _ in range(n):
            msgs = [{"role": "system", "content": "you are a helpful bot."}]
            for _ in range(rng.randint(1, 2)):
                q, a = _qa(rng)
                msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            f.write(json.dumps({"messages": msgs}) + "\n")
    return path


def train_tokenizer(
    out: Path,
    texts: Iterable[str],
    *,
    vocab_size: int,
    special_tokens: Sequence[str],
    bos: str,
    eos: str,
    pad: str,
    chat_template: str | None = None,
    model_max_length: int = ARCHITECTURE["max_position_embeddings"],
) -> Any:
    """Train a byte-level BPE tokenizer on `texts` and save it to `out` as a transformers
    fast tokenizer; the special tokens other than bos/eos/pad become additional ones."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    extra = [t for t in special_tokens if t not in (bos, eos, pad)]
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        model_max_length=model_max_length,
        **({"additional_special_tokens": extra} if extra else {}),
    )
    if chat_template is not None:
        tok.chat_template = chat_template
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(out))
    return tok


def build_tokenizer(
    out: Path, corpus: Path | None = None, vocab_size: int = 400, chat_template: str | None = None
) -> Any:
    """The tests' tokenizer: BPE on `corpus` (a fresh one when None) and some Q/A text, with
    CHAT_TEMPLATE unless another `chat_template` is given; saved to `out`."""
    if corpus is None:
        corpus = write_corpus(out / "_corpus.txt")
    texts = corpus.read_text().splitlines()
    rng = random.Random(3)
    texts += [" ".join(_qa(rng)) for _ in range(500)]  # digits and chat words get merges too
    return train_tokenizer(
        out,
        texts,
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        bos="<|bos|>",
        eos="<|eos|>",
        pad="<|pad|>",
        chat_template=chat_template or CHAT_TEMPLATE,
    )


def build_model(out: Path, tokenizer_dir: Path, seed: int = 0, **overrides: Any) -> Path:
    """A randomly initialised causal LM (ARCHITECTURE + overrides) saved to `out`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(seed)
    config = AutoConfig.for_model(**{**architecture_for(tok), **overrides})
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def architecture_for(tok: Any) -> dict[str, Any]:
    """ARCHITECTURE with the vocabulary and special-token ids of `tok`."""
    return {
        **ARCHITECTURE,
        "vocab_size": len(tok),
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
