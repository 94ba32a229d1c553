"""Bad inputs and abuse get a clear answer from a real server: no 500, nothing amplified."""

from __future__ import annotations

import base64
import struct
import zlib

import pytest

from _fixtures_images import png_bytes

PRO = "blackforestlabs/flux-2/pro/edit"


def bomb_png(side: int = 30_000) -> bytes:
    """A real 1-bit side x side PNG, all black: about 100 KB that would decode to 900 MP."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte, then the packed bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def data_uri(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64," + base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return bomb_png()


def test_a_decompression_bomb_upload_is_refused_like_the_same_data_uri(tiny_server, bomb):
    with tiny_server.client() as http:
        upload = http.post("/v1/files", files={"file": ("bomb.png", bomb, "image/png")})
        assert upload.status_code == 422, upload.text
        error = upload.json()["error"]
        assert error["code"] == "input_too_large" and error["field"] == "file"
        assert "64,000,000 pixels" in error["message"]

        inline = http.post(f"/v1/models/{PRO}", json={"prompt": "x", "image_urls": [data_uri(bomb)]})
    assert inline.status_code == 200, inline.text
    job = tiny_server.wait_for(inline.json()["request_id"], {"failed", "completed"})
    assert job["error"]["code"] == error["code"] and job["error"]["index"] == 0
    assert "64,000,000 pixels" in job["error"]["message"]


def test_an_upload_that_is_not_an_image_names_what_is_accepted(tiny_server):
    with tiny_server.client() as http:
        answer = http.post("/v1/files", files={"file": ("a.gif", png_bytes(fmt="GIF"), "image/gif")})
    assert answer.status_code == 422
    assert answer.json()["error"] == {
        "code": "input_not_image",
        "message": "The upload is not a JPEG, PNG or WebP image.",
        "field": "file",
    }


def test_a_size_too_wide_for_jpeg_is_refused_at_submit(tiny_server):
    body = {"prompt": "x", "image_urls": ["https://example.com/a.png"], "image_size": {"width": 65536, "height": 64}}
    with tiny_server.client() as http:
        answer = http.post(f"/v1/models/{PRO}", json=body)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "invalid_input" and error["field"] == "image_size"
    assert "65536x64" in error["message"] and "65535" in error["message"] and "png" in error["message"]


def test_the_largest_side_the_area_allows_is_fine_for_png():
    from fluxedit.schema import MAX_CUSTOM_SIDE, EditInput

    edit = EditInput(
        prompt="x",
        image_urls=["https://example.com/a.png"],
        image_size={"width": MAX_CUSTOM_SIDE, "height": 64},
        output_format="png",
    )
    assert edit.output_size((64, 64)) == (65536, 64)


def test_files_are_served_with_nosniff(tiny_server):
    with tiny_server.client() as http:
        url = http.post("/v1/files", files={"file": ("a.png", png_bytes(), "image/png")}).json()["url"]
        served = http.get(url)
    assert served.status_code == 200 and served.content == png_bytes()
    assert served.headers["content-type"] == "image/png"
    assert served.headers["x-content-type-options"] == "nosniff"


def test_files_are_served_with_the_type_they_were_stored_with(tiny_server):
    from fluxedit.config import Settings
    from fluxedit.storage import open_storage

    # The server's own storage (same directory, same signing secret), as a worker would write to it.
    storage = open_storage(Settings(data_dir=tiny_server.data_dir))
    storage.put("outputs/typed/0.png", png_bytes(), "image/png")  # the type its name implies: no sidecar
    storage.put("outputs/typed/1.png", b"RIFF....WEBP", "image/webp")  # another type: kept beside it
    with tiny_server.client() as http:
        implied = http.get(storage.url("outputs/typed/0.png", tiny_server.base_url))
        stored = http.get(storage.url("outputs/typed/1.png", tiny_server.base_url))
    assert implied.status_code == 200 and implied.headers["content-type"] == "image/png"
    assert stored.status_code == 200 and stored.headers["content-type"] == "image/webp"


def test_guessing_request_ids_is_bounded_per_key_but_known_ids_never_are(start_server):
    from _fixtures_server import run_cli

    server = start_server("--model", "tiny", "--no-workers", max_unknown_ids_per_minute="5")
    body = {"prompt": "x", "image_urls": ["https://example.com/a.png"]}
    with server.client() as http:
        known = http.post(f"/v1/models/{PRO}", json=body).json()["request_id"]
        misses = [http.get(f"/v1/requests/{n:032x}/status").status_code for n in range(5)]
        limited = http.get(f"/v1/requests/{99:032x}/result")
        cancel = http.post(f"/v1/requests/{98:032x}/cancel")
        polls = [http.get(f"/v1/requests/{known}/status").status_code for _ in range(20)]
    assert misses == [404] * 5
    for answer in (limited, cancel):
        assert answer.status_code == 429, answer.text
        assert answer.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(answer.headers["Retry-After"]) <= 60
    assert polls == [200] * 20
    other = run_cli("keys", "create", "--name", "other", data_dir=server.data_dir).stdout.strip()
    with server.client(other) as http:
        assert http.get(f"/v1/requests/{99:032x}/status").status_code == 404


def test_the_guess_limit_slides_with_the_minute():
    from fluxedit.api.guesses import GuessLimit, TooManyGuesses

    now = [1000.0]
    limit = GuessLimit(2, clock=lambda: now[0])
    limit.miss("k", "a")
    now[0] += 10
    limit.miss("k", "b")
    with pytest.raises(TooManyGuesses) as caught:
        limit.miss("k", "c")
    assert caught.value.retry_after_s == 50 and caught.value.status == 429
    limit.miss("other-key", "c")  # each key has its own count
    now[0] += 50  # the first miss is a minute old: one more is allowed
    limit.miss("k", "c")
    with pytest.raises(TooManyGuesses):
        limit.miss("k", "d")


def noise_png(width: int, height: int) -> bytes:
    """Random pixels: a PNG about as large as its raw pixels (no compression to speak of)."""
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def _database_bytes(server) -> int:
    return sum(p.stat().st_size for p in server.data_dir.glob("fluxedit.db*"))


def test_an_inline_image_is_stored_as_a_file_and_never_comes_back_in_answers(tiny_server):
    image = noise_png(1500, 1100)
    inline = data_uri(image)
    assert len(inline) > 5_000_000
    before = _database_bytes(tiny_server)
    body = {"prompt": "x", "image_urls": [inline], "image_size": "square", "num_inference_steps": 2}
    with tiny_server.client() as http:
        submitted = http.post(f"/v1/models/{PRO}", json=body, headers={"Idempotency-Key": "inline-1"})
        assert submitted.status_code == 200, submitted.text
        request_id = submitted.json()["request_id"]
        status = http.get(f"/v1/requests/{request_id}/status")
        assert len(status.content) < 10_000 and "base64" not in status.text
        done = tiny_server.wait_for(request_id, {"completed", "failed"})
        assert done["status"] == "completed", done
        result = http.get(f"/v1/requests/{request_id}/result")
        assert len(result.content) < 10_000, len(result.content)
        [stored_url] = result.json()["input"]["image_urls"]
        assert stored_url.startswith(f"{tiny_server.base_url}/files/uploads/")
        assert http.get(stored_url).content == image  # the very bytes sent, under a signed URL
        listed = http.get("/v1/requests", params={"limit": 4})
        assert len(listed.content) < 40_000
        # The same request again with its idempotency key is the same job, not a conflict.
        again = http.post(f"/v1/models/{PRO}", json=body, headers={"Idempotency-Key": "inline-1"})
        assert again.status_code == 200 and again.json()["request_id"] == request_id
    assert _database_bytes(tiny_server) - before < 1_000_000


def test_an_inline_image_over_the_byte_cap_is_refused_at_submit(small_limits_server):
    from _fixtures_images import png_bytes as small_png

    inline = data_uri(small_png() + b"\0" * 200_000)  # over max_image_bytes, under the body limit
    with small_limits_server.client() as http:
        answer = http.post(f"/v1/models/{PRO}", json={"prompt": "x", "image_urls": [inline]})
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "input_too_large" and error["index"] == 0 and error["field"] == "image_urls[0]"


@pytest.fixture(scope="module")
def small_limits_server(tmp_path_factory):
    from _fixtures_server import LiveServer

    limits = {"max_image_bytes": "150000", "max_request_bytes": "600000"}
    server = LiveServer(tmp_path_factory.mktemp("limits"), ("--model", "tiny", "--no-workers"), limits)
    yield server.start()
    server.stop()


@pytest.mark.parametrize(
    ("body", "words"),
    [(b'{"prompt": "x", "image_urls": [', "not valid JSON"), ('{"prompt": "é"}'.encode("latin-1"), "not valid JSON")],
)
def test_a_body_that_is_not_json_or_not_utf8_is_a_422(tiny_server, body, words):
    with tiny_server.client() as http:
        answer = http.post(f"/v1/models/{PRO}", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["code"] == "invalid_input" and words in answer.json()["error"]["message"]
