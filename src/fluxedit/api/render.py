"""A job's native body: what GET status and GET result answer, and what a native webhook carries.

One renderer for both, so that a webhook's `data` is exactly the result body of its
moment. Absolute URLs start at `base`: the public URL, or the base the caller used.
"""

from __future__ import annotations

from fluxedit.jobs.job import Job
from fluxedit.jobs.state import JobState
from fluxedit.schema import EditOutput, JobError, Progress, ResultResponse, StatusResponse, Timings
from fluxedit.storage.base import Storage


def request_urls(base: str, job_id: str) -> dict[str, str]:
    root = f"{base.rstrip('/')}/v1/requests/{job_id}"
    return {"status_url": f"{root}/status", "result_url": f"{root}/result", "cancel_url": f"{root}/cancel"}


def status_fields(job: Job, base: str, queue_position: int | None = None) -> dict:
    """The status body's fields; `queue_position` is shown while the job is in_queue."""
    fields = dict(
        request_id=job.id,
        model_id=job.model_id,
        status=job.state,
        attempts=job.attempts,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        webhook=job.webhook_url,
        webhook_events_filter=job.webhook_filter if job.webhook_url else None,
        **request_urls(base, job.id),
    )
    if job.state == JobState.in_queue:
        fields["queue_position"] = queue_position
    if job.state == JobState.in_progress:
        fields.update(phase=job.phase, cancel_requested=job.cancel_requested)
    if job.total_steps:
        fields["progress"] = Progress(step=job.step or 0, total=job.total_steps)
    if job.error_code:
        fields["error"] = JobError(code=job.error_code, message=job.error_message or "", index=job.error_index)
    return fields


def status_response(job: Job, base: str, queue_position: int | None = None) -> StatusResponse:
    return StatusResponse(**status_fields(job, base, queue_position))


def result_response(job: Job, base: str, storage: Storage, queue_position: int | None = None) -> ResultResponse:
    """The status fields plus, once completed, the outputs (URLs from `storage`) and the input."""
    fields = status_fields(job, base, queue_position)
    if job.state == JobState.completed:
        fields.update(
            output=EditOutput(images=[storage.url(key, base.rstrip("/")) for key in job.outputs]),
            seed=job.seed,
            width=job.width,
            height=job.height,
            timings=Timings(**(job.timings or {})),
        )
    return ResultResponse(**fields, input=job.input)
