"""A job as fal's queue API shows it: its URLs, its status and its output."""

from __future__ import annotations

from fluxedit.jobs.job import Job
from fluxedit.jobs.state import JobState
from fluxedit.storage import guess_content_type
from fluxedit.storage.base import Storage

FAL_STATES = {JobState.in_queue: "IN_QUEUE", JobState.in_progress: "IN_PROGRESS"}  # else COMPLETED


def app_root(app_id: str) -> str:
    """`fal-ai/flux-2-pro/edit` -> `fal-ai/flux-2-pro`: fal's requests live under owner/alias, not the sub-path."""
    return "/".join(app_id.strip("/").split("/")[:2])


def queue_urls(face_url: str, app_id: str, request_id: str) -> dict[str, str]:
    """The response, status and cancel URLs of a request, under the face's base URL (`.../fal`)."""
    response_url = f"{face_url}/{app_root(app_id)}/requests/{request_id}"
    return {
        "response_url": response_url,
        "status_url": f"{response_url}/status",
        "cancel_url": f"{response_url}/cancel",
    }


def fal_status(job: Job, urls: dict[str, str], *, queue_position: int | None, with_logs: bool) -> dict:
    """fal's status body: IN_QUEUE (queue_position, 0 = next), IN_PROGRESS or COMPLETED (with error, if it failed)."""
    body: dict = {
        "status": FAL_STATES.get(job.state, "COMPLETED"),
        "request_id": job.id,
        **urls,
        "logs": step_logs(job) if with_logs else None,  # fal's client reads the key even without logs
    }
    if job.state == JobState.in_queue:
        body["queue_position"] = queue_position or 0
    if job.state.finished:
        inference_s = (job.timings or {}).get("inference_s")
        body["metrics"] = {"inference_time": inference_s} if inference_s is not None else {}
    if job.state in (JobState.failed, JobState.cancelled):
        body["error"] = job.error_message or "The request was cancelled."
        body["error_type"] = job.error_code or "cancelled"
    return body


def step_logs(job: Job) -> list[dict]:
    """One log line per denoising step done (the job row keeps only the latest step, not when each ran)."""
    if not job.total_steps:
        return []
    when = (job.started_at or job.created_at).isoformat()
    return [
        {"message": f"Denoising step {step}/{job.total_steps}", "level": "INFO", "source": "user", "timestamp": when}
        for step in range(1, (job.step or 0) + 1)
    ]


def output_images(storage: Storage, job: Job, base: str) -> list[tuple[str, str]]:
    """(URL, content type) of each output of a completed job."""
    return [(storage.url(key, base), guess_content_type(key)) for key in job.outputs]


def fal_output(job: Job, images: list[tuple[str, str]]) -> dict:
    """fal's FLUX.2 edit output for a completed job; `images` are (url, content type) pairs."""
    inference_s = (job.timings or {}).get("inference_s")
    return {
        "images": [
            {"url": url, "width": job.width, "height": job.height, "content_type": content_type}
            for url, content_type in images
        ],
        "seed": job.seed,
        "timings": {"inference": inference_s} if inference_s is not None else {},
        # Nothing that completed was flagged: BFL fails what its moderation refuses, and local
        # models run no checker (enable_safety_checker: true is refused for them).
        "has_nsfw_concepts": [False] * len(images),
        "prompt": job.input.get("prompt"),
    }
