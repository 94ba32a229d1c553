"""A job as BFL's get_result answer, and fluxedit's errors as BFL's `{"detail": ...}`."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse

from fluxedit.api.routes import base_url
from fluxedit.errors import FluxeditError
from fluxedit.jobs.job import Job
from fluxedit.jobs.state import JobState
from fluxedit.runtime import Runtime

PREFIX = "/bfl"
MODERATED = "content_moderated"


def detail(request: Request, error: FluxeditError) -> JSONResponse:
    headers = {}
    if getattr(error, "retry_after_s", None) is not None:
        headers["Retry-After"] = str(int(max(1, error.retry_after_s)))
    return JSONResponse({"detail": error.message}, status_code=error.status, headers=headers)


def polling_url(request: Request, job_id: str) -> str:
    return f"{base_url(request)}{PREFIX}/v1/get_result?id={job_id}"


def not_found(task_id: str) -> dict:
    return {"id": task_id, "status": "Task not found", "result": None, "progress": None, "details": None}


def task_result(base: str, runtime: Runtime, job: Job) -> dict:
    """BFL's answer for a task, its URLs under `base` (the server's public URL): Pending with progress
    (0..1), Ready with result.sample, Error, or moderated. A plain function of the job, for get_result
    and webhook bodies alike."""
    answer = {"id": job.id, "status": status(job), "result": None, "progress": None, "details": None, "preview": None}
    if not job.state.finished:
        answer["progress"] = round((job.step or 0) / job.total_steps, 3) if job.total_steps else 0.0
    elif job.state == JobState.completed and job.outputs:
        answer["result"] = _sample(base, runtime, job)
    elif job.state == JobState.cancelled:
        answer["details"] = {"message": "The task was cancelled."}
    else:
        answer["details"] = {"code": job.error_code, "message": job.error_message}
    return answer


def status(job: Job) -> str:
    if not job.state.finished:
        return "Pending"
    if job.state == JobState.completed:
        return "Ready"
    return "Content Moderated" if job.error_code == MODERATED else "Error"


def _sample(base: str, runtime: Runtime, job: Job) -> dict:
    started, finished = job.started_at, job.finished_at
    return {
        "sample": runtime.storage.url(job.outputs[0], base),
        "prompt": job.input.get("prompt"),
        "seed": job.seed,
        "start_time": started.timestamp() if started else None,
        "end_time": finished.timestamp() if finished else None,
        "duration": (finished - started).total_seconds() if started and finished else None,
    }
