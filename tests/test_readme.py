"""README's curl flow, run as written: a newcomer pastes it into bash against `fluxedit serve`."""

from __future__ import annotations

import io
import json
import re
import subprocess
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BASH_BLOCK = re.compile(r"```bash\n(.*?)```", re.DOTALL)


def curl_flow() -> str:
    """The README's shell block that uploads with /v1/files: the one the curl section says to paste."""
    section = README.read_text(encoding="utf-8").split("### The curl flow", 1)[1]
    blocks = [block for block in BASH_BLOCK.findall(section) if "/v1/files" in block]
    assert blocks, "README's curl section has no shell block that uploads a file"
    return blocks[0]


def json_lines(text: str) -> list[dict]:
    """The JSON objects the flow printed, one a line, in order."""
    found = []
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            found.append(value)
    return found


def test_readme_curl_flow_runs_as_written(start_server) -> None:
    server = start_server("--model", "tiny")
    assert server.api_key, "fluxedit serve printed no first key"
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(server.data_dir),
        "BASE": server.base_url,
        "KEY": server.api_key,
    }
    ran = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", curl_flow()], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
    )
    assert ran.returncode == 0, f"the README's flow failed:\n{ran.stdout}\n{ran.stderr}"
    answers = json_lines(ran.stdout)

    submitted = next(a for a in answers if "request_id" in a and "status_url" in a)
    assert submitted["status"] == "in_queue"
    states = [a["status"] for a in answers if a.get("request_id") == submitted["request_id"]]
    assert "completed" in states, ran.stdout

    # The result names an image URL, and that URL gives the edited picture at the asked size.
    result = next(a for a in answers if "output" in a)
    (url,) = result["output"]["images"]
    assert url.startswith(server.base_url + "/files/")
    picture = httpx.get(url, timeout=30)
    assert picture.status_code == 200
    with Image.open(io.BytesIO(picture.content)) as image:
        assert (image.format, image.size) == ("JPEG", (1024, 768))

    # Cancel, last: the job had finished, so it is left as it is, and the answer says so.
    assert (answers[-1]["status"], answers[-1]["outcome"]) == ("completed", "not_cancellable"), answers[-1]
