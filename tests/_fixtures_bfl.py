"""A local server that speaks Black Forest Labs' documented API, and its fixtures.

No hosted API is reachable here, so this is the one test double: a real FastAPI app
under uvicorn on 127.0.0.1, speaking the protocol described in
fluxedit/engines/bfl_client.py (submit -> {id, polling_url}; get_result -> Pending ... Ready
with result.sample; a delivery URL serving the image). Scripted cases are chosen by
text in the prompt:

    [error]               polls: Pending, then Error with details
    [error-leak]          like [error], but the details echo the x-key it got
    [failed]              polls: Failed
    [not-found]           polls: Task not found
    [moderated-request]   first poll: Request Moderated
    [moderated-content]   polls: Pending, then Content Moderated
    [429x2]               the first two submits of this prompt answer 429
    [429]                 every submit answers 429
    [slow]                six Pendings with rising progress, then Ready
    [foreign-poll]        the polling_url points at another origin (127.0.0.2)
    [named-delivery]      the result URL names the host delivery.test (same port), not 127.0.0.1
    [delivery-to-data]    the result URL answers 302 to a data: URI

Fixtures: `fake_bfl` (the running server, state reset per test; `.url`, `.api_key`,
`.submits`, `.downloads`) and `bfl_settings` (Settings pointed at it).
It records what was sent, never the key itself.
"""

from __future__ import annotations

import base64
import io
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image

from fluxedit.config import Settings

FAKE_BFL_KEY = "bfl-test-key-5f0c1d2e3a4b"
MODELS = ("flux-2-pro", "flux-2-flex", "flux-2-max")
IMAGE_FIELDS = ("input_image", *(f"input_image_{n}" for n in range(2, 9)))


@dataclass
class _Task:
    id: str
    prompt: str
    width: int
    height: int
    seed: int
    output_format: str
    script: list[str]  # statuses the polls walk through; the last one repeats
    key_seen: str = ""
    polls: int = 0
    ready_at: float | None = None


@dataclass
class FakeBfl:
    url: str = ""
    api_key: str = FAKE_BFL_KEY
    result_ttl_s: float = 600.0
    submits: list[dict] = field(default_factory=list)  # every accepted or refused submit, key left out
    downloads: list[str] = field(default_factory=list)  # task ids whose result was fetched
    tasks: dict[str, _Task] = field(default_factory=dict)
    active: set[str] = field(default_factory=set)  # tasks submitted and not yet finished, as BFL counts them
    most_active: int = 0  # the most tasks that were active at once
    _busy_counts: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self._lock:
            self.submits.clear()
            self.downloads.clear()
            self.tasks.clear()
            self.active.clear()
            self.most_active = 0
            self._busy_counts.clear()

    @property
    def accepted(self) -> list[dict]:
        return [s for s in self.submits if s["answer"] == 200]


def _script(prompt: str) -> list[str]:
    if "[moderated-request]" in prompt:
        return ["Request Moderated"]
    if "[moderated-content]" in prompt:
        return ["Pending", "Content Moderated"]
    if "[error" in prompt:
        return ["Pending", "Error"]
    if "[failed]" in prompt:
        return ["Failed"]
    if "[not-found]" in prompt:
        return ["Task not found"]
    if "[slow]" in prompt:
        return ["Pending"] * 6 + ["Ready"]
    return ["Pending", "Ready"]


def _image_bytes(width: int, height: int, fmt: str, seed: int) -> bytes:
    colour = (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256)
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, format="PNG" if fmt == "png" else "JPEG")
    return buf.getvalue()


