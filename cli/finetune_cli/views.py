"""Rich renderings of FineTuneJobs and sweeps for `finetune get / watch / describe`.

Pure functions of the objects read by cluster.py (plain dicts as the API returns them):
tables, progress cells, the key metric, ETA and age, and the failure explanation that
`describe` puts first.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from finetune_api.conditions import parse_rfc3339
from finetune_cli.cluster import (
    INDEX_LABEL,
    SWEEP_LABEL,
    Details,
    Obj,
    labels,
    meta,
    status,
    trial_number,
)

KEY_METRICS = ("accuracy", "f1Macro", "perplexity", "bleu", "evalLoss", "trainLoss")
TASK_METRIC = {"classification": "accuracy", "causal-lm": "perplexity", "masked-lm": "perplexity"}
PHASE_STYLE = {
    "Succeeded": "green",
    "Failed": "red",
    "Running": "cyan",
    "Pending": "yellow",
    "Suspended": "magenta",
    "Pruned": "magenta",
}
BAR_WIDTH = 12
TRIAL_STATE = "finetune.dev/trial-state"
TRIAL_PARAMS = "finetune.dev/trial-params"


# --------------------------------------------------------------------------- small cells


def duration(seconds: float) -> str:
    """kubectl-style: 45s, 6m, 2h5m, 3d."""
    s = max(int(seconds), 0)
    if s < 120:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s" if s < 600 else f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60}m"
    return f"{s // 86400}d"


def age(obj: Obj, now: datetime | None = None) -> str:
    created = parse_rfc3339(meta(obj).get("creationTimestamp"))
    if created is None:
        return ""
    return duration(((now or datetime.now(UTC)) - created).total_seconds())


def phase_of(obj: Obj) -> str:
    """The phase, with a pruned trial shown as Pruned."""
    phase = str(status(obj).get("phase") or "Pending")
    if (meta(obj).get("annotations") or {}).get(TRIAL_STATE) == "pruned":
        return "Pruned"
    return phase


def phase_text(phase: str) -> Text:
    return Text(phase, style=PHASE_STYLE.get(phase, ""))


def bar(done: float, total: float, suffix: str = "") -> Text:
    """A text progress bar: ━━━━━━──── 58% 145/250."""
    if total <= 0:
        return Text(suffix or "")
    frac = min(max(done / total, 0.0), 1.0)
    filled = round(frac * BAR_WIDTH)
    text = Text("━" * filled, style="green" if frac >= 1 else "cyan")
    text.append("─" * (BAR_WIDTH - filled), style="grey50")
    text.append(f" {frac:4.0%}")
    if suffix:
        text.append(f" {suffix}")
    return text


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


# --------------------------------------------------------------------------- FineTuneJob cells


def job_progress(ftj: Obj) -> tuple[int, int]:
    progress = status(ftj).get("progress") or {}
    return int(progress.get("step") or 0), int(progress.get("totalSteps") or 0)


def key_metric(ftj: Obj, metric: str | None = None) -> tuple[str, float] | None:
    """(name, value): the named metric, else the task's, else the first of KEY_METRICS."""
    metrics = status(ftj).get("metrics") or {}
    task = str((ftj.get("spec") or {}).get("task") or "")
    for name in (metric, TASK_METRIC.get(task), *KEY_METRICS):
        if name and isinstance(metrics.get(name), int | float):
            return name, float(metrics[name])
    return None


def metric_cell(ftj: Obj, metric: str | None = None) -> str:
    found = key_metric(ftj, metric)
    return f"{found[0]} {found[1]:.4f}" if found else ""


def job_eta(ftj: Obj, now: datetime | None = None) -> str:
    """Remaining time from the pace so far (Running jobs with some steps done)."""
    step, total = job_progress(ftj)
    started = parse_rfc3339(status(ftj).get("startTime"))
    if phase_of(ftj) != "Running" or not started or step <= 0 or total <= step:
        return ""
    elapsed = ((now or datetime.now(UTC)) - started).total_seconds()
    return duration(elapsed / step * (total - step))


def progress_cell(ftj: Obj) -> Text:
    step, total = job_progress(ftj)
    if total <= 0:
        return Text(f"step {step}" if step else "")
    return bar(step, total, f"{step}/{total}")


# --------------------------------------------------------------------------- sweep cells


