"""`finetune advise`: should I fine-tune, and how? Numbers from the data, no training.

Reads a FineTuneJob spec, loads its data and tokenizer through the trainer's own
`data` and `modeling` code (same validation, label map, eval split and truncation as
`finetune run`) and measures:

- data size: train/eval rows; for classification the classes, examples per class and
  the imbalance ratio;
- task complexity: token lengths with the model's tokenizer, the share of rows that
  `hyperparameters.maxLength` truncates and a maxLength that covers the 95th percentile;
- domain similarity, by proxy: tokenizer fertility (subword tokens per whitespace word)
  and unknown-token rate on the data against the same numbers on `REFERENCE_TEXT`, a
  small general-English text shipped here. A tokenizer that shreds the data into many
  pieces, or maps it to [UNK], was not trained on text like it;
- a cheap baseline for classification: TF-IDF + logistic regression on the same
  train/eval split, the score fine-tuning has to beat.

`advise` does the I/O and returns an `Advice`; the statistics and the recommendation
are pure functions of plain numbers; `render` prints an `Advice` with rich.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from finetune_api.models import FineTuneJob, FineTuneJobSpec, Task
from finetune_trainer.data import LENGTH_COLUMN, RawData, load_raw
from finetune_trainer.errors import ChatTemplateError, ModelError
from finetune_trainer.modeling import effective_max_length, load_tokenizer, resolve_model
from finetune_trainer.tasks import recipe_for
from finetune_trainer.tasks.recipe import Recipe
from finetune_trainer.training import total_steps

if TYPE_CHECKING:
    from rich.console import Console
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# A short general-English text (everyday topics, plain vocabulary), written for this
# purpose: the "in-domain" yardstick a general-purpose tokenizer is judged against.
REFERENCE_TEXT: tuple[str, ...] = (
    "The weather was cold this morning, so I wore a warm coat and walked to work.",
    "She bought fresh bread, a dozen eggs and some apples at the market on Saturday.",
    "Our neighbours are planning a small party in the garden next weekend.",
    "The train was delayed by twenty minutes because of a problem with the signals.",
    "He has been learning to play the guitar for almost three years now.",
    "Please remember to turn off the lights when you leave the room.",
    "The children spent the afternoon building a sandcastle on the beach.",
    "A new library opened in the city centre, and it stays open until late.",
    "We watched a film about a family that travels across the country by car.",
    "The doctor told him to drink more water and to get enough sleep.",
    "Prices in the shops have gone up again, especially for food and energy.",
    "My sister works as a teacher at a primary school near the river.",
    "The football match ended in a draw after a very exciting second half.",
    "They moved into a bigger house with a kitchen that looks onto the park.",
    "It is important to read the instructions carefully before you begin.",
    "The museum has an interesting collection of old maps and paintings.",
    "After dinner we usually go for a short walk around the neighbourhood.",
    "The company announced that it would hire more people later this year.",
    "I could not find my keys anywhere, but they were in my other jacket.",
    "The road along the coast is beautiful, although it is narrow in places.",
    "Many people prefer to work from home for a few days every week.",
    "The book tells the story of a young woman who starts her own business.",
    "Heavy rain is expected tomorrow, so the outdoor concert may be cancelled.",
    "He asked the waiter for the bill and left a generous tip on the table.",
    "The students were nervous before the exam, but most of them passed easily.",
    "Our flight leaves early in the morning, so we should pack tonight.",
    "The old bridge was repaired last summer and is now safe for cyclists.",
    "She called her parents to tell them the good news about her new job.",
    "The government promised to build more houses and improve public transport.",
    "There is a small cafe on the corner that serves excellent coffee and cake.",
    "I think the second chapter is much better written than the first one.",
    "The team worked hard all season and finally won the championship.",
    "It took them two hours to climb the hill, but the view was worth it.",
    "Most of the shops in town are closed on public holidays.",
    "The garden needs watering every evening during the hot summer months.",
    "He was surprised to see so many people waiting outside the theatre.",
    "Could you tell me how to get to the nearest post office, please?",
    "The hospital is looking for volunteers to help visitors find their way.",
    "We have decided to spend our holiday in the mountains this year.",
    "The price of the tickets includes lunch and a guided tour of the castle.",
)

UNLIMITED_LENGTH = 1_000_000
"""maxLength passed to the trainer's `tokenize` to measure full (untruncated) lengths."""
DOMAIN_SAMPLE = 5000
"""Rows of training text used for fertility / UNK rate."""
BASELINE_MAX_TRAIN = 50_000
"""Rows the TF-IDF baseline trains on at most (it stays a cheap check)."""
FERTILITY_RATIO_FLAG = 1.3
"""Data fertility at least this many times the reference's flags an unfamiliar domain."""
UNK_EXCESS_FLAG = 0.01
"""An UNK rate this much (absolute) above the reference's flags an unfamiliar domain."""
FEW_PER_CLASS = 8
SMALL_PER_CLASS = 100
SMALL_ROWS = 1_000
LARGE_ROWS = 20_000
SMALL_LM_TOKENS = 1_000_000
LARGE_LM_TOKENS = 50_000_000
TRUNCATION_WARN = 0.05
MIN_STEPS = 100


