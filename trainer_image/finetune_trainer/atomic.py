"""Saving a model directory all or nothing: write it under a temporary name beside the
target, then rename it into place. A save that fails (a full disk, a read-only mount)
leaves no partial `model/` behind, and the directory's earlier model, if any, untouched;
the error names the path and the reason in one line (a RunDirError).
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from finetune_trainer.errors import RunDirError

NO_SPACE = "No space left on device"


def _causes(err: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        yield cause
        cause = cause.__cause__ or cause.__context__


def no_space(err: BaseException) -> bool:
    """A full disk or quota, as an OSError or as a library's own error text (safetensors
    raises SafetensorError, not OSError, with the OS message inside)."""
    return any(
        (isinstance(c, OSError) and c.errno in (errno.ENOSPC, errno.EDQUOT)) or NO_SPACE in str(c)
        for c in _causes(err)
    )


def _os_error(err: BaseException) -> OSError | None:
    return next((c for c in _causes(err) if isinstance(c, OSError)), None)


def save_dir(target: Path, *writers: Callable[[Path], object]) -> Path:
    """Each `writer(partial)` in turn fills a fresh directory; then it replaces `target`."""
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        for write in writers:
            write(partial)
    except Exception as err:
        shutil.rmtree(partial, ignore_errors=True)
        kept = f"; the earlier {target.name}/ there is untouched" if target.exists() else ""
        if no_space(err):
            raise RunDirError(
                f"{target}: no space left on device while saving the model; nothing of it "
                f"was kept{kept}. Free some space (df -h {target.parent}) and run again"
            ) from None
        os_err = _os_error(err)
        if os_err is not None:
            raise RunDirError(
                f"{target}: cannot save the model: {os_err.strerror or os_err}; nothing of it "
                f"was kept{kept}"
            ) from None
        raise
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(partial, target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def remove_stale(output_dir: Path, names: Iterable[str], keep: Iterable[str]) -> None:
    """Remove the model folders an earlier run of another format left (after this run's
    own were saved): full vs LoRA adapter vs merged."""
    kept = {Path(k).name for k in keep}
    for name in names:
        if name not in kept:
            shutil.rmtree(output_dir / name, ignore_errors=True)