def create_app(fake: FakeBfl) -> FastAPI:
    app = FastAPI()

    def auth(request: Request) -> JSONResponse | None:
        key = request.headers.get("x-key")
        if not key:
            return JSONResponse({"detail": "Not authenticated"}, status_code=401)
        if key != fake.api_key:
            return JSONResponse({"detail": "Invalid API key"}, status_code=403)
        return None

    @app.post("/v1/{model}")
    async def submit(model: str, request: Request):
        body = await request.json()
        prompt = str(body.get("prompt", ""))
        record = {
            "model": model,
            "prompt": prompt,
            "fields": sorted(body),
            "images": [k for k in IMAGE_FIELDS if body.get(k)],
            **{
                k: body.get(k)
                for k in ("width", "height", "seed", "output_format", "safety_tolerance", "steps", "guidance")
            },
        }
        refused = auth(request)
        answer = refused or _accept(fake, model, body, record)
        record["answer"] = answer.status_code if isinstance(answer, Response) else 200
        with fake._lock:
            fake.submits.append(record)
        return answer

    @app.get("/v1/get_result")
    def get_result(id: str, request: Request):
        refused = auth(request)
        if refused:
            return refused
        task = fake.tasks.get(id)
        if task is None:
            return {"id": id, "status": "Task not found", "result": None}
        status = task.script[min(task.polls, len(task.script) - 1)]
        task.polls += 1
        if status != "Pending":
            with fake._lock:
                fake.active.discard(id)
        answer: dict = {"id": id, "status": status, "result": None, "progress": None, "details": None}
        if status == "Pending":
            answer["progress"] = round(task.polls / len(task.script), 2)
        elif status == "Ready":
            task.ready_at = task.ready_at or time.monotonic()
            ext = "png" if task.output_format == "png" else "jpeg"
            origin = fake.url.replace("127.0.0.1", "delivery.test") if "[named-delivery]" in task.prompt else fake.url
            answer["result"] = {
                "sample": f"{origin}/delivery/{id}/sample.{ext}?sig=fake",
                "prompt": task.prompt,
                "seed": task.seed,
            }
            answer["progress"] = 1.0
        elif status in ("Request Moderated", "Content Moderated"):
            answer["details"] = {"Moderation Reasons": ["Fake moderation for tests"]}
        elif status == "Error":
            message = "Internal generation failure (fake)"
            if "[error-leak]" in task.prompt:
                message += f"; request headers were x-key={task.key_seen}"
            answer["details"] = {"message": message}
        return answer

    @app.get("/delivery/{task_id}/sample.{ext}")
    def delivery(task_id: str, ext: str):
        task = fake.tasks.get(task_id)
        if task is None or task.ready_at is None:
            return Response("not found", status_code=404)
        if time.monotonic() - task.ready_at > fake.result_ttl_s:
            return Response("expired", status_code=403)
        if "[delivery-to-data]" in task.prompt:
            data_uri = "data:image/png;base64," + base64.b64encode(b"\0" * 60_000).decode()
            return Response(status_code=302, headers={"Location": data_uri})
        with fake._lock:
            fake.downloads.append(task_id)
        media = "image/png" if ext == "png" else "image/jpeg"
        return Response(_image_bytes(task.width, task.height, ext, task.seed), media_type=media)

    return app


def _accept(fake: FakeBfl, model: str, body: dict, record: dict) -> JSONResponse | dict:
    prompt = record["prompt"]
    if model not in MODELS:
        return JSONResponse({"detail": "Not Found"}, status_code=404)
    if not prompt:
        return JSONResponse({"detail": [{"loc": ["body", "prompt"], "msg": "Field required"}]}, status_code=422)
    extra_images = [k for k in body if k.startswith("input_image") and k not in IMAGE_FIELDS]
    if extra_images:
        return JSONResponse({"detail": f"Unknown fields: {extra_images}"}, status_code=422)
    width, height = body.get("width") or 1024, body.get("height") or 1024
    if width < 64 or height < 64:
        return JSONResponse({"detail": "width and height must be at least 64"}, status_code=422)
    for name in record["images"]:
        try:
            Image.open(io.BytesIO(base64.b64decode(body[name], validate=True))).verify()
        except Exception:
            return JSONResponse({"detail": f"{name} is not a base64 image"}, status_code=422)
    with fake._lock:
        if "[429]" in prompt:
            return JSONResponse({"detail": "Too many active tasks"}, status_code=429)
        if "[429x2]" in prompt:
            seen = fake._busy_counts.get(prompt, 0)
            fake._busy_counts[prompt] = seen + 1
            if seen < 2:
                return JSONResponse({"detail": "Too many active tasks"}, status_code=429)
    task = _Task(
        id=str(uuid.uuid4()),
        prompt=prompt,
        width=width,
        height=height,
        seed=body.get("seed") or 0,
        output_format=body.get("output_format") or "jpeg",
        script=_script(prompt),
        key_seen=fake.api_key if "[error-leak]" in prompt else "",
    )
    with fake._lock:
        fake.tasks[task.id] = task
        fake.active.add(task.id)
        fake.most_active = max(fake.most_active, len(fake.active))
    origin = fake.url.replace("127.0.0.1", "127.0.0.2") if "[foreign-poll]" in prompt else fake.url
    return {
        "id": task.id,
        "polling_url": f"{origin}/v1/get_result?id={task.id}",
        "cost": 3.0,
        "input_mp": 0.0,
        "output_mp": 0.0,
    }


class FakeBflServer:
    """Runs a FakeBfl app under uvicorn on 127.0.0.1 in a thread."""

    def __init__(self) -> None:
        self.fake = FakeBfl()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.fake.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        config = uvicorn.Config(create_app(self.fake), log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def start(self) -> FakeBfl:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fake BFL server did not start")
            time.sleep(0.01)
        return self.fake

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()


@pytest.fixture(scope="session")
def _fake_bfl_server():
    server = FakeBflServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fake_bfl(_fake_bfl_server) -> FakeBfl:
    """The running fake BFL API (http://127.0.0.1:PORT), with no tasks or records."""
    _fake_bfl_server.fake.reset()
    return _fake_bfl_server.fake


@pytest.fixture
def bfl_settings(fake_bfl: FakeBfl, tmp_path) -> Settings:
    """Settings that send BFL engines to the fake server, with short waits."""
    return Settings(
        data_dir=tmp_path,
        bfl_api_key=fake_bfl.api_key,
        bfl_base_url=fake_bfl.url,
        fetch_allow=["127.0.0.1"],
        bfl_backoff_s=0.01,
        bfl_busy_retry_s=5.0,
        bfl_network_retries=2,
    )
