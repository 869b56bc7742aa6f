"""`python -m finetune_trainer.torchrun ARGS`: torchrun (`torch.distributed.run`) with the
same arguments and `PET_*` environment, minus the traceback when a worker fails.

Each worker already prints its own `error:` line and writes the Failed status and
termination message (rank 0); torchrun's agent would add a `ChildFailedError` traceback
and a failure table on top. Here the agent says one line instead and exits with the first
failed worker's exit code, so the pod log and `finetune run` end as a one-process run does.
"""

from __future__ import annotations

import sys

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv if argv is not None else sys.argv[1:])
    try:
        run(args)
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        code = failure.exitcode if failure.exitcode > 0 else 1
        print(
            f"error: training worker rank {rank} failed (exit code {failure.exitcode}); "
            f"{len(err.failures)} of {args.nproc_per_node} local workers failed",
            file=sys.stderr,
            flush=True,
        )
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
