"""The errors the job store raises, each with its stable code and HTTP status."""

from __future__ import annotations

from fluxedit.errors import FluxeditError
from fluxedit.jobs.state import JobState


class QueueFull(FluxeditError):
    """The model's queue is at its limit; the caller should retry later."""

    code = "queue_full"
    status = 429

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class JobConflict(FluxeditError):
    """The job is in a state that does not allow the operation (e.g. cancel after it finished)."""

    code = "already_finished"
    status = 409

    def __init__(self, message: str, *, state: JobState, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.state = state


class IdempotencyConflict(FluxeditError):
    """An idempotency key was reused for a different request."""

    code = "idempotency_key_reused"
    status = 409


class LeaseLost(FluxeditError):
    """This worker no longer owns the job (its lease expired and the job was recovered).

    The worker must stop and write nothing more for the job.
    """

    code = "lease_lost"
    status = 409