def sweep_metric(sweep: Obj) -> str:
    return str(((sweep.get("spec") or {}).get("objective") or {}).get("metric") or "")


def sweep_counts(sweep: Obj) -> tuple[int, int]:
    """(finished trials, maxTrials)."""
    trials = status(sweep).get("trials") or {}
    done = sum(int(trials.get(k) or 0) for k in ("succeeded", "failed", "pruned"))
    return done, int((sweep.get("spec") or {}).get("maxTrials") or 0)


def sweep_best(sweep: Obj, *, with_name: bool = True) -> str:
    best = status(sweep).get("bestTrial") or {}
    if not isinstance(best.get("value"), int | float):
        return ""
    text = f"{sweep_metric(sweep)} {float(best['value']):.4f}"
    return f"{text} ({best.get('name', '')})" if with_name else f"{text} (best)"


def sweep_eta(sweep: Obj, now: datetime | None = None) -> str:
    done, total = sweep_counts(sweep)
    created = parse_rfc3339(meta(sweep).get("creationTimestamp"))
    if phase_of(sweep) != "Running" or not created or done <= 0 or total <= done:
        return ""
    elapsed = ((now or datetime.now(UTC)) - created).total_seconds()
    return duration(elapsed / done * (total - done))


# --------------------------------------------------------------------------- finetune get


