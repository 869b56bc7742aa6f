"""Chat and instruction SFT (causal-lm with a chat dataset.format): every format becomes
messages, rendered by the chat template, with a loss mask (assistant / completion / all).

The template gate (`check_data`) runs on the training rows before any step: the mask is
not empty, every trained span ends on the end-of-turn token, and the conversation
rendered for generation (`add_generation_prompt`) is a prefix of the one trained on.
A template that fails is refused with `ChatTemplateError` (phase Failed, reason
ChatTemplate). The tokenisation is transformers' `apply_chat_template(...,
return_assistant_tokens_mask=True)`, as TRL's SFTTrainer does it; the labels follow
TRL's rule (a token is trained when every applicable mask says so).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import datasets
from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, PreTrainedTokenizerBase

from finetune_api.models import DataFormat, Task
from finetune_trainer import evaluation
from finetune_trainer.data import LENGTH_COLUMN, Table
from finetune_trainer.errors import ChatTemplateError, DataError
from finetune_trainer.tasks.recipe import Recipe

if TYPE_CHECKING:
    from finetune_trainer.runstate import RunState

BATCH = 8
GATE_ROWS = 64  # training rows the gate renders
LOSS_TOKENS = "loss_tokens"
TEMPLATE_FILE = "chat_template.jinja"

# ChatML with {% generation %} markers around what the assistant writes (its end-of-turn
# token included, so the model learns to stop).
CHATML = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}"
    "{%- else %}{{- message['content'] + '<|im_end|>' + '\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "system": "system",
    "tool": "tool",
    "function": "tool",
    "observation": "tool",
}
COLUMNS: dict[DataFormat, tuple[str, ...]] = {
    DataFormat.messages: ("messages",),
    DataFormat.prompt_completion: ("prompt", "completion"),
    DataFormat.alpaca: ("instruction", "output"),
    DataFormat.sharegpt: ("conversations",),
}
DEFAULT_LOSS = {
    DataFormat.messages: "assistant",
    DataFormat.sharegpt: "assistant",
    DataFormat.prompt_completion: "completion",
    DataFormat.alpaca: "completion",
}


def builtin_templates() -> dict[str, str]:
    """chatml, and TRL's training templates (with generation markers) by family name."""
    from trl import chat_template_utils as trl_templates

    found = {
        name.removesuffix("_training_chat_template"): value
        for name, value in vars(trl_templates).items()
        if name.endswith("_training_chat_template") and isinstance(value, str)
    }
    return {"chatml": CHATML, **dict(sorted(found.items()))}


def to_messages(row: dict[str, Any], fmt: DataFormat) -> list[dict[str, Any]]:
    """One row of any chat format as a list of {role, content} messages."""
    if fmt is DataFormat.messages:
        return [dict(m) for m in row["messages"]]
    if fmt is DataFormat.sharegpt:
        return [
            {
                "role": SHAREGPT_ROLES.get(str(m.get("from")), str(m.get("from"))),
                "content": m["value"],
            }
            for m in row["conversations"]
        ]
    if fmt is DataFormat.alpaca:
        extra = row.get("input")
        prompt = str(row["instruction"]) + (f"\n\n{extra}" if extra else "")
        return [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": str(row["output"])},
        ]
    prompt, completion = row["prompt"], row["completion"]
    first = prompt if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]
    rest = (
        completion
        if isinstance(completion, list)
        else [{"role": "assistant", "content": str(completion)}]
    )
    return [*map(dict, first), *map(dict, rest)]


