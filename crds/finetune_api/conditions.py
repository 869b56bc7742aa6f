"""The one clock and the one metav1.Condition builder, shared by every status writer
(the operator's FineTuneJob and sweep statuses and the trainer's status sink)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from finetune_api.models import Condition

_REASON_RE = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")


# Failed reasons the trainer itself reports (status.reason, the termination message):
# they name a failure better than the Job controller's BackoffLimitExceeded.
CHAT_TEMPLATE = "ChatTemplate"
TRAINER_REASONS = frozenset({CHAT_TEMPLATE})
# Suspended because spec.budget is spent (the trainer saved a checkpoint and stopped).
BUDGET_EXHAUSTED = "BudgetExhausted"


def now_rfc3339() -> str:
    """The current time as a metav1.Time string (UTC, whole seconds)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(value: Any) -> datetime | None:
    """A metav1.Time string as an aware datetime (None when absent or malformed)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def safe_reason(reason: str) -> str:
    """A metav1.Condition-legal reason (CamelCase letters, digits, _ , :)."""
    if _REASON_RE.match(reason):
        return reason
    cleaned = re.sub(r"[^A-Za-z0-9_,:]", "", reason).lstrip("0123456789_,:").rstrip(",:")
    return cleaned or "Unknown"


def condition(
    ctype: str,
    truth: bool,
    reason: str,
    message: str,
    *,
    generation: int | None,
    now: str,
    previous: Iterable[Mapping[str, Any]] = (),
) -> Condition:
    """A metav1.Condition; lastTransitionTime moves only when the condition's status flips
    (it is kept from the previous condition of the same type otherwise)."""
    status = "True" if truth else "False"
    transition = now
    for old in previous:
        if old.get("type") == ctype and old.get("status") == status:
            transition = str(old.get("lastTransitionTime") or now)
    return Condition(
        type=ctype,
        status=status,
        reason=safe_reason(reason),
        message=message,
        last_transition_time=transition,
        observed_generation=generation,
    )
