"""The metric names a FineTuneJob reports, by task and option: the one rule a sweep's
objective is checked against before any trial starts (`finetune sweep` and the operator
alike; `models.HyperparameterSweepSpec` calls `check_objective`).

Kept free of the models (plain arguments) so `models` can import it without a cycle. The
names are the camelCase keys of `status.metrics` / metrics.json (docs/CONTRACTS.md);
`tests/trainer/test_reported_metrics.py` runs each task and compares what it really reports.
"""

from __future__ import annotations

import difflib

EVERY_RUN = frozenset(
    {
        "trainLoss",
        "evalLoss",
        "samplesPerSecond",
        "tokensPerSecond",
        "gpuHours",
        "batchSize",
        "gradientAccumulationSteps",
        "worldSize",
        "mfu",  # on a GPU only
    }
)
BY_TASK = {
    "classification": frozenset({"accuracy", "f1Macro"}),
    "causal-lm": frozenset({"perplexity", "perplexityBefore"}),
    "masked-lm": frozenset({"perplexity", "perplexityBefore"}),
}
BLEU = frozenset({"bleu"})  # causal-lm with dataset.targetColumn
QAT = frozenset(
    {"fp32Accuracy", "int8Accuracy", "fp32F1Macro", "int8F1Macro", "fp32SizeMb", "int8SizeMb"}
)
DISTILLATION = frozenset(
    {
        "teacherAccuracy",
        "teacherF1Macro",
        "teacherParameters",
        "teacherSizeMb",
        "studentParameters",
        "studentSizeMb",
    }
)
CHAT = frozenset({"lossTokens", "totalTokens"})  # causal-lm with a chat dataset.format
PREFERENCE = frozenset(  # method dpo / orpo (TRL's reward statistics)
    {
        "rewardMargin",
        "rewardAccuracy",
        "chosenReward",
        "rejectedReward",
        "chosenLogps",
        "rejectedLogps",
    }
)
ORPO = frozenset({"logOddsRatio"})
PRUNING = frozenset({"sparsity", "parameters", "nonzeroParameters", "sizeMb", "compressedSizeMb"})
DENSE_HEADLINE = ("accuracy", "f1Macro", "evalLoss", "perplexity")  # one-shot pruning
# spec.evaluation.lmEval: status.metrics `lmEval.<task>.<metric>` (the harness's filter
# "none"; another filter F adds `.F`), with `<metric>_stderr` beside each. The metric names
# a task may report are the harness's common ones (a sweep objective is checked on them).
LM_EVAL_PREFIX = "lmEval"
LM_EVAL_METRICS = (
    "acc",
    "acc_norm",
    "exact_match",
    "f1",
    "mcc",
    "bleu",
    "perplexity",
    "word_perplexity",
    "byte_perplexity",
    "bits_per_byte",
)


def lm_eval_key(task: str, metric: str, filter_name: str = "none") -> str:
    """The status.metrics key of one lm-eval result (`lmEval.<task>.<metric>[.<filter>]`)."""
    key = f"{LM_EVAL_PREFIX}.{task}.{metric}"
    return key if filter_name == "none" else f"{key}.{filter_name}"


def reported_metrics(
    task: str,
    *,
    target_column: bool = False,
    quantization: bool = False,
    distillation: bool = False,
    pruning_schedule: str | None = None,
    method: str = "sft",
    chat: bool = False,
    lm_eval_tasks: tuple[str, ...] = (),
) -> frozenset[str]:
    """Every status.metrics key a run of this shape may report."""
    lm_eval = {lm_eval_key(t, m) for t in lm_eval_tasks for m in LM_EVAL_METRICS}
    if method != "sft":  # preference tuning: rewards, not perplexity
        return frozenset(EVERY_RUN | PREFERENCE | (ORPO if method == "orpo" else set()) | lm_eval)
    names = set(EVERY_RUN | BY_TASK[task]) | lm_eval
    if chat:
        names |= CHAT
    if task == "causal-lm" and target_column:
        names |= BLEU
    if quantization:
        names |= QAT
    if distillation:
        names |= DISTILLATION
    if pruning_schedule is not None:
        names |= PRUNING
        if pruning_schedule == "one-shot":
            dense = [m for m in DENSE_HEADLINE if m in names]
            names |= {"dense" + m[0].upper() + m[1:] for m in dense}
            names |= {"denseParameters", "denseSizeMb"}
    return frozenset(names)


def objective_error(metric: str, reported: frozenset[str], what: str) -> str | None:
    """Why `metric` cannot be a sweep objective for runs reporting `reported` (None: it can)."""
    if metric in reported:
        return None
    close = difflib.get_close_matches(metric, sorted(reported), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return (
        f"metric {metric!r} is not reported by {what}; {hint}"
        f"it reports: {', '.join(sorted(reported))}"
    )


# spec.promote.when.beatsBase: the trainer reports the base model's value of a metric as
# `base.<metric>` (evaluated on the same eval set and lm-eval tasks as the run).
BASE_PREFIX = "base"
_LOWER_IS_BETTER = ("loss", "perplexity", "stderr", "bits_per_byte", "error")


def base_key(metric: str) -> str:
    return f"{BASE_PREFIX}.{metric}"


def lower_is_better(metric: str) -> bool:
    """A loss, perplexity, error or stderr: smaller is better (everything else: larger)."""
    name = metric.lower()
    return any(word in name for word in _LOWER_IS_BETTER)
