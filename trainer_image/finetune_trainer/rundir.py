"""The artifact directory of a finished run: names shared by the code that writes it
(`run`) and the code that reads it (`predict`, a distillation teacher), so that readers
need not import `run`."""

from __future__ import annotations

RUN_INFO = "run.json"  # task, format, model folder, labels, maxLength
