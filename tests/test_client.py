"""The Python client: the API key goes to the API's own origin only."""

from __future__ import annotations

import io

from PIL import Image

from _fixtures_images import ImageServer, png_bytes
from fluxedit import Client

PRO = "blackforestlabs/flux-2/pro/edit"
KEY = "fe_not-for-other-hosts"


def _authorization(server: ImageServer, path: str) -> list[str | None]:
    return [r.headers.get("Authorization") for r in server.requests if r.path == path]


def test_a_download_from_another_origin_carries_no_api_key():
    with ImageServer(host="127.0.0.2") as other:
        other.add_image("/out.png")
        # Same host and scheme as the API but another port: another origin all the same.
        with Client(f"http://127.0.0.2:{other.port + 1}", KEY) as client:
            image = client.download(other.url("/out.png"))
        assert image.data == png_bytes()
        assert _authorization(other, "/out.png") == [None]


def test_a_download_from_the_api_origin_keeps_the_key():
    with ImageServer(host="127.0.0.2") as api:
        api.add_image("/files/outputs/j/0.png")
        with Client(api.url("/"), KEY) as client:
            client.download(api.url("/files/outputs/j/0.png"))
        assert _authorization(api, "/files/outputs/j/0.png") == [f"Bearer {KEY}"]


def test_edit_end_to_end_with_presigned_s3_outputs(start_server, s3_server, s3_bucket, tmp_path):
    settings = {k.removeprefix("FLUXEDIT_").lower(): v for k, v in s3_server.settings_env(s3_bucket).items()}
    server = start_server("--model", "tiny", **settings)
    photo = tmp_path / "photo.png"
    photo.write_bytes(png_bytes((128, 96), (20, 160, 90)))
    with Client(server.base_url, server.api_key) as client:
        reference = client.upload(photo)
        images = client.edit(PRO, prompt="night", image_urls=[reference], image_size="square", output_format="png")
    [image] = images
    assert image.url.startswith(s3_server.endpoint_url + "/") and "X-Amz-Signature=" in image.url
    assert image.content_type == "image/png"
    assert Image.open(io.BytesIO(image.data)).size == (512, 512)