def get_table(
    jobs: list[Obj], sweeps: list[Obj], *, all_namespaces: bool, now: datetime | None = None
) -> Table:
    """FineTuneJobs and sweeps, each sweep followed by its trials (label finetune.dev/sweep)."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    if all_namespaces:
        table.add_column("NAMESPACE")
    for column in ("NAME", "KIND", "PHASE", "PROGRESS", "METRIC", "ETA", "AGE"):
        table.add_column(column, no_wrap=column != "METRIC")
    sweep_keys = {(meta(s).get("namespace"), meta(s).get("name")) for s in sweeps}

    def owner(job: Obj) -> tuple[Any, Any] | None:
        key = (meta(job).get("namespace"), labels(job).get(SWEEP_LABEL))
        return key if key in sweep_keys else None

    def row(obj: Obj, name: str, cells: list[RenderableType]) -> None:
        ns = [meta(obj).get("namespace", "")] if all_namespaces else []
        table.add_row(*ns, name, *cells, age(obj, now))

    for job in sorted((j for j in jobs if owner(j) is None), key=_name_key):
        cells: list[RenderableType] = ["FineTuneJob", phase_text(phase_of(job))]
        row(
            job,
            meta(job)["name"],
            [*cells, progress_cell(job), metric_cell(job), job_eta(job, now)],
        )
    for sweep in sorted(sweeps, key=_name_key):
        done, total = sweep_counts(sweep)
        cells = ["Sweep", phase_text(phase_of(sweep)), bar(done, total, f"{done}/{total} trials")]
        best = sweep_best(sweep, with_name=False)
        row(sweep, meta(sweep)["name"], [*cells, best, sweep_eta(sweep, now)])
        key = (meta(sweep).get("namespace"), meta(sweep).get("name"))
        trials = sorted((j for j in jobs if owner(j) == key), key=trial_number)
        for i, trial in enumerate(trials):
            branch = "└─" if i == len(trials) - 1 else "├─"
            cells = ["trial", phase_text(phase_of(trial)), progress_cell(trial)]
            metric = metric_cell(trial, sweep_metric(sweep))
            row(trial, f" {branch} {meta(trial)['name']}", [*cells, metric, job_eta(trial, now)])
    return table


def _name_key(obj: Obj) -> tuple[str, str]:
    return str(meta(obj).get("namespace") or ""), str(meta(obj).get("name") or "")


# --------------------------------------------------------------------------- finetune watch


def job_line(ftj: Obj, now: datetime | None = None) -> str:
    """One plain line for a log (watch without a terminal): phase, step, loss, metrics, ETA."""
    st = status(ftj)
    step, total = job_progress(ftj)
    parts = [f"[{phase_of(ftj)}]", f"step {step}/{total}" if total else f"step {step}"]
    metrics = st.get("metrics") or {}
    parts += [f"{k}={_fmt(v)}" for k, v in metrics.items() if k in ("trainLoss", *KEY_METRICS)]
    eta = job_eta(ftj, now)
    if eta:
        parts.append(f"ETA {eta}")
    return " ".join(parts)


def history_table(ftj: Obj, last: int = 8) -> Table | None:
    """The evaluations so far (status.history), newest last."""
    history = list(status(ftj).get("history") or [])[-last:]
    if not history:
        return None
    names = [k for k in history[-1] if k not in ("epoch", "step")]
    table = Table(title="evaluations", box=None, header_style="bold", title_justify="left")
    for column in ("step", "epoch", *names):
        table.add_column(column, justify="right")
    for entry in history:
        epoch = entry.get("epoch")
        table.add_row(
            str(int(entry.get("step") or 0)),
            f"{epoch:.2f}" if isinstance(epoch, int | float) else "",
            *(_fmt(entry.get(n, "")) for n in names),
        )
    return table


def job_panel(ftj: Obj, now: datetime | None = None) -> Group:
    """The live view of one FineTuneJob: header, progress bar, metrics, evaluations."""
    st = status(ftj)
    step, total = job_progress(ftj)
    header = Text(f"{meta(ftj)['name']}  ", style="bold")
    header.append_text(phase_text(phase_of(ftj)))
    epoch = (st.get("progress") or {}).get("epoch")
    line = bar(step, total, f"step {step}/{total}") if total else Text(f"step {step}")
    if isinstance(epoch, int | float):
        line.append(f"  epoch {epoch:.2f}")
    eta = job_eta(ftj, now)
    if eta:
        line.append(f"  ETA {eta}")
    metrics = st.get("metrics") or {}
    parts: list[RenderableType] = [header, line]
    if metrics:
        parts.append(Text("  ".join(f"{k} {_fmt(v)}" for k, v in metrics.items())))
    history = history_table(ftj)
    if history is not None:
        parts.append(history)
    if st.get("message") and phase_of(ftj) in ("Failed", "Pending", "Suspended"):
        parts.append(Text(str(st["message"]), style="red" if phase_of(ftj) == "Failed" else ""))
    return Group(*parts)


def trials_table(sweep: Obj, trials: list[Obj], now: datetime | None = None) -> Table:
    metric = sweep_metric(sweep)
    failed = any(phase_of(t) == "Failed" for t in trials)
    table = Table(box=None, header_style="bold")
    columns = ["TRIAL", "PHASE", "PROGRESS", metric.upper() or "METRIC", "PARAMS"]
    for column in [*columns, "MESSAGE"] if failed else columns:
        table.add_column(column, overflow="fold")  # messages wrap, never cut
    for trial in trials:
        found = key_metric(trial, metric)
        value = f"{found[1]:.4f}" if found and found[0] == metric else ""
        message = str(status(trial).get("message") or "") if phase_of(trial) == "Failed" else ""
        cells: list[RenderableType] = [
            str(trial_number(trial)) if trial_number(trial) < 1 << 30 else meta(trial)["name"],
            phase_text(phase_of(trial)),
            progress_cell(trial),
            value,
            params_text(trial),
        ]
        table.add_row(*cells, *([message] if failed else []))
    return table


def params_text(trial: Obj) -> str:
    raw = (meta(trial).get("annotations") or {}).get(TRIAL_PARAMS) or "{}"
    try:
        params = json.loads(raw)
    except ValueError:
        return str(raw)
    return " ".join(f"{k.rsplit('.', 1)[-1]}={_fmt(v)}" for k, v in dict(params).items())


def sweep_panel(sweep: Obj, trials: list[Obj], now: datetime | None = None) -> Group:
    done, total = sweep_counts(sweep)
    header = Text(f"{meta(sweep)['name']}  ", style="bold")
    header.append_text(phase_text(phase_of(sweep)))
    line = bar(done, total, f"{done}/{total} trials")
    eta = sweep_eta(sweep, now)
    if eta:
        line.append(f"  ETA {eta}")
    parts: list[RenderableType] = [header, line]
    best = sweep_best(sweep)
    if best:
        parts.append(Text(f"best: {best}", style="green"))
    parts.append(trials_table(sweep, trials, now))
    message = status(sweep).get("message")
    if message and phase_of(sweep) == "Failed":
        parts.append(Text(str(message), style="red"))
    return Group(*parts)


def sweep_line(sweep: Obj, trials: list[Obj]) -> str:
    done, total = sweep_counts(sweep)
    best = sweep_best(sweep)
    running = [meta(t)["name"] for t in trials if phase_of(t) == "Running"]
    line = f"[{phase_of(sweep)}] {done}/{total} trials"
    line += f" best {best}" if best else ""
    return line + (f" running {', '.join(running)}" if running else "")


# --------------------------------------------------------------------------- describe


def explain(ftj: Obj, details: Details) -> list[str]:
    """Why a FineTuneJob failed or cannot start, from its status, Job and Pods."""
    reasons: list[str] = []
    st = status(ftj)
    if st.get("message") and phase_of(ftj) in ("Failed", "Pending"):
        reasons.append(str(st["message"]))
    for cond in ((details.job or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            reasons.append(_job_failure(details.job or {}, cond))
    for pod in details.pods[-1:]:
        reasons += _pod_problems(pod, ftj)
    out: list[str] = []
    for reason in reasons:  # the status message first; later lines only if they add a reason
        key = reason.split(":", 1)[0]
        if reason and not any(reason in seen or seen in reason or key in seen for seen in out):
            out.append(reason)
    return out


def _job_failure(job: Obj, cond: dict[str, Any]) -> str:
    reason = str(cond.get("reason") or "Failed")
    if reason == "DeadlineExceeded":
        limit = (job.get("spec") or {}).get("activeDeadlineSeconds")
        return (
            f"DeadlineExceeded: the Job ran longer than activeDeadlineSeconds ({limit} s) "
            "and was stopped; raise spec.activeDeadlineSeconds or train fewer steps"
        )
    if reason == "BackoffLimitExceeded":
        limit = (job.get("spec") or {}).get("backoffLimit")
        return f"BackoffLimitExceeded: every attempt failed (backoffLimit {limit})"
    return f"{reason}: {cond.get('message') or 'the Job failed'}"


def _pod_problems(pod: Obj, ftj: Obj) -> list[str]:
    out: list[str] = []
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        state = cs.get("state") or {}
        term, waiting = state.get("terminated") or {}, state.get("waiting") or {}
        if term.get("reason") == "OOMKilled":
            memory = ((ftj.get("spec") or {}).get("resources") or {}).get("memory", "?")
            out.append(
                f"OOMKilled: the trainer ran out of memory (limit {memory}); raise "
                "spec.resources.memory or lower batchSize/maxLength"
            )
        elif term and term.get("exitCode") not in (0, None):
            out.append(_trainer_error(term))
        if "Image" in str(waiting.get("reason") or ""):
            out.append(
                f"{waiting['reason']}: cannot pull image {cs.get('image', '')!r}"
                + (f": {waiting['message']}" if waiting.get("message") else "")
            )
    return out


def _trainer_error(term: dict[str, Any]) -> str:
    text = str(term.get("message") or "")
    try:
        report = json.loads(text)
    except ValueError:
        report = None
    if isinstance(report, dict) and report.get("message"):
        return f"trainer error: {report['message']}"
    tail = "\n".join(text.strip().splitlines()[-5:])
    return f"trainer exited with code {term.get('exitCode')}" + (f":\n{tail}" if tail else "")


def conditions_table(obj: Obj) -> Table:
    table = Table(box=None, header_style="bold")
    for column in ("TYPE", "STATUS", "REASON", "MESSAGE", "SINCE"):
        table.add_column(column, overflow="fold")
    for cond in status(obj).get("conditions") or []:
        since = parse_rfc3339(cond.get("lastTransitionTime"))
        table.add_row(
            str(cond.get("type", "")),
            str(cond.get("status", "")),
            str(cond.get("reason", "")),
            str(cond.get("message", "")),
            duration((datetime.now(UTC) - since).total_seconds()) + " ago" if since else "",
        )
    return table


def pods_table(pods: list[Obj]) -> Table:
    table = Table(box=None, header_style="bold")
    for column in ("POD", "RANK", "PHASE", "STATE", "RESTARTS", "AGE"):
        table.add_column(column)
    for pod in pods:
        statuses = (pod.get("status") or {}).get("containerStatuses") or [{}]
        cs = statuses[0]
        state = cs.get("state") or {}
        kind = next(iter(state), "")
        detail = (state.get(kind) or {}) if kind else {}
        text = kind + (f" ({detail['reason']})" if detail.get("reason") else "")
        if "exitCode" in detail:
            text += f" exit {detail['exitCode']}"
        table.add_row(
            meta(pod).get("name", ""),
            labels(pod).get(INDEX_LABEL, ""),
            str((pod.get("status") or {}).get("phase", "")),
            text,
            str(cs.get("restartCount", "")),
            age(pod),
        )
    return table


def events_table(events: list[Obj], last: int = 10) -> Table:
    table = Table(box=None, header_style="bold")
    for column in ("TYPE", "REASON", "OBJECT", "MESSAGE"):
        table.add_column(column, overflow="fold")
    for event in events[-last:]:
        involved = event.get("involvedObject") or {}
        table.add_row(
            str(event.get("type", "")),
            str(event.get("reason", "")),
            f"{str(involved.get('kind', '')).lower()}/{involved.get('name', '')}",
            str(event.get("message", "")),
        )
    return table


LM_EVAL_PREFIX = "lmEval."


def lm_eval_rows(metrics: dict[str, Any]) -> list[tuple[str, str, float, float | None]]:
    """(task, metric, value, stderr) from status.metrics `lmEval.<task>.<metric>` keys."""
    rows = []
    for key, value in metrics.items():
        if not key.startswith(LM_EVAL_PREFIX) or key.endswith("_stderr"):
            continue
        task, _, metric = key[len(LM_EVAL_PREFIX) :].partition(".")
        # the stderr key sits beside the metric name (`acc_stderr`, before any `.filter`)
        name, dot, filter_name = metric.partition(".")
        stderr = metrics.get(f"{LM_EVAL_PREFIX}{task}.{name}_stderr{dot}{filter_name}")
        rows.append((task, metric, float(value), float(stderr) if stderr is not None else None))
    return sorted(rows)


def lm_eval_table(metrics: dict[str, Any]) -> Table | None:
    rows = lm_eval_rows(metrics)
    if not rows:
        return None
    table = Table(box=None, padding=(0, 2), pad_edge=False)
    for column in ("TASK", "METRIC", "VALUE", "STDERR"):
        table.add_column(column, style="bold" if column == "TASK" else None)
    for task, metric, value, stderr in rows:
        table.add_row(task, metric, f"{value:.4f}", "" if stderr is None else f"{stderr:.4f}")
    return table


def tracking_lines(artifacts: dict[str, Any]) -> list[str]:
    """The MLflow run's link and the registered model version, where the run has them."""
    lines = []
    if artifacts.get("trackingRun"):
        lines.append(f"MLflow run: {artifacts['trackingRun']}")
    if artifacts.get("modelVersion"):
        lines.append(f"registered model: {artifacts['modelVersion']}")
    return lines


