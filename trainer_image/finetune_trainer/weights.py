"""One line about newly initialised weights instead of transformers' LOAD REPORT table.

transformers 5.x logs a multi-line "LOAD REPORT" table (as a warning) whenever a
checkpoint lacks weights the model needs, which for fine-tuning is the normal case of a
new task head. `quiet_load_report` silences that table around `from_pretrained`, and
`new_weights_note` says the same in words from the loading info: "new classification
head: 2 labels", plus a warning when weights of the base model itself start random.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

# The logger transformers' modeling_utils passes to log_state_dict_report.
LOAD_REPORT_LOGGER = "transformers.modeling_utils"
SHOWN_KEYS = 3


def _not_a_load_report(record: logging.LogRecord) -> bool:
    return "LOAD REPORT" not in str(record.msg)


@contextlib.contextmanager
def quiet_load_report() -> Iterator[None]:
    """Drop the LOAD REPORT record for the duration; other records still surface.

    A filter, not a higher level: modeling_utils runs its tensor-parallel plan check
    (and logs "layers were not sharded") when its logger's own level is WARNING or above.
    """
    logger = logging.getLogger(LOAD_REPORT_LOGGER)
    logger.addFilter(_not_a_load_report)
    try:
        yield
    finally:
        logger.removeFilter(_not_a_load_report)


def new_weights_note(model: Any, info: dict[str, Any], head_note: Callable[[int], str]) -> str:
    """What `from_pretrained(..., output_loading_info=True)` initialised anew, in one line
    ("" when every weight came from the checkpoint); `head_note(tensors)` describes a new
    head (the recipe's words: "new classification head: 2 labels")."""
    new = _new_keys(info)
    if not new:
        return ""
    base = _base_keys(model, new)
    head = new - set(base)
    parts = []
    if head:
        parts.append(head_note(len(head)))
    if base:
        shown = ", ".join(base[:SHOWN_KEYS]) + (", ..." if len(base) > SHOWN_KEYS else "")
        parts.append(
            f"warning: {len(base)} weights of the base model are not in the checkpoint and "
            f"start random ({shown})"
        )
    return "; ".join(parts)


def new_base_modules(model: Any, info: dict[str, Any]) -> list[str]:
    """Modules of the base model whose weights start random, e.g. the pooler a masked-LM
    checkpoint lacks. A LoRA run must train and save them with the adapter
    (`modules_to_save`), or a reloaded adapter meets another random module."""
    return sorted({key.rsplit(".", 1)[0] for key in _base_keys(model, _new_keys(info))})


def _new_keys(info: dict[str, Any]) -> set[str]:
    new = set(info.get("missing_keys") or ())
    return new | {key[0] for key in info.get("mismatched_keys") or ()}


def _base_keys(model: Any, keys: set[str]) -> list[str]:
    prefix = str(getattr(model, "base_model_prefix", "") or "")
    return sorted(k for k in keys if prefix and k.startswith(prefix + "."))
