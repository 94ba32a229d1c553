"""The composition root: what `fluxedit serve` builds from its --model flags and Settings."""

from __future__ import annotations

import subprocess
import sys

from _fixtures_server import LiveServer, fluxedit_env

PRO, FLEX, MAX = (f"blackforestlabs/flux-2/{name}/edit" for name in ("pro", "flex", "max"))


def test_bfl_models_of_one_key_share_one_bound_of_tasks_in_flight(tmp_path, fake_bfl, image_server) -> None:
    image_server.add_image("/runtime-ref.png", size=(96, 96), color=(10, 160, 60))
    server = LiveServer(
        tmp_path,
        ("--model", f"{PRO}=bfl:flux-2-pro", "--model", f"{FLEX}=bfl:flux-2-flex", "--model", f"{MAX}=bfl:flux-2-max"),
        {
            "bfl_api_key": fake_bfl.api_key,
            "bfl_base_url": fake_bfl.url,
            "bfl_max_concurrent": "2",
            "fetch_allow": '["127.0.0.1"]',
            "bfl_backoff_s": "0.05",
        },
    ).start()
    try:
        body = {"prompt": "a hat [slow]", "image_urls": [image_server.url("/runtime-ref.png")], "image_size": "square"}
        with server.client() as http:
            ids = [http.post(f"/v1/models/{model}", json=body).json()["request_id"] for model in (PRO, FLEX, MAX) * 3]
        for request_id in ids:
            assert (
                server.wait_for(request_id, {"completed", "failed", "cancelled"}, timeout=120)["status"] == "completed"
            )
    finally:
        server.stop()
    assert len(fake_bfl.accepted) == 9
    # Three models, one key: at most bfl_max_concurrent tasks at BFL at once, not one bound per model.
    assert fake_bfl.most_active == 2


def _modules_loaded_by(args: list[str], data_dir) -> set[str]:
    """The modules `fluxedit ARGS` imported, read from `python -X importtime` (it prints one line per module)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "fluxedit", *args],
        env=fluxedit_env(data_dir),
        capture_output=True,
        text=True,
        timeout=120,
    )
    modules = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            modules.add(line.rsplit("|", 1)[1].strip())
    assert modules, proc.stderr[-2000:]
    return modules


def test_commands_that_run_no_local_model_import_no_torch(tmp_path) -> None:
    for args in (["keys", "list"], ["--help"], ["edit", "-p", "x", "-i", "nosuch.png", "-o", "out.jpg"]):
        loaded = _modules_loaded_by(args, tmp_path)
        assert "torch" not in loaded and "diffusers" not in loaded, args