BASE_PREFIX = "base."


def base_lines(metrics: dict[str, Any]) -> list[str]:
    """spec.promote.when.beatsBase: the base model's value of each metric beside the run's."""
    lines = []
    for key, value in sorted(metrics.items()):
        name = key[len(BASE_PREFIX) :]
        if key.startswith(BASE_PREFIX) and not name.endswith("_stderr"):
            run = metrics.get(name)
            beside = f" (this run {_fmt(run)})" if run is not None else ""
            lines.append(f"base model {name} {_fmt(value)}{beside}")
    return lines


def promotion_lines(st: dict[str, Any]) -> list[str]:
    """spec.promote: the Promoted condition, the InferenceService and its URL, if any."""
    cond = next((c for c in st.get("conditions") or [] if c.get("type") == "Promoted"), None)
    served = st.get("inferenceService") or {}
    if cond is None and not served:
        return []
    lines = []
    if cond is not None:
        verdict = "yes" if cond.get("status") == "True" else "no"
        lines.append(f"promoted: {verdict} ({cond.get('reason')}): {cond.get('message', '')}")
    if served.get("name"):
        trial = f" (trial {served['trial']})" if served.get("trial") else ""
        url = served.get("url") or "not Ready yet"
        lines.append(f"InferenceService {served['name']}{trial}: {url}")
    return lines


