"""The worker step and the local dispatcher with real parts: the tiny FLUX.2 model, the job
store (SQLite and PostgreSQL), local file storage and reference images over HTTP on 127.0.0.1."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import ExifTags, Image

from _fixtures_images import png_data_uri
from fluxedit.config import Settings
from fluxedit.jobs.dispatch import LocalDispatcher
from fluxedit.jobs.periodic import Periodic
from fluxedit.jobs.state import JobState
from fluxedit.jobs.store import Job, JobStore
from fluxedit.jobs.worker import INTERNAL_ERROR_MESSAGE, WorkerContext, run_job
from fluxedit.sizes import auto_size
from fluxedit.storage import LocalStorage, UrlSigner, resolve_issued_url

SRC = str(Path(__file__).resolve().parents[1] / "src")
MODEL = "blackforestlabs/flux-2/klein-4b/edit"
ALIAS = "blackforestlabs/flux-2/pro/edit"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        fetch_allow=["127.0.0.1"],  # the test image server is on loopback
        lease_s=10,
        poll_interval_s=0.2,
        recover_interval_s=0.2,
    )


@pytest.fixture
def signer() -> UrlSigner:
    return UrlSigner(b"s" * 32)


@pytest.fixture
def storage(tmp_path: Path, signer: UrlSigner) -> LocalStorage:
    return LocalStorage(tmp_path / "files", signer)


def wait_until(predicate, timeout: float = 120.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.02)


def wait_finished(store: JobStore, job_id: str, timeout: float = 120.0) -> Job:
    return wait_until(lambda: (j := store.get(job_id)).state.finished and j, timeout, f"job {job_id} finishing")


def submit(store: JobStore, model: str = MODEL, **input) -> Job:
    body = {"prompt": "a red hat on the cat", "image_urls": [png_data_uri()], "image_size": "square", **input}
    return store.submit("key-a", model, body, max_queued=100)


def run(job_id: str, store, engine, storage, settings, resolve_local=None):
    return run_job(job_id, engine, WorkerContext(store, storage, settings, resolve_local), worker_id="w1")


def test_job_is_edited_and_its_images_stored(job_store, tiny_engine, storage, settings, image_server) -> None:
    image_server.add_image("/jobs-cat.png", size=(160, 120), color=(200, 30, 30))
    image_server.add_image("/jobs-hat.jpg", size=(96, 96), color=(20, 200, 30), fmt="JPEG")
    job = submit(
        job_store,
        image_urls=[image_server.url("/jobs-cat.png"), image_server.url("/jobs-hat.jpg")],
        image_size={"width": 128, "height": 96},
        num_inference_steps=3,
        seed=42,
        output_format="png",
    )
    assert run(job.id, job_store, tiny_engine, storage, settings) is JobState.completed

    done = job_store.get(job.id)
    assert done.state is JobState.completed and done.attempts == 1
    assert done.outputs == [f"outputs/{job.id}/0.png"]
    assert (done.seed, done.width, done.height) == (42, 128, 96)
    assert (done.step, done.total_steps) == (3, 3)
    assert set(done.timings) == {"queue_s", "inference_s", "total_s"}
    assert done.timings["total_s"] >= done.timings["inference_s"] >= 0
    output = Image.open(io.BytesIO(storage.get(done.outputs[0])))
    assert output.format == "PNG" and output.size == (128, 96)


def test_auto_size_follows_the_first_reference(job_store, tiny_engine, storage, settings) -> None:
    # 160x120 goes to the model cropped to 160x112; "auto" keeps the picture's own 4:3.
    job = submit(job_store, image_urls=[png_data_uri((160, 120))], image_size="auto", num_inference_steps=1)
    assert run(job.id, job_store, tiny_engine, storage, settings) is JobState.completed
    done = job_store.get(job.id)
    assert (done.width, done.height) == auto_size(160, 120) == (1184, 880)
    assert done.outputs[0].endswith(".jpg")
    assert Image.open(io.BytesIO(storage.get(done.outputs[0]))).format == "JPEG"


def test_auto_size_of_a_turned_photo_is_upright(job_store, tiny_engine, storage, settings) -> None:
    # Stored 256x128 with EXIF "rotate 90": people see it 128 wide, 256 tall.
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    buffer = io.BytesIO()
    Image.new("RGB", (256, 128), (10, 10, 10)).save(buffer, "JPEG", exif=exif)
    uri = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
    job = submit(job_store, image_urls=[uri], image_size="auto", num_inference_steps=1)
    assert run(job.id, job_store, tiny_engine, storage, settings) is JobState.completed
    done = job_store.get(job.id)
    assert (done.width, done.height) == auto_size(128, 256)
    assert done.height > done.width


def test_uploaded_file_url_is_read_from_storage_not_fetched(
    job_store, tiny_engine, storage, signer, settings, connections
) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (80, 80), (90, 90, 90)).save(buffer, "PNG")
    storage.put("uploads/key-a/ref.png", buffer.getvalue(), "image/png")
    # The host does not exist: a network fetch could only fail.
    url = storage.url("uploads/key-a/ref.png", "http://fluxedit-upload-host.invalid")
    job = submit(job_store, image_urls=[url], num_inference_steps=1)
    state = run(
        job.id,
        job_store,
        tiny_engine,
        storage,
        settings,
        resolve_local=lambda u: resolve_issued_url(u, storage, signer),
    )
    assert state is JobState.completed
    assert "fluxedit-upload-host.invalid" not in connections.lookups


def test_unusable_reference_fails_with_its_code_and_index(
    job_store, tiny_engine, storage, settings, image_server
) -> None:
    image_server.add("/jobs-notes.txt", b"these are not pixels", "text/plain")
    job = submit(job_store, image_urls=[png_data_uri(), image_server.url("/jobs-notes.txt")])
    assert run(job.id, job_store, tiny_engine, storage, settings) is JobState.failed
    failed = job_store.get(job.id)
    assert failed.error_code == "input_not_image"
    assert failed.error_index == 1
    assert "image_urls[1]" in failed.error_message
    assert failed.outputs == []


def test_unexpected_error_is_stored_as_a_generic_sentence(job_store, tiny_engine, tmp_path, signer, settings) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the storage folder should be")
    broken = LocalStorage(blocker, signer)
    job = submit(job_store, num_inference_steps=1)
    assert run(job.id, job_store, tiny_engine, broken, settings) is JobState.failed
    failed = job_store.get(job.id)
    assert failed.error_code == "internal_error"
    assert failed.error_message == INTERNAL_ERROR_MESSAGE
    assert "Traceback" not in failed.error_message and str(blocker) not in failed.error_message


def test_cancelled_job_is_never_started(job_store, tiny_engine, storage, settings) -> None:
    job = submit(job_store)
    job_store.cancel(job.id, "key-a")
    assert run(job.id, job_store, tiny_engine, storage, settings) is None
    cancelled = job_store.get(job.id)
    assert cancelled.state is JobState.cancelled and cancelled.attempts == 0 and cancelled.started_at is None


class TimedEngine:
    """An engine that records when each of its edits ran (start, end), else the same engine."""

    def __init__(self, engine) -> None:
        self._engine, self.edits = engine, []

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def edit(self, request, progress=None):
        started = time.monotonic()
        try:
            return self._engine.edit(request, progress)
        finally:
            self.edits.append((started, time.monotonic()))


class GatedStorage(LocalStorage):
    """Local files whose writes of `job_id`'s outputs wait until `gate` is set: a slow disk."""

    def __init__(self, root: Path, signer: UrlSigner) -> None:
        super().__init__(root, signer)
        self.gate, self.job_id = threading.Event(), None

    def put_file(self, key, file, content_type) -> None:
        if self.job_id and key.startswith(f"outputs/{self.job_id}/"):
            assert self.gate.wait(60), "the test never opened the gate"
        super().put_file(key, file, content_type)


