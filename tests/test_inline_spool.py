"""Large data: URIs are decoded into files while the body arrives (api/spool.py): same job, same errors.

The scanner's own tests feed it bodies in pieces of every size; the server's compare a
large data: URI's answer with a small one's, broken the same way.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import pytest

from fluxedit.api.spool import MAX_STRINGS, SPOOL_BYTES, BodyScanner, as_sent

PRO = "blackforestlabs/flux-2/pro/edit"


def data_uri(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64," + base64.b64encode(data).decode()


def large(size: int = 3 * 1024 * 1024) -> bytes:
    return os.urandom(size)


def scan(body: bytes, piece: int, tmp_path: Path) -> tuple[bytes, BodyScanner]:
    scanner = BodyScanner(tmp_path)
    for start in range(0, len(body), piece):
        scanner.feed(body[start : start + piece])
    return scanner.end(), scanner


@pytest.fixture(scope="module")
def image() -> bytes:
    return large(SPOOL_BYTES + 2)  # not a multiple of 3: the payload ends in padding


@pytest.mark.parametrize("piece", (997, 65536, 10**9))
def test_a_large_data_uri_in_image_urls_goes_to_a_file_and_a_placeholder_stays(tmp_path, image, piece):
    body = json.dumps({"prompt": "x", "image_urls": ["https://example.com/a.png", data_uri(image)]}).encode()
    kept, scanner = scan(body, piece, tmp_path)
    parsed = json.loads(kept)
    [placeholder] = scanner.spooled
    assert parsed == {"prompt": "x", "image_urls": ["https://example.com/a.png", placeholder]}
    spooled = scanner.spooled[placeholder]
    spooled.file.seek(0)
    assert spooled.file.read() == image and spooled.size == len(image)
    assert spooled.sha256 == hashlib.sha256(image).hexdigest() and spooled.media_type == "image/png"
    assert as_sent(kept, scanner.spooled) == body
    scanner.close()
    assert spooled.file.closed


def test_the_header_may_come_in_any_pieces(tmp_path, image):
    body = json.dumps({"image_urls": [data_uri(image, "IMAGE/WebP")], "prompt": "x"}, indent=2).encode()
    for piece in (1, 3):  # the start of the string a byte or three at a time
        scanner = BodyScanner(tmp_path)
        head = body.index(b",", body.index(b"data:")) + 8
        for start in range(0, head, piece):
            scanner.feed(body[start : min(start + piece, head)])
        scanner.feed(body[head:])
        kept = scanner.end()
        [(placeholder, spooled)] = scanner.spooled.items()
        assert json.loads(kept)["image_urls"] == [placeholder] and spooled.media_type == "image/webp"


def _body(url: str, **fields) -> bytes:
    return json.dumps({"prompt": "x", "image_urls": [url], **fields}).encode()


BIG = data_uri(large(SPOOL_BYTES + 1000))
KEPT_AS_SENT = {
    "small": _body(data_uri(b"\x89PNG" * 100)),
    "a bad character": _body(BIG[: SPOOL_BYTES + 10] + "!" + BIG[SPOOL_BYTES + 10 :]),
    "a space": _body(BIG[:200] + " " + BIG[200:]),
    "cut short": _body(BIG + "A"),
    "wrongly padded": _body(BIG + "AA="),
    "padding inside": _body(BIG[:SPOOL_BYTES] + "==" + BIG[SPOOL_BYTES:]),
    "escaped slashes": _body(BIG).replace(b"/", b"\\/"),
    "an escape in the payload": _body(BIG[:-4] + "\n"),
    "not an image": _body(BIG.replace("image/png", "text/plain")),
    "no base64 mark": _body(BIG.replace(";base64", "")),
    "in the prompt": json.dumps({"prompt": BIG, "image_urls": []}).encode(),
    "nested": json.dumps({"x": {"image_urls": [BIG]}, "image_urls": []}).encode(),
    "a key with an escape": b'{"prompt": "x", "image\\u005furls": ["%s"]}' % BIG.encode(),
    "the body ends inside it": _body(BIG)[: SPOOL_BYTES + 100],
    "too many strings first": json.dumps({"x": ["a"] * MAX_STRINGS, "image_urls": [BIG]}).encode(),
    "a forged placeholder": _body("https://spooled.invalid/guessed-nonce/0"),
}


@pytest.mark.parametrize("name", KEPT_AS_SENT)
def test_what_is_not_a_large_well_formed_image_urls_data_uri_is_kept_as_it_came(tmp_path, name):
    body = KEPT_AS_SENT[name]
    for piece in (997, 65536):
        kept, scanner = scan(body, piece, tmp_path)
        assert kept == body and not scanner.spooled, piece
        scanner.close()


# A server whose limits a few megabytes reach: jobs stay queued, only the API answers.
MAX_IMAGE_BYTES = 4_000_000
MAX_REQUEST_BYTES = 8_000_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from _fixtures_server import LiveServer

    limits = {"max_image_bytes": str(MAX_IMAGE_BYTES), "max_request_bytes": str(MAX_REQUEST_BYTES)}
    live = LiveServer(tmp_path_factory.mktemp("spool"), ("--model", "tiny", "--no-workers"), limits)
    yield live.start()
    live.stop()


def post(server, content: bytes):
    with server.client() as http:
        return http.post(f"/v1/models/{PRO}", content=content, headers={"Content-Type": "application/json"})


def spool_files(server) -> list[str]:
    """What the server holds open, or has left, of spooled files: nameless files in its data dir."""
    fds = Path(f"/proc/{server.proc.pid}/fd")
    links = [os.readlink(fd) for fd in fds.iterdir() if fd.is_symlink()]
    left = [str(p) for p in server.data_dir.iterdir() if p.name.startswith("tmp")]
    return [link for link in links if link.startswith(str(server.data_dir)) and "fluxedit.db" not in link] + left


def uploads(server) -> list[Path]:
    return sorted((server.data_dir / "files" / "uploads").rglob("*"))


def test_a_large_data_uri_is_stored_and_the_job_keeps_its_files_url(server):
    image = large()
    answer = post(server, _body(data_uri(image), image_size="square"))
    assert answer.status_code == 200, answer.text
    with server.client() as http:
        result = http.get(f"/v1/requests/{answer.json()['request_id']}/result")
        assert len(result.content) < 10_000
        [stored] = result.json()["input"]["image_urls"]
        assert stored.startswith(f"{server.base_url}/files/uploads/")
        assert f"/inline-{hashlib.sha256(image).hexdigest()}.png?" in stored  # named as a small one is
        served = http.get(stored)
    assert served.content == image and served.headers["content-type"] == "image/png"
    assert spool_files(server) == []


BREAKAGES = {
    "a bad character": lambda uri: uri[: len(uri) // 2] + "!" + uri[len(uri) // 2 :],
    "not an image": lambda uri: uri.replace("image/png", "text/plain", 1),
    "cut short": lambda uri: uri + "A",
    "wrongly padded": lambda uri: uri + "AA=",
}


@pytest.mark.parametrize("name", BREAKAGES)
def test_a_broken_large_data_uri_gets_the_answer_a_small_one_gets(server, name):
    broken = BREAKAGES[name]
    before = uploads(server)
    answers = [
        post(server, _body("https://example.com/a.png").replace(b'"]', b'", "%s"]' % broken(uri).encode()))
        for uri in (data_uri(b"\x89PNG" * 30), data_uri(large()))
    ]
    small, big = (answer.json() for answer in answers)
    assert [answer.status_code for answer in answers] == [422, 422], big
    assert big == small and big["error"]["message"].startswith("image_urls[1]: data: URI")
    assert uploads(server) == before and spool_files(server) == []


def test_a_large_data_uri_with_escaped_slashes_is_stored_the_old_way(server):
    image = large(SPOOL_BYTES * 2)
    answer = post(server, _body(data_uri(image)).replace(b"/", b"\\/"))
    assert answer.status_code == 200, answer.text
    with server.client() as http:
        [stored] = http.get(f"/v1/requests/{answer.json()['request_id']}/result").json()["input"]["image_urls"]
        assert http.get(stored).content == image


def test_a_large_data_uri_over_the_byte_cap_is_refused_and_nothing_is_kept(server):
    image = large(MAX_IMAGE_BYTES + 3)
    before = uploads(server)
    answer = post(server, _body(data_uri(image)))
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == {
        "code": "input_too_large",
        "message": f"image_urls[0] holds {len(image):,} bytes; at most {MAX_IMAGE_BYTES:,} bytes are accepted.",
        "field": "image_urls[0]",
        "index": 0,
    }
    assert uploads(server) == before and spool_files(server) == []


def test_a_body_over_the_limit_is_refused_while_spooling_and_nothing_is_kept(server):
    body = _body(data_uri(large(MAX_REQUEST_BYTES)))

    def chunks():  # no Content-Length: the limit is found while the data: URI is being spooled
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    before = uploads(server)
    with server.client() as http:
        answer = http.post(f"/v1/models/{PRO}", content=chunks(), headers={"Content-Type": "application/json"})
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "payload_too_large"
    assert uploads(server) == before and spool_files(server) == []


def test_a_forged_placeholder_is_a_plain_url(server):
    forged = "https://spooled.invalid/guessed-nonce/0"
    body = json.dumps({"prompt": "x", "image_urls": [forged, data_uri(large())]}).encode()
    answer = post(server, body)
    assert answer.status_code == 200, answer.text
    with server.client() as http:
        result = http.get(f"/v1/requests/{answer.json()['request_id']}/result").json()
    first, second = result["input"]["image_urls"]
    assert first == forged and second.startswith(f"{server.base_url}/files/uploads/")


def test_a_body_that_is_not_json_is_placed_as_in_the_body_sent(server):
    body = _body(data_uri(large()))[:-1] + b", }"  # a comma too many, after the data: URI
    with pytest.raises(json.JSONDecodeError) as caught:
        json.loads(body)
    answer = post(server, body)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["message"] == "The request body is not valid JSON." and error["field"] == f"[{caught.value.pos}]"