@dataclass(frozen=True)
class DataSize:
    train_rows: int
    eval_rows: int
    eval_source: str
    """Where the eval rows come from: `dataset.eval` or the held-out fraction."""


@dataclass(frozen=True)
class ClassStats:
    counts: dict[str, int]
    """Training examples per class (original label text), in class-id order."""
    eval_counts: dict[str, int]

    @property
    def num_classes(self) -> int:
        return len(self.counts)

    @property
    def min_per_class(self) -> int:
        return min(self.counts.values())

    @property
    def median_per_class(self) -> float:
        return float(statistics.median(self.counts.values()))

    @property
    def max_per_class(self) -> int:
        return max(self.counts.values())

    @property
    def imbalance_ratio(self) -> float:
        """Largest class / smallest class (1.0 = balanced)."""
        return self.max_per_class / max(1, self.min_per_class)

    @property
    def missing_in_eval(self) -> tuple[str, ...]:
        return tuple(label for label in self.counts if self.eval_counts.get(label, 0) == 0)


@dataclass(frozen=True)
class LengthStats:
    """Token lengths of the training rows as the trainer tokenises them (special tokens in)."""

    mean: float
    p50: int
    p95: int
    max: int
    max_length: int
    """hyperparameters.maxLength, capped at the model's position embeddings."""
    model_limit: int | None
    truncated_share: float
    """Share of rows longer than max_length (cut by truncation)."""
    recommended_max_length: int
    """p95 rounded up to a multiple of 8, capped at the model's limit."""
    total_tokens: int


@dataclass(frozen=True)
class DomainStats:
    """Domain similarity by proxy: how well the tokenizer's vocabulary fits the text."""

    fertility: float
    """Subword tokens per whitespace-separated word on the data."""
    unk_rate: float
    """Share of the data's tokens that are the unknown token."""
    reference_fertility: float
    reference_unk_rate: float
    rows: int

    @property
    def fertility_ratio(self) -> float:
        return self.fertility / self.reference_fertility if self.reference_fertility else 1.0

    @property
    def unk_excess(self) -> float:
        return self.unk_rate - self.reference_unk_rate

    @property
    def unfamiliar(self) -> bool:
        """The tokenizer splits or drops this text much more than general English."""
        return self.fertility_ratio >= FERTILITY_RATIO_FLAG or self.unk_excess >= UNK_EXCESS_FLAG


@dataclass(frozen=True)
class Baseline:
    """TF-IDF (word 1-2 grams) + logistic regression on the same train/eval split."""

    accuracy: float
    f1_macro: float
    majority_accuracy: float
    """Accuracy of always predicting the most frequent training class."""
    train_rows: int
    eval_rows: int


@dataclass(frozen=True)
class LossMask:
    """Chat SFT: the tokens the loss counts, and the template gate's verdict."""

    loss: str
    loss_tokens: int
    total_tokens: int
    gate: str  # "passed", or the refusal `finetune run` would give

    @property
    def share(self) -> float:
        return self.loss_tokens / max(1, self.total_tokens)


@dataclass(frozen=True)
class Advice:
    name: str
    task: Task
    model: str
    data: DataSize
    lengths: LengthStats
    domain: DomainStats
    steps_per_epoch: int
    total_steps: int
    classes: ClassStats | None = None
    baseline: Baseline | None = None
    loss_mask: LossMask | None = None
    recommendations: tuple[str, ...] = field(default=())
    warnings: tuple[str, ...] = field(default=())


