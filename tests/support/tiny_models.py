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


CHAT_SPECIALS = ["<|im_start|>", "<|im_end|>"]
CHAT_ROLES = ["system", "user", "assistant"]
# A ChatML template with {% generation %} markers around the assistant's text and its
# end-of-turn token (what an instruct model ships, as far as the trainer can tell).
CHAT_TEMPLATE = (
    "{%- for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}"
    "{%- if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}<|im_end|>"
    "{% endgeneration %}{%- else %}{{ m['content'] }}<|im_end|>{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# The same layout without markers: assistant-only loss cannot find the assistant's tokens.
CHAT_TEMPLATE_NO_MARKERS = CHAT_TEMPLATE.replace("{% generation %}", "").replace(
    "{% endgeneration %}", ""
)


def tiny_llama(
    directory: Path, *, hidden: int = 32, chat_template: str | None = CHAT_TEMPLATE
) -> Path:
    """A tiny random Llama (causal LM) whose word-level tokenizer knows ChatML's
    <|im_start|>/<|im_end|> and the role names; `chat_template` is the model's own
    (None: a base model without one). QLoRA on a CPU needs hidden >= 256."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = sorted(set(all_words()) | set(CHAT_ROLES))
    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHAT_SPECIALS + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        eos_token="<|im_end|>",
        additional_special_tokens=CHAT_SPECIALS,
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    fast.save_pretrained(directory)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=fast.pad_token_id,
        eos_token_id=fast.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


def chat_rows(n: int) -> list[dict[str, Any]]:
    """Two-turn conversations (messages format) over the QA pairs."""
    rows = []
    for i in range(n):
        (q1, a1), (q2, a2) = QA[i % len(QA)], QA[(i + 1) % len(QA)]
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": q1},
                    {"role": "assistant", "content": a1},
                    {"role": "user", "content": q2},
                    {"role": "assistant", "content": a2},
                ]
            }
        )
    return rows


def preference_rows(n: int) -> list[dict[str, Any]]:
    """prompt / chosen / rejected: the right colour against a wrong one."""
    rows = []
    for i in range(n):
        q, a = QA[i % len(QA)]
        wrong = QA[(i + 1) % len(QA)][1]
        rows.append({"prompt": q, "chosen": a, "rejected": wrong})
    return rows