def describe_job(ftj: Obj, details: Details) -> list[RenderableType]:
    """Sections of `finetune describe` for a FineTuneJob."""
    st, spec = status(ftj), ftj.get("spec") or {}
    all_metrics = st.get("metrics") or {}
    plain = {
        k: v
        for k, v in all_metrics.items()
        if not k.startswith(LM_EVAL_PREFIX) and not k.startswith(BASE_PREFIX)
    }
    model = spec.get("model") or {}
    head = Table.grid(padding=(0, 2))
    for key, value in (
        ("Name", f"{meta(ftj).get('namespace')}/{meta(ftj).get('name')}"),
        ("Kind", "FineTuneJob"),
        ("Phase", phase_text(phase_of(ftj))),
        ("Task", str(spec.get("task", ""))),
        ("Model", str(model.get("name") or model.get("path") or "")),
        ("Trial", _trial_of(ftj)),
        ("Progress", progress_cell(ftj)),
        ("Metrics", "  ".join(f"{k} {_fmt(v)}" for k, v in plain.items())),
        ("Tracking", "  ".join(tracking_lines(st.get("artifacts") or {}))),
        ("Started", str(st.get("startTime") or "")),
        ("Completed", str(st.get("completionTime") or "")),
        ("Age", age(ftj)),
    ):
        if value:
            head.add_row(Text(key, style="bold"), value)
    sections: list[RenderableType] = [head]
    lm_eval = lm_eval_table(all_metrics)
    if lm_eval is not None:
        sections += [_section("lm-eval"), lm_eval]
    promoted = promotion_lines(st) + base_lines(all_metrics)
    if promoted:
        sections += [_section("Promotion"), *(Text(f"  {line}") for line in promoted)]
    why = explain(ftj, details)
    if why:
        sections.append(_section("Why it failed" if phase_of(ftj) == "Failed" else "Problems"))
        sections += [Text(f"  {w}", style="red") for w in why]
    sections += [_section("Conditions"), conditions_table(ftj)]
    job = details.job
    if job is not None:
        js = job.get("status") or {}
        counts = ", ".join(f"{k} {js.get(k, 0)}" for k in ("active", "succeeded", "failed"))
        sections += [_section("Job"), Text(f"  {meta(job).get('name')}: {counts}")]
    sections += [_section("Pods"), pods_table(details.pods) if details.pods else Text("  none")]
    sections += [
        _section("Events"),
        events_table(details.events) if details.events else Text("  none"),
    ]
    artifacts = st.get("artifacts") or {}
    if artifacts:
        sections.append(_section("Artifacts"))
        sections += [Text(f"  {k}: {v}") for k, v in artifacts.items()]
    return sections