class ChatSft(Recipe):
    task = Task.causal_lm
    auto_class = AutoModelForCausalLM
    peft_task_type = "CAUSAL_LM"
    causal_lm = True
    packs = True
    kind = "chat SFT"

    def __init__(self, spec: Any) -> None:
        super().__init__(spec)
        self.format = spec.dataset.format
        self.loss = spec.loss or DEFAULT_LOSS[self.format]
        self.template: str | None = None  # set by check_tokenizer
        self.added_tokens: list[str] = []

    def describe(self) -> str:
        return f"causal-lm chat SFT ({self.format.value}, loss {self.loss})"

    # ---- data ----------------------------------------------------------------------

    def columns(self) -> list[tuple[str, str]]:
        return [(c, f"dataset.format {self.format.value}: column") for c in COLUMNS[self.format]]

    def texts(self, table: Table) -> list[str]:
        return [
            " ".join(str(m.get("content", "")) for m in to_messages(row, self.format))
            for row in table.data
        ]

    def tokenize(
        self, table: Table, tokenizer: PreTrainedTokenizerBase, max_length: int
    ) -> datasets.Dataset:
        template, fmt, loss = self._template(), self.format, self.loss

        def encode(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
            out: dict[str, list[Any]] = {
                "input_ids": [],
                "attention_mask": [],
                "labels": [],
                LENGTH_COLUMN: [],
                LOSS_TOKENS: [],
            }
            for i in range(len(next(iter(batch.values())))):
                row = {k: v[i] for k, v in batch.items()}
                ids, labels = encode_row(tokenizer, template, to_messages(row, fmt), loss, row)
                ids, labels = ids[:max_length], labels[:max_length]
                out["input_ids"].append(ids)
                out["attention_mask"].append([1] * len(ids))
                out["labels"].append(labels)
                out[LENGTH_COLUMN].append(len(ids))
                out[LOSS_TOKENS].append(sum(1 for t in labels[1:] if t != -100))
            return out

        try:
            data = table.data.map(
                encode, batched=True, remove_columns=table.data.column_names, desc="Tokenizing"
            )
        except (KeyError, TypeError, AttributeError) as err:
            raise DataError(
                f"{table.where}: a row is not in dataset.format {fmt.value} ({err})"
            ) from None
        return data.filter(lambda n: n > 0, input_columns=LENGTH_COLUMN, desc="Dropping empty")

    def data_metrics(self, train_ds: datasets.Dataset) -> dict[str, float]:
        """lossTokens / totalTokens: the training tokens that count in the loss, and all."""
        return {
            "lossTokens": float(sum(train_ds[LOSS_TOKENS])),
            "totalTokens": float(sum(train_ds[LENGTH_COLUMN])),
        }

    def check_data(
        self, table: Table, train_ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase
    ) -> None:
        """The template gate, on the training rows (module docstring)."""
        name = self.template_name()
        if sum(train_ds[LOSS_TOKENS]) == 0:
            raise ChatTemplateError(
                f"chat template {name}: the loss mask is empty on {table.where} (loss "
                f"{self.loss}: no token would be trained)"
            )
        special = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
        rows = train_ds.select(range(min(len(train_ds), GATE_ROWS)))
        if self.loss != "all":
            for i, (ids, labels) in enumerate(zip(rows["input_ids"], rows["labels"], strict=True)):
                for end in _span_ends(labels):
                    if ids[end] not in special and end < len(ids) - 1:
                        raise ChatTemplateError(
                            f"chat template {name}: the end-of-turn token is not trained "
                            f"(row {i + 1} of {table.where}: the trained span ends on "
                            f"{tokenizer.decode([ids[end]])!r}, not an end-of-turn token); "
                            "put the end-of-turn token inside {% generation %}"
                        )
        template = self._template()
        for i, row in enumerate(table.data.select(range(min(len(table.data), GATE_ROWS)))):
            messages = to_messages(row, self.format)
            if not messages or messages[-1].get("role") != "assistant":
                continue
            full = _render(tokenizer, template, messages, row, generation=False)
            prompt = _render(tokenizer, template, messages[:-1], row, generation=True)
            if not full.startswith(prompt):
                raise ChatTemplateError(
                    f"chat template {name}: rendering row {i + 1} of {table.where} for "
                    "generation (add_generation_prompt) is not a prefix of the conversation "
                    f"it trains on: the prompt ends {prompt[-40:]!r}, the conversation has "
                    f"{full[_shared_prefix(prompt, full) :][:40]!r} there"
                )

    # ---- model ---------------------------------------------------------------------

    def template_name(self) -> str:
        chosen = self.spec.chat_template
        if chosen is None:
            return f"of model {self.spec.model.name or self.spec.model.path}"
        return repr(chosen) if chosen in builtin_templates() else "spec.chatTemplate (inline)"

    def check_tokenizer(self, tokenizer: PreTrainedTokenizerBase, location: str) -> None:
        """Resolve the template (the model's, or spec.chatTemplate) and check its markers."""
        from trl.chat_template_utils import has_generation_markers

        chosen = self.spec.chat_template
        builtins = builtin_templates()
        if chosen is not None and chosen in builtins:
            template = builtins[chosen]
        elif chosen is not None:
            if "{{" not in chosen and "{%" not in chosen:
                raise ChatTemplateError(
                    f"spec.chatTemplate {chosen!r}: neither a Jinja template nor a builtin "
                    f"({', '.join(builtins)})"
                )
            template = chosen
        elif tokenizer.chat_template:
            template = str(tokenizer.chat_template)
        else:
            raise ChatTemplateError(
                f"model {location} has no chat template: set spec.chatTemplate to a Jinja "
                "template or a builtin (chatml)"
            )
        if self.loss == "assistant" and not has_generation_markers(template):
            raise ChatTemplateError(
                f"chat template {self.template_name()} has no {{% generation %}} markers, which "
                "loss assistant needs to find the assistant's tokens; use a template with "
                "them (spec.chatTemplate: chatml, or a family name such as qwen2_5 or llama3), "
                "or loss completion"
            )
        if template is CHATML:
            missing = [t for t in CHATML_TOKENS if t not in tokenizer.get_vocab()]
            if missing:
                tokenizer.add_special_tokens({"additional_special_tokens": missing})
                self.added_tokens = missing
        tokenizer.chat_template = template
        self.template = template

    def prepare_model(self, model: Any, tokenizer: PreTrainedTokenizerBase) -> None:
        """New template tokens (chatml on a model without them) get embedding rows."""
        if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(len(tokenizer))

    def lora_trainable_tokens(self, tokenizer: PreTrainedTokenizerBase) -> list[int]:
        """Token ids whose embeddings LoRA trains too (ones the template added)."""
        ids: Any = tokenizer.convert_tokens_to_ids(self.added_tokens)
        return [int(i) for i in ids]

    def _template(self) -> str:
        assert self.template is not None, "check_tokenizer resolves the template first"
        return self.template

    # ---- training and judging ------------------------------------------------------

    def collator(self, tokenizer: PreTrainedTokenizerBase) -> Any:
        return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)

    def save(self, state: RunState) -> None:
        path = state.output_dir / TEMPLATE_FILE
        path.write_text(self._template())
        state.artifacts["chatTemplate"] = str(path)

    def run_info(self) -> dict[str, Any]:
        return {"chatTemplate": TEMPLATE_FILE, "loss": self.loss}

    @classmethod
    def predict(
        cls,
        info: dict[str, Any],
        model: Any,
        tokenizer: PreTrainedTokenizerBase,
        texts: Sequence[str],
        max_new_tokens: int,
    ) -> list[str]:
        """Each text as one user turn, rendered with the run's template for generation."""
        prompts = [
            str(
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True
                )
            )
            for t in texts
        ]
        # add_special_tokens False: the template wrote them
        return evaluation.continuations(
            info, model, tokenizer, prompts, max_new_tokens, add_special_tokens=False
        )


