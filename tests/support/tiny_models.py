"""Tiny random-weight models with tokenizers built here, and toy data, for tests.

Nothing is downloaded: a WordLevel tokenizer over the toy vocabulary, wrapped in
PreTrainedTokenizerFast, saved next to a 2-layer, 32-wide BERT (masked-LM head) or
GPT-2 (causal-LM head) with random weights. Shared by the trainer tests and the
operator's end-to-end test.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

POSITIVE = ["good", "great", "excellent", "lovely", "superb", "wonderful", "fine", "happy"]
NEGATIVE = ["bad", "awful", "terrible", "poor", "boring", "dull", "sad", "ugly"]
FILLER = ["the", "movie", "film", "plot", "was", "really", "and", "acting", "story", "very"]
TOPICS = {
    "sports": ["goal", "match", "team", "score", "coach"],
    "politics": ["vote", "party", "senate", "law", "election"],
    "science": ["atom", "cell", "theory", "lab", "energy"],
    "music": ["song", "band", "guitar", "album", "melody"],
    "food": ["pizza", "bread", "soup", "cheese", "salad"],
}
DOMAIN = [
    "the court held that the contract was void",
    "the plaintiff filed a motion to dismiss the claim",
    "the defendant appealed the judgment of the court",
    "the contract was signed by both parties in good faith",
]
QA = [
    ("what color is the sky ?", "the sky is blue ."),
    ("what color is the grass ?", "the grass is green ."),
    ("what color is the sun ?", "the sun is yellow ."),
    ("what color is the snow ?", "the snow is white ."),
]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<eos>"]


def sentiment_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        positive = i % 2 == 0
        words = rng.sample(FILLER, 3) + rng.sample(POSITIVE if positive else NEGATIVE, 2)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": "pos" if positive else "neg"})
    return rows


def topic_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    names = sorted(TOPICS)
    rows = []
    for i in range(n):
        topic = names[i % len(names)]
        words = rng.sample(TOPICS[topic], 3) + rng.sample(FILLER, 2)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": topic})
    return rows


def all_words() -> list[str]:
    words = set(POSITIVE + NEGATIVE + FILLER)
    for t in TOPICS.values():
        words |= set(t)
    for line in DOMAIN:
        words |= set(line.split())
    for q, a in QA:
        words |= set(q.split()) | set(a.split())
    return sorted(words)


def build_tokenizer(directory: Path, kind: str, *, reverse: bool = False) -> Any:
    """A word-level tokenizer over all_words(); `reverse` numbers the same words in the
    opposite order (a vocabulary incompatible with the default one)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = all_words()[::-1] if reverse else all_words()
    vocab = {tok: i for i, tok in enumerate(SPECIALS + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if kind == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
        )
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok,
            unk_token="[UNK]",
            pad_token="[PAD]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
        )
    else:  # gpt2-style: no pad token of its own (the trainer falls back to eos)
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="<eos>")
    fast.save_pretrained(directory)
    return fast


def tiny_bert(directory: Path, *, reverse_vocab: bool = False, seed: int = 0) -> Path:
    """A tiny random BERT with a masked-LM head (classification adds its own head)."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    tokenizer = build_tokenizer(directory, "bert", reverse=reverse_vocab)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    BertForMaskedLM(config).save_pretrained(directory)
    return directory


def tiny_gpt2(directory: Path) -> Path:
    """A tiny random GPT-2 with a causal-LM head."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = build_tokenizer(directory, "gpt2")
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=64,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(directory)
    return directory


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write rows as csv/tsv/jsonl by the path's extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        sep = "\t" if path.suffix == ".tsv" else ","
        keys = list(rows[0])
        lines = [sep.join(keys)] + [sep.join(str(r[k]) for k in keys) for r in rows]
        path.write_text("\n".join(lines) + "\n")
    return path
