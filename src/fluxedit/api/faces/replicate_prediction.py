"""A job as Replicate's prediction object, and fluxedit's errors as Replicate's problem+json."""

from __future__ import annotations

from datetime import datetime

from fastapi import Request
from fastapi.responses import JSONResponse

from fluxedit.api.faces.replicate_input import model_table, replicate_name, version_id
from fluxedit.errors import FluxeditError
from fluxedit.jobs.job import Job
from fluxedit.jobs.state import JobState
from fluxedit.runtime import Runtime

PREFIX = "/replicate"
STATUS = {
    JobState.in_queue: "starting",
    JobState.in_progress: "processing",
    JobState.completed: "succeeded",
    JobState.failed: "failed",
    JobState.cancelled: "canceled",
}


def problem(request: Request, error: FluxeditError) -> JSONResponse:
    """Replicate's error body: the client's ReplicateError reads title, detail and status from it."""
    body = {
        "type": error.code,
        "title": error.code.replace("_", " ").capitalize(),
        "detail": error.message,
        "status": error.status,
    }
    headers = {}
    if getattr(error, "retry_after_s", None) is not None:
        headers["Retry-After"] = str(int(max(1, error.retry_after_s)))
    return JSONResponse(body, status_code=error.status, media_type="application/problem+json", headers=headers)


def prediction(base: str, runtime: Runtime, job: Job, *, waited: bool = False) -> dict:
    """The prediction object of a job, its URLs under `base` (the server's public URL); a plain
    function of the job, for answers and webhook bodies alike. `waited`: answering a `Prefer: wait`
    that ran out, so an unfinished job reads "starting", which tells Replicate's client to keep polling."""
    root = f"{base}{PREFIX}/v1/predictions/{job.id}"
    status = "starting" if waited and not job.state.finished else STATUS[job.state]
    return {
        "id": job.id,
        "model": replicate_name(model_table(runtime.settings.replicate_models), job.model_id),
        "version": version_id(job.model_id),
        "input": job.input,
        "output": _output(base, runtime, job),
        "error": job.error_message if job.state == JobState.failed else None,
        "logs": _logs(job),
        "status": status,
        "data_removed": False,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "completed_at": _iso(job.finished_at),
        "urls": {"get": root, "cancel": f"{root}/cancel", "stream": f"{root}/stream"},
        "metrics": _metrics(job),
    }


def _output(base: str, runtime: Runtime, job: Job) -> str | list[str] | None:
    if job.state != JobState.completed or not job.outputs:
        return None
    urls = [runtime.storage.url(key, base) for key in job.outputs]
    return urls[0] if len(urls) == 1 else urls  # Replicate's FLUX.2 models output one URI


def _logs(job: Job) -> str:
    if not job.total_steps:
        return ""
    return f"step {job.step or 0}/{job.total_steps}\n"


def _metrics(job: Job) -> dict:
    if job.started_at is None or job.finished_at is None:
        return {}
    return {"predict_time": round((job.finished_at - job.started_at).total_seconds(), 3)}


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")