# ---------------------------------------------------------------------------------------
# Pure statistics


def class_stats(
    train_labels: Sequence[int], eval_labels: Sequence[int], names: Sequence[str]
) -> ClassStats:
    """Per-class counts from class ids (as `data.encode_labels` writes them)."""
    train, evaluation = Counter(train_labels), Counter(eval_labels)
    return ClassStats(
        counts={name: train.get(i, 0) for i, name in enumerate(names)},
        eval_counts={name: evaluation.get(i, 0) for i, name in enumerate(names)},
    )


def length_stats(lengths: Sequence[int], max_length: int, model_limit: int | None) -> LengthStats:
    """Length percentiles, the share cut at max_length and a maxLength covering p95."""
    if not lengths:
        raise ValueError("no lengths")
    arr = np.asarray(lengths, dtype=np.int64)
    p95 = int(np.percentile(arr, 95, method="higher"))
    recommended = max(8, math.ceil(p95 / 8) * 8)
    if model_limit is not None:
        recommended = min(recommended, model_limit)
    return LengthStats(
        mean=float(arr.mean()),
        p50=int(np.percentile(arr, 50, method="higher")),
        p95=p95,
        max=int(arr.max()),
        max_length=max_length,
        model_limit=model_limit,
        truncated_share=float((arr > max_length).mean()),
        recommended_max_length=recommended,
        total_tokens=int(arr.sum()),
    )


def fertility_and_unk(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]
) -> tuple[float, float]:
    """(subword tokens per whitespace word, share of tokens that are UNK), no special tokens."""
    words = sum(len(t.split()) for t in texts)
    if not texts or words == 0:
        return 0.0, 0.0
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    tokens = sum(len(row) for row in ids)
    unk_id = tokenizer.unk_token_id
    unknown = 0 if unk_id is None else sum(row.count(unk_id) for row in ids)
    return tokens / words, (unknown / tokens if tokens else 0.0)