def test_dispatcher_runs_queued_jobs_in_order_one_at_a_time(job_store, tiny_engine, storage, settings) -> None:
    # Queued before the dispatcher starts (as after a restart), on two ids that alias one engine.
    jobs = [submit(job_store, model=(MODEL, ALIAS)[i % 2], num_inference_steps=2, seed=i) for i in range(4)]
    engine = TimedEngine(tiny_engine)
    dispatcher = LocalDispatcher(WorkerContext(job_store, storage, settings), {MODEL: engine, ALIAS: engine})
    dispatcher.start()
    try:
        done = [wait_finished(job_store, j.id) for j in jobs]
    finally:
        dispatcher.stop()
    assert all(j.state is JobState.completed for j in done)
    assert len({j.worker_id for j in done}) == 1  # one thread for the one engine
    for earlier, later in zip(done, done[1:]):
        assert earlier.started_at <= later.started_at  # FIFO
    assert len(engine.edits) == 4
    for (_, earlier_end), (later_start, _) in zip(engine.edits, engine.edits[1:]):
        assert earlier_end <= later_start, "one edit at a time on the engine"


def test_the_engine_runs_the_next_job_while_the_last_ones_outputs_are_stored(
    job_store, tiny_engine, signer, settings, tmp_path
) -> None:
    storage = GatedStorage(tmp_path / "gated", signer)
    first, second, third = (submit(job_store, num_inference_steps=2, seed=i) for i in range(3))
    storage.job_id = first.id  # storing the first job's outputs hangs until the gate opens
    engine = TimedEngine(tiny_engine)
    dispatcher = LocalDispatcher(WorkerContext(job_store, storage, settings), {MODEL: engine})
    dispatcher.start()
    try:
        wait_until(lambda: len(engine.edits) == 2, what="the second job's edit")
        time.sleep(0.3)  # time enough for a third edit to start, were it allowed to
        stored = job_store.get(first.id)
        assert stored.state is JobState.in_progress and stored.phase == "encoding" and stored.outputs == []
        # At most one job's outputs wait: the second is done denoising, so the third stays queued.
        assert job_store.get(second.id).phase == "encoding"
        assert job_store.get(third.id).state is JobState.in_queue and len(engine.edits) == 2
        storage.gate.set()
        done = [wait_finished(job_store, j.id) for j in (first, second, third)]
    finally:
        storage.gate.set()
        dispatcher.stop()
    assert [j.state for j in done] == [JobState.completed] * 3
    for job in done:  # completed means its files are there
        assert all(storage.get(key) for key in job.outputs), job.id


