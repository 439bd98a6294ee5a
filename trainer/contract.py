"""What the operator and the trainer share beyond the stage config: importable without torch.

    from llmtrain.trainer.contract import ExitCode, retryable
    sys.exit(ExitCode.PERMANENT)          # the trainer: a bad dataset, config or template
    retryable(pod_exit_code)              # the operator: retry the stage, or fail the job?

docs/contracts.md §6 states the exit codes for users; tests check that the two agree.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """How `llmtrain worker` (the driver, rank 0) and Ray worker pods end."""

    SUCCEEDED = 0
    # The job's own problem, found at start or in a worker: bad data, a missing dataset, a
    # chat template without generation marks, a bad config. Retrying cannot help.
    PERMANENT = 2
    # EX_TEMPFAIL: the infrastructure failed (a Ray worker died, a node or the head was
    # lost, a network error). Retry from the newest complete checkpoint.
    RETRYABLE = 75


def retryable(exit_code: int | None) -> bool:
    """Every failure is retried within the backoff limit except PERMANENT: unknown codes,
    signals (128+n, e.g. 137 for an OOM kill) and a missing code all count as transient."""
    return exit_code != ExitCode.PERMANENT
