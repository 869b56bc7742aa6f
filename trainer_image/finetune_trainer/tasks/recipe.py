"""The interface of a task (and of a training method on it): one `Recipe` per module.

`run.py`, `advise.py`, `predict.py` and the shared modules (data, modeling, training,
lora, weights, lm_speed) never test `spec.task`; they ask the run's recipe:

- what it reads: `columns` (validated in every split), `target_column`, `encode`
  (labels to class ids);
- how it tokenises: `tokenize` (truncation only; padding is the collator's, per batch);
- which model: `auto_class`, `model_kwargs`, `check_tokenizer`, `peft_task_type`,
  `head_note`;
- how it trains: `collator`, `metrics_fn`, `best_metric`, `trainer_class`, `packs`;
- how it is judged: `reports_perplexity`, `evaluate` (after training, main process),
  `evaluate_as_worker`, and `predict` for a finished run.

A recipe holds the spec it was made for and nothing else; what a run builds lives in
`RunState` (runstate.py), which `evaluate` reads and fills.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from finetune_api.models import FineTuneJobSpec, Task

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerBase, Trainer

    from finetune_trainer.data import LabelMap, Table
    from finetune_trainer.runstate import RunState


class Recipe:
    """Defaults suit a language-model task; each task module overrides what differs."""

    task: ClassVar[Task]
    auto_class: ClassVar[Any]
    """The transformers Auto class whose `from_pretrained` loads the model with its head."""
    peft_task_type: ClassVar[str | None] = None
    """peft's TaskType name (SEQ_CLS, CAUSAL_LM), or None for a plain LoRA model."""
    best_metric: ClassVar[tuple[str, bool]] = ("loss", False)
    """(metric_for_best_model, greater_is_better) when early stopping restores the best."""
    reports_perplexity: ClassVar[bool] = True
    causal_lm: ClassVar[bool] = False
    """A causal LM (gradient checkpointing defaults on with LoRA on a GPU)."""
    token_labels: ClassVar[bool] = True
    """Labels are token ids (a language model), not class ids."""
    packs: ClassVar[bool] = False
    """Padding-free packing and Liger kernels may apply (lm_speed.py)."""
    kind: ClassVar[str]
    """What this training is called in advice ("continued pre-training", ...)."""
    adapts_domain: ClassVar[bool] = False
    """Training on unlabeled in-domain text is what this task does (advice)."""

    def __init__(self, spec: FineTuneJobSpec) -> None:
        self.spec = spec

    def describe(self) -> str:
        """What the run's start line calls this training."""
        return self.task.value

    # ---- data ----------------------------------------------------------------------

    def columns(self) -> list[tuple[str, str]]:
        """(column, spec field) every split must hold, with no missing value."""
        return [(self.spec.dataset.text_column, "dataset.textColumn")]

    @property
    def target_column(self) -> str | None:
        """A column generated towards and scored (BLEU) on the eval split; None if none."""
        return None

    def encode(self, train: Table, evaluation: Table) -> tuple[Table, Table, LabelMap | None]:
        """Labels to class ids where the task has classes; the tables unchanged otherwise."""
        return train, evaluation, None

    def texts(self, table: Table) -> list[str]:
        """The input text of each row, as the model reads it (advice measures these)."""
        return [str(t) for t in table.data[self.spec.dataset.text_column]]

    def tokenize(
        self, table: Table, tokenizer: PreTrainedTokenizerBase, max_length: int
    ) -> datasets.Dataset:
        raise NotImplementedError(type(self).__name__)

    def check_data(
        self, table: Table, train_ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase
    ) -> None:
        """Refuse, before any training step, data the tokenised form shows to be unusable."""

    def data_metrics(self, train_ds: datasets.Dataset) -> dict[str, float]:
        """Metrics of the tokenised training data itself (e.g. lossTokens, totalTokens)."""
        return {}

    # ---- model ---------------------------------------------------------------------

    def check_tokenizer(self, tokenizer: PreTrainedTokenizerBase, location: str) -> None:
        """Refuse a tokenizer the task cannot work with (ModelError)."""

    def model_kwargs(self, label_map: LabelMap | None) -> dict[str, Any]:
        """Extra `from_pretrained` arguments (the classification head's labels)."""
        return {}

    def prepare_model(self, model: Any, tokenizer: PreTrainedTokenizerBase) -> None:
        """After loading: fit the model to the tokenizer (tokens the recipe added)."""

    def lora_trainable_tokens(self, tokenizer: PreTrainedTokenizerBase) -> list[int]:
        """Token ids whose embedding rows LoRA trains too (new tokens)."""
        return []

    def head_note(self, head_tensors: int, label_map: LabelMap | None) -> str:
        """How a newly initialised head is described in the start line."""
        return f"new {self.task.value} head ({head_tensors} tensors)"

    # ---- training ------------------------------------------------------------------

    def collator(self, tokenizer: PreTrainedTokenizerBase) -> Any:
        raise NotImplementedError(type(self).__name__)

    def metrics_fn(self) -> Callable[..., dict[str, float]] | None:
        """The Trainer's compute_metrics (None: eval loss only)."""
        return None

    def trainer_class(self, base: type[Trainer]) -> Callable[..., Trainer]:
        """The Trainer class (a method may put its own loss on `base`)."""
        return base

    # ---- judging -------------------------------------------------------------------

    def evaluate(self, state: RunState) -> None:
        """After training, on the main process: task metrics into state.final, files into
        state.artifacts."""

    def evaluate_as_worker(self, state: RunState) -> None:
        """A worker's part in collective evaluation the main process runs in `evaluate`."""

    def save(self, state: RunState) -> None:
        """Extra files of the run (main process), recorded in state.artifacts."""

    def run_info(self) -> dict[str, Any]:
        """Extra run.json fields `predict` needs."""
        return {}

    @classmethod
    def predict(
        cls,
        info: dict[str, Any],
        model: Any,
        tokenizer: PreTrainedTokenizerBase,
        texts: Sequence[str],
        max_new_tokens: int,
    ) -> list[str]:
        raise NotImplementedError(cls.__name__)
