"""Usage per key and day: GET /v1/usage for the caller, `fluxedit keys usage` for the operator."""

from __future__ import annotations

from datetime import UTC, datetime

from _fixtures_images import png_bytes
from _fixtures_server import run_cli

MODEL = "blackforestlabs/flux-2/klein-4b/edit"


def test_usage_counts_jobs_megapixels_and_engine_seconds_per_key(tmp_path, start_server, image_server) -> None:
    image_server.add("/usage-ref.png", png_bytes((96, 64)), "image/png")
    a, b = (run_cli("keys", "create", "--name", n, data_dir=tmp_path).stdout.strip() for n in ("a", "b"))
    server = start_server("--model", "tiny", data_dir=tmp_path, fetch_allow='["127.0.0.1"]')
    size = {"width": 64, "height": 128}
    with server.client(a) as http:
        for url in ("/usage-ref.png", "/usage-ref.png", "/usage-missing.png"):
            payload = {"prompt": "x", "image_urls": [image_server.url(url)], "image_size": size}
            request_id = http.post(f"/v1/models/{MODEL}", json=payload).json()["request_id"]
            server.wait_for(request_id, {"completed", "failed"}, key=a)
        mine = http.get("/v1/usage").json()["days"]
        results = [
            http.get(f"/v1/requests/{r['request_id']}/result").json()
            for r in http.get("/v1/requests").json()["requests"]
        ]
    today = datetime.now(UTC).date().isoformat()
    assert [d["date"] for d in mine] == [today]
    assert mine[0]["jobs"] == {"completed": 2, "failed": 1}
    assert mine[0]["output_megapixels"] == round(2 * 64 * 128 / 1e6, 4)
    inference = sum(r["timings"]["inference_s"] for r in results if r["status"] == "completed")
    assert abs(mine[0]["engine_seconds"] - inference) < 0.01
    with server.client(b) as http:
        assert http.get("/v1/usage").json() == {"days": []}  # another key's usage is not shown

    report = run_cli("keys", "usage", data_dir=tmp_path)
    assert report.returncode == 0, report.stderr
    lines = report.stdout.strip().splitlines()
    assert lines[0].split("\t") == ["date", "key", "jobs", "output_megapixels", "engine_seconds"]
    assert len(lines) == 2 and "completed=2 failed=1" in lines[1] and "0.0164" in lines[1]
