"""Errors the user can fix. Each message names the file, row, column or model at fault."""

from __future__ import annotations

from finetune_api.conditions import CHAT_TEMPLATE
from finetune_api.manifest import UserError


class TrainerUserError(UserError):
    """Base class for trainer errors the user can fix (bad data, model, spec, run dir)."""

    reason: str | None = None
    """The Failed phase's reason (status.reason, the Failed condition), when it has one."""


class DataError(TrainerUserError):
    """A dataset that cannot be used: unreadable file, missing column, empty, bad label."""


class ModelError(TrainerUserError):
    """A model that cannot be loaded: missing path, uncached hub id, bad LoRA targets."""


class ChatTemplateError(TrainerUserError):
    """A chat template that would train the wrong tokens, or none (the template gate)."""

    reason = CHAT_TEMPLATE


class RunDirError(TrainerUserError):
    """A run directory that does not hold a finished run (for predict)."""
