"""A full disk: clear 507s naming where, a health check that says so, nothing lost, and recovery.

The disk is a real one, and really full: a small tmpfs mounted for the test and filled
with a file until the kernel answers ENOSPC, then emptied again. That is what a full
disk is for every process, SQLite included, with no switch in fluxedit to pretend it.
Other ways were weighed: chmod means nothing to root (the tests run as root here), a
read-only bind mount gives EROFS but no "disk full" for SQLite's growing files, and
`ulimit -f` gives EFBIG only to files grown past the limit (SQLite then reports an I/O
error rather than a full disk). Mounting needs CAP_SYS_ADMIN: without it the tests
skip and say so.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from _fixtures_images import png_bytes

PRO = "blackforestlabs/flux-2/pro/edit"


class SmallDisk:
    """A tmpfs of `size_mb` at `path`; fill() takes all its free space, free() gives it back."""

    def __init__(self, path: Path, size_mb: int) -> None:
        self.path = path
        path.mkdir(parents=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here (needs root with CAP_SYS_ADMIN): {done.stderr.strip()}")
        self.filler = path / "filler"

    def fill(self) -> None:
        with self.filler.open("wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
            except OSError as exc:
                assert exc.errno == 28, exc  # ENOSPC: the disk is full
        for n in range(4096):  # the last partial pages too
            try:
                (self.path / f"filler-{n}").write_bytes(b"\0" * 512)
            except OSError:
                break

    def free(self) -> None:
        for filler in self.path.glob("filler*"):
            filler.unlink()

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    disks: list[SmallDisk] = []

    def make(size_mb: int) -> SmallDisk:
        disks.append(SmallDisk(tmp_path / f"disk{len(disks)}", size_mb))
        return disks[-1]

    yield make
    for disk in disks:
        disk.unmount()


def wait_done(http, request_id: str, timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while (body := http.get(f"/v1/requests/{request_id}/status").json())["status"] not in (
        "completed",
        "failed",
    ) and time.monotonic() < deadline:
        time.sleep(0.05)
    return body


def edit(http, ref: str) -> str:
    answer = http.post(f"/v1/models/{PRO}", json={"prompt": "x", "image_urls": [ref], "image_size": "square"})
    assert answer.status_code == 200, answer.text
    return answer.json()["request_id"]


def test_full_files_disk_is_a_507_and_recovers(start_server, small_disk, image_server):
    disk = small_disk(8)
    files = disk.path / "files"
    image_server.add("/full-disk.png", png_bytes((96, 96)), "image/png")
    ref = image_server.url("/full-disk.png")
    server = start_server("--model", "tiny", storage_url=str(files), fetch_allow='["127.0.0.1"]')
    with server.client() as http:
        kept = http.post("/v1/files", files={"file": ("a.png", png_bytes(), "image/png")}).json()["url"]
        earlier = wait_done(http, edit(http, ref))
        assert earlier["status"] == "completed"
        output = http.get(f"/v1/requests/{earlier['request_id']}/result").json()["output"]["images"][0]
        output_bytes = http.get(output).content

        disk.fill()
        upload = http.post("/v1/files", files={"file": ("b.png", png_bytes(), "image/png")})
        assert upload.status_code == 507, upload.text
        error = upload.json()["error"]
        assert error["code"] == "insufficient_storage" and str(files) in error["message"]
        inline = http.post(f"/v1/models/{PRO}", json={"prompt": "x", "image_urls": [_data_uri(png_bytes())]})
        assert inline.status_code == 507 and inline.json()["error"]["code"] == "insufficient_storage"
        failed = wait_done(http, edit(http, ref))  # runs, but its output cannot be written
        assert failed["status"] == "failed" and failed["error"]["code"] == "insufficient_storage", failed
        assert str(files) in failed["error"]["message"]
        health = http.get("/healthz")
        assert health.status_code == 503 and health.json()["storage"]["writable"] is False
        assert http.get(kept).content == png_bytes() and http.get(output).content == output_bytes

        disk.free()
        assert http.get("/healthz").json()["storage"] == {"writable": True}
        assert http.post("/v1/files", files={"file": ("c.png", png_bytes(), "image/png")}).status_code == 200
        assert wait_done(http, edit(http, ref))["status"] == "completed"


def test_full_database_disk_is_a_507_and_recovers(start_server, small_disk):
    disk = small_disk(16)
    server = start_server("--model", "tiny", "--no-workers", data_dir=disk.path / "data")
    body = {"prompt": "x", "image_urls": ["https://example.com/a.png"]}
    with server.client() as http:
        earlier = http.post(f"/v1/models/{PRO}", json=body).json()["request_id"]
        disk.fill()
        for _ in range(50):  # SQLite writes into pages it already has until it needs a new one
            answer = http.post(f"/v1/models/{PRO}", json={**body, "prompt": "y" * 4000})
            if answer.status_code != 200:
                break
        assert answer.status_code == 507, f"{answer.text}\n{server.log}"
        error = answer.json()["error"]
        assert error["code"] == "insufficient_storage"
        assert f"the data directory {disk.path / 'data'}" in error["message"]
        assert http.get(f"/v1/requests/{earlier}/status").json()["status"] == "in_queue"
        assert http.get("/healthz").status_code == 503

        disk.free()
        assert http.post(f"/v1/models/{PRO}", json=body).status_code == 200
        assert http.get("/healthz").status_code == 200


def _data_uri(data: bytes) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(data).decode()