def _trial_of(ftj: Obj) -> str:
    sweep = labels(ftj).get(SWEEP_LABEL)
    if not sweep:
        return ""
    return f"{trial_number(ftj)} of sweep {sweep}: {params_text(ftj)}".rstrip(": ")


def describe_sweep(sweep: Obj, trials: list[Obj], events: list[Obj]) -> list[RenderableType]:
    st, spec = status(sweep), sweep.get("spec") or {}
    objective = spec.get("objective") or {}
    done, total = sweep_counts(sweep)
    head = Table.grid(padding=(0, 2))
    counts = st.get("trials") or {}
    for key, value in (
        ("Name", f"{meta(sweep).get('namespace')}/{meta(sweep).get('name')}"),
        ("Kind", "HyperparameterSweep"),
        ("Phase", phase_text(phase_of(sweep))),
        ("Objective", f"{objective.get('direction', '')} {objective.get('metric', '')}"),
        ("Trials", bar(done, total, ", ".join(f"{k} {v}" for k, v in counts.items()))),
        ("Best", sweep_best(sweep)),
        ("Message", str(st.get("message") or "")),
        ("Age", age(sweep)),
    ):
        if value:
            head.add_row(Text(key, style="bold"), value)
    best = st.get("bestTrial") or {}
    sections: list[RenderableType] = [head]
    if best.get("params"):
        sections.append(_section("Best trial"))
        sections += [Text(f"  {k}: {_fmt(v)}") for k, v in best["params"].items()]
    promoted = promotion_lines(st)
    if promoted:
        sections += [_section("Promotion"), *(Text(f"  {line}") for line in promoted)]
    sections += [_section("Conditions"), conditions_table(sweep)]
    sections += [_section("Trials"), trials_table(sweep, trials)]
    sections += [_section("Events"), events_table(events) if events else Text("  none")]
    return sections


def _section(title: str) -> Text:
    return Text(f"\n{title}", style="bold underline")