def test_stopping_the_dispatcher_still_stores_a_finished_edit(
    job_store, tiny_engine, signer, settings, tmp_path
) -> None:
    storage = GatedStorage(tmp_path / "gated", signer)
    job = submit(job_store, num_inference_steps=2)
    storage.job_id = job.id
    engine = TimedEngine(tiny_engine)
    dispatcher = LocalDispatcher(WorkerContext(job_store, storage, settings), {MODEL: engine})
    dispatcher.start()
    wait_until(lambda: engine.edits, what="the edit")
    stopping = threading.Thread(target=dispatcher.stop)  # interrupts at the next step: there is none left
    stopping.start()
    time.sleep(0.2)
    assert stopping.is_alive(), "stop waits for the outputs to be stored"
    storage.gate.set()
    stopping.join(30)
    stored = job_store.get(job.id)
    assert stored.state is JobState.completed and all(storage.get(key) for key in stored.outputs)


def test_notify_wakes_an_idle_dispatcher(job_store, tiny_engine, storage, settings) -> None:
    settings.poll_interval_s = 3600  # only notify() can wake the worker
    dispatcher = LocalDispatcher(WorkerContext(job_store, storage, settings), {MODEL: tiny_engine})
    dispatcher.start()
    try:
        time.sleep(0.3)  # let the worker go idle first
        job = submit(job_store, num_inference_steps=1)
        dispatcher.notify(job)
        assert wait_finished(job_store, job.id, timeout=60).state is JobState.completed
    finally:
        dispatcher.stop()