def domain_stats(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> DomainStats:
    fertility, unk = fertility_and_unk(tokenizer, texts)
    ref_fertility, ref_unk = fertility_and_unk(tokenizer, REFERENCE_TEXT)
    return DomainStats(fertility, unk, ref_fertility, ref_unk, rows=len(texts))


def tfidf_baseline(
    train_texts: Sequence[str],
    train_labels: Sequence[int],
    eval_texts: Sequence[str],
    eval_labels: Sequence[int],
) -> Baseline:
    """Fit TF-IDF + logistic regression on train, score accuracy / macro-F1 on eval."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    x_train = vectorizer.fit_transform(train_texts)
    classifier = LogisticRegression(max_iter=1000, C=10.0)
    classifier.fit(x_train, train_labels)
    predicted = classifier.predict(vectorizer.transform(eval_texts))
    majority = Counter(train_labels).most_common(1)[0][0]
    return Baseline(
        accuracy=float(accuracy_score(eval_labels, predicted)),
        f1_macro=float(f1_score(eval_labels, predicted, average="macro", zero_division=0)),
        majority_accuracy=sum(1 for y in eval_labels if y == majority) / len(eval_labels),
        train_rows=len(train_texts),
        eval_rows=len(eval_texts),
    )


def eval_margin(eval_rows: int, accuracy: float = 0.5) -> float:
    """Half-width of a 95% normal-approximation interval for an accuracy on eval_rows."""
    p = min(max(accuracy, 0.01), 0.99)
    return 1.96 * math.sqrt(p * (1 - p) / max(1, eval_rows))


Sentences = tuple[list[str], list[str]]  # (recommendations, warnings)


def recommend(
    spec: FineTuneJobSpec,
    *,
    data: DataSize,
    lengths: LengthStats,
    domain: DomainStats,
    steps_per_epoch: int,
    steps: int,
    classes: ClassStats | None,
    baseline: Baseline | None,
    has_mask_token: bool,
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(recommendations, warnings): plain sentences with the numbers behind them."""
    parts = [
        _size_advice(spec, data, lengths, classes),
        _baseline_advice(baseline),
        _length_advice(lengths),
        _domain_advice(domain, recipe_for(spec).adapts_domain, has_mask_token),
        _steps_and_eval_advice(spec, data, steps_per_epoch, steps, classes, baseline),
    ]
    recs = [line for part in parts for line in part[0]]
    warns = [line for part in parts for line in part[1]]
    return tuple(recs), tuple(warns)


def _size_advice(
    spec: FineTuneJobSpec, data: DataSize, lengths: LengthStats, classes: ClassStats | None
) -> Sentences:
    """How to train, by data size."""
    recs: list[str] = []
    hp = spec.hyperparameters
    if classes is not None:
        per_class = classes.min_per_class
        if per_class < FEW_PER_CLASS:
            recs.append(
                f"Too few examples: the smallest class has {per_class} training example(s). "
                "Start with the TF-IDF baseline or few-shot prompting/SetFit and collect more "
                f"labels (aim for >= {SMALL_PER_CLASS} per class) before fine-tuning."
            )
        elif data.train_rows < SMALL_ROWS or per_class < SMALL_PER_CLASS:
            recs.append(
                f"Small data ({data.train_rows} rows, {per_class} in the smallest class): use "
                "LoRA (spec.lora: {rank: 8}) or full fine-tuning for 2-4 epochs with "
                "earlyStoppingPatience set; expect run-to-run variance."
                + _epochs_note(hp.epochs, 2, 4)
            )
        elif data.train_rows < LARGE_ROWS:
            recs.append(
                f"Medium data ({data.train_rows} rows): full fine-tuning for 2-3 epochs; "
                "LoRA if GPU memory is tight." + _epochs_note(hp.epochs, 2, 3)
            )
        else:
            recs.append(
                f"Large data ({data.train_rows} rows): full fine-tuning; 1-2 epochs are "
                "usually enough." + _epochs_note(hp.epochs, 1, 2)
            )
    else:
        tokens = lengths.total_tokens
        kind = recipe_for(spec).kind
        if tokens < SMALL_LM_TOKENS:
            recs.append(
                f"Small corpus ({tokens:,} training tokens) for {kind}: LoRA or 1-3 epochs at "
                "a low learning rate; watch eval loss for overfitting."
            )
        elif tokens < LARGE_LM_TOKENS:
            recs.append(f"Medium corpus ({tokens:,} tokens): full {kind} for 1-2 epochs.")
        else:
            recs.append(f"Large corpus ({tokens:,} tokens): full {kind}; one epoch is plenty.")

    return recs, []


def _baseline_advice(baseline: Baseline | None) -> Sentences:
    """The baseline to beat."""
    recs: list[str] = []
    warns: list[str] = []
    if baseline is not None:
        recs.append(
            f"Fine-tuning must beat the TF-IDF baseline: accuracy {baseline.accuracy:.3f}, "
            f"macro-F1 {baseline.f1_macro:.3f} (majority class {baseline.majority_accuracy:.3f})."
        )
        if baseline.accuracy >= 0.95:
            warns.append(
                f"The TF-IDF baseline already reaches accuracy {baseline.accuracy:.3f}: the task "
                "is nearly linearly separable; fine-tuning may add little for its cost."
            )

    return recs, warns


def _length_advice(lengths: LengthStats) -> Sentences:
    """Sequence length against maxLength and the model's limit."""
    recs: list[str] = []
    warns: list[str] = []
    if lengths.truncated_share > TRUNCATION_WARN:
        recs.append(
            f"maxLength {lengths.max_length} truncates {lengths.truncated_share:.1%} of the "
            f"training rows; set hyperparameters.maxLength: {lengths.recommended_max_length} "
            f"(covers p95 = {lengths.p95} tokens)."
        )
    elif lengths.max_length > 2 * lengths.recommended_max_length:
        recs.append(
            f"p95 is {lengths.p95} tokens; maxLength {lengths.recommended_max_length} covers "
            f"it. Batches pad dynamically, so maxLength {lengths.max_length} costs little, but "
            "it bounds memory for the longest rows."
        )
    if lengths.model_limit is not None and lengths.p95 > lengths.model_limit:
        warns.append(
            f"p95 length {lengths.p95} exceeds the model's limit of {lengths.model_limit} "
            "tokens: long inputs are always cut; consider a long-context model or chunking."
        )

    return recs, warns


def _domain_advice(domain: DomainStats, adapts_domain: bool, has_mask_token: bool) -> Sentences:
    """Domain similarity (the tokenizer proxy)."""
    recs: list[str] = []
    warns: list[str] = []
    if domain.unfamiliar:
        why = (
            f"fertility {domain.fertility:.2f} tokens/word vs {domain.reference_fertility:.2f} "
            f"on general English (x{domain.fertility_ratio:.2f}), UNK rate "
            f"{domain.unk_rate:.1%} vs {domain.reference_unk_rate:.1%}"
        )
        if adapts_domain:
            recs.append(
                f"The text looks out of domain for this tokenizer ({why}): continued "
                "pre-training (this job) is the right first step."
            )
        elif has_mask_token:
            recs.append(
                f"The text looks out of domain for this tokenizer ({why}): run masked-LM "
                "continued pre-training on unlabeled in-domain text first (task: masked-lm, "
                "see examples/mlm-domain-adaptation.yaml), then fine-tune from its model."
            )
        else:
            recs.append(
                f"The text looks out of domain for this tokenizer ({why}): continue "
                "pre-training (task: causal-lm) on unlabeled in-domain text first."
            )
        if domain.unk_excess >= UNK_EXCESS_FLAG:
            warns.append(
                f"{domain.unk_rate:.1%} of tokens are UNK: that text is invisible to the model "
                "and no training recovers it; prefer a model whose tokenizer covers it "
                "(byte-level BPE or multilingual)."
            )

    return recs, warns


def _steps_and_eval_advice(
    spec: FineTuneJobSpec,
    data: DataSize,
    steps_per_epoch: int,
    steps: int,
    classes: ClassStats | None,
    baseline: Baseline | None,
) -> Sentences:
    """Optimizer steps, LoRA on large data, and what the eval set can tell."""
    recs: list[str] = []
    warns: list[str] = []
    hp = spec.hyperparameters
    lora = spec.lora is not None
    if steps < MIN_STEPS:
        warns.append(
            f"Only {steps} optimizer steps in total ({steps_per_epoch} per epoch at batchSize "
            f"{hp.batch_size} x gradientAccumulationSteps {hp.gradient_accumulation_steps}); "
            "consider more epochs or a smaller batch size."
        )
    if lora and classes is not None and data.train_rows >= LARGE_ROWS:
        recs.append(
            "LoRA is set on a large dataset: full fine-tuning usually scores higher when "
            "memory allows; keep LoRA if adapters or memory matter."
        )
    if classes is not None:
        acc = baseline.accuracy if baseline is not None else 0.5
        margin = eval_margin(data.eval_rows, acc)
        if data.eval_rows < 500:
            warns.append(
                f"Only {data.eval_rows} eval rows: accuracy is known to about +/-{margin:.1%} "
                "(95%); differences smaller than that are noise."
            )
        if classes.imbalance_ratio >= 5:
            warns.append(
                f"Classes are imbalanced (largest/smallest = {classes.imbalance_ratio:.1f}): "
                "judge by macro-F1, not accuracy; consider resampling or more minority data."
            )
        if classes.missing_in_eval:
            warns.append(
                "Classes absent from the eval set: "
                + ", ".join(classes.missing_in_eval[:10])
                + "; their scores cannot be measured."
            )
    return recs, warns


def _epochs_note(epochs: float, low: float, high: float) -> str:
    if low <= epochs <= high:
        return ""
    return f" (The manifest sets epochs: {epochs:g}.)"


# ---------------------------------------------------------------------------------------
# I/O: load through the trainer's own code, then compute


@dataclass
class _Loaded:
    """What `advise` reads through the trainer's own code."""

    location: str
    recipe: Recipe
    tokenizer: PreTrainedTokenizerBase
    raw: RawData
    train_ds: Any  # the tokenized train split (datasets.Dataset), untruncated
    max_length: int
    model_limit: int | None


def _load(spec: FineTuneJobSpec, spec_dir: Path | None) -> _Loaded:
    """Tokenizer, model config (never the weights) and data, as `finetune run` loads them."""
    import datasets
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    hp, recipe = spec.hyperparameters, recipe_for(spec)
    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    try:
        ref = resolve_model(spec.model, spec_dir)
        tokenizer = load_tokenizer(ref, recipe)
        try:
            config = AutoConfig.from_pretrained(ref.location, **ref.kwargs())
        except (OSError, ValueError) as err:
            raise ModelError(f"model {ref.location}: cannot load its config: {err}") from None
        raw = load_raw(spec.dataset, recipe, spec_dir, hp.seed)
        # effective_max_length only reads model.config: no need to load the weights.
        config_only = cast("PreTrainedModel", SimpleNamespace(config=config))
        max_length = effective_max_length(config_only, hp.max_length)
        model_limit = effective_max_length(config_only, UNLIMITED_LENGTH)
        train_ds = recipe.tokenize(raw.train, tokenizer, UNLIMITED_LENGTH)
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    limit = model_limit if model_limit < UNLIMITED_LENGTH else None
    return _Loaded(ref.location, recipe, tokenizer, raw, train_ds, max_length, limit)


def _domain_sample(texts: list[str], seed: int) -> list[str]:
    if len(texts) <= DOMAIN_SAMPLE:
        return texts
    rng = np.random.default_rng(seed)
    return [texts[i] for i in rng.choice(len(texts), DOMAIN_SAMPLE, False)]


def _classes_and_baseline(
    raw: RawData, train_texts: list[str], eval_texts: list[str]
) -> tuple[ClassStats | None, Baseline | None]:
    """Class counts and the TF-IDF baseline (classification only)."""
    if raw.label_map is None:
        return None, None
    train_labels = [int(y) for y in raw.train.data["labels"]]
    eval_labels = [int(y) for y in raw.eval.data["labels"]]
    classes = class_stats(train_labels, eval_labels, raw.label_map.labels)
    n = min(len(train_texts), BASELINE_MAX_TRAIN)
    baseline = tfidf_baseline(train_texts[:n], train_labels[:n], eval_texts, eval_labels)
    return classes, baseline


def _loss_mask(recipe: Recipe, loaded: _Loaded) -> LossMask | None:
    """The template gate as `finetune run` applies it, reported instead of raised."""
    counts = recipe.data_metrics(loaded.train_ds)
    if "lossTokens" not in counts:
        return None
    try:
        recipe.check_data(loaded.raw.train, loaded.train_ds, loaded.tokenizer)
        gate = "passed"
    except ChatTemplateError as err:
        gate = str(err)
    return LossMask(
        loss=str(recipe.spec.loss or getattr(recipe, "loss", "all")),
        loss_tokens=int(counts["lossTokens"]),
        total_tokens=int(counts["totalTokens"]),
        gate=gate,
    )


def advise(job: FineTuneJob, *, spec_dir: Path | None) -> Advice:
    """Load the spec's data and tokenizer (as `finetune run` would) and measure; no training."""
    spec = job.spec
    hp = spec.hyperparameters
    loaded = _load(spec, spec_dir)
    raw, train_ds = loaded.raw, loaded.train_ds
    lengths = length_stats(list(train_ds[LENGTH_COLUMN]), loaded.max_length, loaded.model_limit)
    recipe = loaded.recipe
    train_texts, eval_texts = recipe.texts(raw.train), recipe.texts(raw.eval)
    domain = domain_stats(loaded.tokenizer, _domain_sample(train_texts, hp.seed))
    data = DataSize(
        train_rows=len(raw.train.data),
        eval_rows=len(raw.eval.data),
        eval_source="dataset.eval"
        if spec.dataset.eval is not None
        else f"held out {spec.dataset.eval_fraction:g} of train",
    )
    classes, baseline = _classes_and_baseline(raw, train_texts, eval_texts)
    loss_mask = _loss_mask(recipe, loaded)
    one_epoch = spec.model_copy(
        update={"hyperparameters": hp.model_copy(update={"epochs": 1, "max_steps": -1})}
    )
    per_epoch = total_steps(one_epoch, len(train_ds))
    steps = total_steps(spec, len(train_ds))
    recs, warns = recommend(
        spec,
        data=data,
        lengths=lengths,
        domain=domain,
        steps_per_epoch=per_epoch,
        steps=steps,
        classes=classes,
        baseline=baseline,
        has_mask_token=loaded.tokenizer.mask_token is not None,
    )
    return Advice(
        name=job.metadata.name,
        task=spec.task,
        model=loaded.location,
        data=data,
        lengths=lengths,
        domain=domain,
        steps_per_epoch=per_epoch,
        total_steps=steps,
        classes=classes,
        baseline=baseline,
        loss_mask=loss_mask,
        recommendations=recs,
        warnings=warns + ((loss_mask.gate,) if loss_mask and loss_mask.gate != "passed" else ()),
    )


# ---------------------------------------------------------------------------------------
# Printing


def rows(advice: Advice) -> list[tuple[str, str, str, str]]:
    """(section, measure, value, note) rows of the advice table."""
    d, ln, dom = advice.data, advice.lengths, advice.domain
    out: list[tuple[str, str, str, str]] = [
        ("data", "train rows", f"{d.train_rows:,}", ""),
        ("data", "eval rows", f"{d.eval_rows:,}", d.eval_source),
    ]
    c = advice.classes
    if c is not None:
        out += [
            (
                "data",
                "classes",
                str(c.num_classes),
                ", ".join(list(c.counts)[:8]) + (", ..." if c.num_classes > 8 else ""),
            ),
            (
                "data",
                "examples per class",
                f"min {c.min_per_class:,} / median {c.median_per_class:,.0f}",
                f"max {c.max_per_class:,}",
            ),
            ("data", "imbalance ratio", f"{c.imbalance_ratio:.2f}", "largest / smallest class"),
        ]
    m = advice.loss_mask
    if m is not None:
        out += [
            ("loss mask", f"loss {m.loss}", f"{m.share:.1%}", "of training tokens are trained"),
            ("loss mask", "trained / all tokens", f"{m.loss_tokens:,} / {m.total_tokens:,}", ""),
            (
                "loss mask",
                "chat template gate",
                "passed" if m.gate == "passed" else "REFUSED",
                m.gate if m.gate != "passed" else "mask, end-of-turn, generation prefix",
            ),
        ]
    limit = f", model limit {ln.model_limit}" if ln.model_limit is not None else ""
    out += [
        ("complexity", "tokens per row", f"mean {ln.mean:.1f} / p95 {ln.p95}", f"max {ln.max}"),
        (
            "complexity",
            f"truncated at maxLength {ln.max_length}",
            f"{ln.truncated_share:.1%}",
            f"train rows{limit}",
        ),
        ("complexity", "maxLength covering p95", str(ln.recommended_max_length), ""),
        ("complexity", "training tokens", f"{ln.total_tokens:,}", ""),
        (
            "domain (proxy)",
            "fertility (tokens/word)",
            f"{dom.fertility:.2f}",
            f"general English {dom.reference_fertility:.2f} (x{dom.fertility_ratio:.2f})",
        ),
        (
            "domain (proxy)",
            "UNK rate",
            f"{dom.unk_rate:.2%}",
            f"general English {dom.reference_unk_rate:.2%}",
        ),
        (
            "domain (proxy)",
            "unfamiliar to tokenizer",
            "yes" if dom.unfamiliar else "no",
            f"flag: fertility x>={FERTILITY_RATIO_FLAG} or UNK +{UNK_EXCESS_FLAG:.0%}",
        ),
    ]
    b = advice.baseline
    if b is not None:
        out += [
            ("baseline", "TF-IDF + logreg accuracy", f"{b.accuracy:.3f}", f"on {b.eval_rows} eval"),
            ("baseline", "TF-IDF + logreg macro-F1", f"{b.f1_macro:.3f}", ""),
            ("baseline", "majority-class accuracy", f"{b.majority_accuracy:.3f}", ""),
        ]
    out += [
        ("training", "steps per epoch", f"{advice.steps_per_epoch:,}", ""),
        ("training", "total steps", f"{advice.total_steps:,}", ""),
    ]
    return out


def render(advice: Advice, console: Console | None = None) -> None:
    """Print the advice: one table of numbers, then recommendations and warnings."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"finetune advise: {advice.name} ({advice.task.value}, {advice.model})")
    for column in ("", "measure", "value", "note"):
        table.add_column(column)
    previous = None
    for section, measure, value, note in rows(advice):
        if previous is not None and section != previous:
            table.add_section()
        table.add_row(section if section != previous else "", measure, value, note)
        previous = section
    console.print(table)
    console.print("[bold]Recommendations[/bold]")
    for line in advice.recommendations:
        console.print(f"  - {line}", highlight=False)
    if advice.warnings:
        console.print("[bold yellow]Warnings[/bold yellow]")
        for line in advice.warnings:
            console.print(f"  ! {line}", highlight=False)
    console.print(
        "[dim]Domain similarity is a proxy: how well the tokenizer's vocabulary fits the "
        "text, compared with a built-in general-English sample.[/dim]"
    )