def encode_row(
    tokenizer: PreTrainedTokenizerBase,
    template: str,
    messages: list[dict[str, Any]],
    loss: str,
    row: dict[str, Any],
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one conversation; labels -100 where the loss mode masks."""
    tools = _tools(row)
    out: Any = tokenizer.apply_chat_template(
        messages,
        tools=tools,
        chat_template=template,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=loss == "assistant",
    )
    ids = [int(t) for t in out["input_ids"]]
    if loss == "all":
        return ids, list(ids)
    if loss == "assistant":
        mask = list(out["assistant_masks"])
        return ids, [t if m else -100 for t, m in zip(ids, mask, strict=True)]
    # completion: what follows the prompt rendered for generation (TRL's common prefix)
    prompt: Any = tokenizer.apply_chat_template(
        messages[:-1],
        tools=tools,
        chat_template=template,
        tokenize=True,
        return_dict=True,
        add_generation_prompt=True,
    )
    start = _shared_prefix(prompt["input_ids"], ids)
    return ids, [-100] * start + ids[start:]


def _tools(row: dict[str, Any]) -> Any:
    tools = row.get("tools")
    return json.loads(tools) if isinstance(tools, str) else tools


def _render(
    tokenizer: PreTrainedTokenizerBase,
    template: str,
    messages: list[dict[str, Any]],
    row: dict[str, Any],
    *,
    generation: bool,
) -> str:
    return str(
        tokenizer.apply_chat_template(
            messages,
            tools=_tools(row),
            chat_template=template,
            tokenize=False,
            add_generation_prompt=generation,
        )
    )


def _shared_prefix(a: Sequence[Any], b: Sequence[Any]) -> int:
    """How many leading items (characters, token ids) a and b share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _span_ends(labels: list[int]) -> list[int]:
    """Index of the last token of each contiguous trained span."""
    ends = []
    for i, label in enumerate(labels):
        if label != -100 and (i + 1 == len(labels) or labels[i + 1] == -100):
            ends.append(i)
    return ends