def long_job(store: JobStore) -> Job:
    # The most steps the schema allows, so that the job is surely still running when we act.
    return submit(store, num_inference_steps=100, image_size={"width": 256, "height": 256})


def test_cancel_stops_a_running_job_at_its_next_step(job_store, tiny_engine, storage, settings) -> None:
    dispatcher = LocalDispatcher(WorkerContext(job_store, storage, settings), {MODEL: tiny_engine})
    dispatcher.start()
    try:
        job = long_job(job_store)
        dispatcher.notify(job)
        wait_until(lambda: (job_store.get(job.id).step or 0) >= 1, what="the first step")
        job_store.cancel(job.id, "key-a")
        stopped = wait_finished(job_store, job.id)
    finally:
        dispatcher.stop()
    assert stopped.state is JobState.cancelled
    assert stopped.step < stopped.total_steps == 100
    assert stopped.outputs == [] and not (Path(storage.root) / "outputs" / job.id).exists()


def test_stop_puts_the_running_job_back_without_using_an_attempt(job_store, tiny_engine, storage, settings) -> None:
    first = LocalDispatcher(WorkerContext(job_store, storage, settings), {MODEL: tiny_engine})
    first.start()
    job = long_job(job_store)
    first.notify(job)
    wait_until(lambda: (job_store.get(job.id).step or 0) >= 1, what="the first step")
    first.stop()
    back = job_store.get(job.id)
    assert back.state is JobState.in_queue and back.attempts == 0

    second = LocalDispatcher(WorkerContext(job_store, storage, settings), {MODEL: tiny_engine})
    second.start()
    try:
        done = wait_finished(job_store, job.id, timeout=300)
    finally:
        second.stop()
    assert done.state is JobState.completed and done.attempts == 1


DOOMED_SERVER = """
import sys, time, torch
torch.set_num_threads(1)
from fluxedit.config import Settings
from fluxedit.engines.flux2 import Flux2Engine
from fluxedit.jobs.dispatch import LocalDispatcher
from fluxedit.jobs.periodic import Periodic
from fluxedit.jobs.store import JobStore
from fluxedit.jobs.worker import WorkerContext
from fluxedit.storage import LocalStorage, UrlSigner
url, model_dir, files, model = sys.argv[1:5]
settings = Settings(lease_s=2, poll_interval_s=0.2)
context = WorkerContext(JobStore(url), LocalStorage(files, UrlSigner(b"s" * 32)), settings)
LocalDispatcher(context, {model: Flux2Engine(model_dir)}).start()
print("started", flush=True)
time.sleep(600)
"""


def test_job_of_a_killed_process_runs_again_after_its_lease(
    job_store, database_url, tiny_model_dirs, tiny_engine, storage, settings
) -> None:
    job = long_job(job_store)
    proc = subprocess.Popen(
        [sys.executable, "-c", DOOMED_SERVER, database_url, str(tiny_model_dirs["klein"]), str(storage.root), MODEL],
        env={**os.environ, "PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: (job_store.get(job.id).step or 0) >= 1, timeout=180, what="the first step")
    finally:
        proc.kill()  # SIGKILL: the job is left in_progress
        proc.wait()
    assert job_store.get(job.id).state is JobState.in_progress

    settings.lease_s = 2
    dispatcher = LocalDispatcher(WorkerContext(job_store, storage, settings), {MODEL: tiny_engine})
    dispatcher.start()
    try:
        done = wait_finished(job_store, job.id, timeout=300)
    finally:
        dispatcher.stop()
    assert done.state is JobState.completed
    assert done.attempts == 2  # the killed run counts


def test_periodic_task_survives_its_errors_and_ends_with_stop() -> None:
    calls: list[int] = []

    def flaky() -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            raise RuntimeError("the first run fails")

    task = Periodic("test-periodic", 0.02, flaky)
    task.start()
    try:
        wait_until(lambda: len(calls) >= 3, timeout=30, what="runs after a failed one")
    finally:
        task.stop(timeout=30)
    n = len(calls)
    time.sleep(0.1)
    assert len(calls) == n
