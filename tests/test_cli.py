"""`fluxedit edit` and `fluxedit tiny-model` end to end, in a subprocess, as a user runs them."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from _fixtures_server import run_cli

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli-data")


def test_edit_two_references_on_the_tiny_model(data_dir, tmp_path):
    out = tmp_path / "edited.jpg"
    done = run_cli(
        "edit",
        "--model",
        "tiny",
        "-p",
        "put the hat on the hill",
        "-i",
        str(EXAMPLES / "scene.jpg"),
        "-i",
        str(EXAMPLES / "hat.png"),
        "--size",
        "landscape_4_3",
        "-o",
        str(out),
        data_dir=data_dir,
    )
    assert done.returncode == 0, done.stderr
    with Image.open(out) as image:
        assert (image.format, image.size) == ("JPEG", (1024, 768))
    assert "4/4" in done.stderr, "a progress bar per denoising step"


def test_png_output_auto_size_and_seed(data_dir, tmp_path):
    outputs = []
    for seed in (1, 1, 2):
        out = tmp_path / f"seed{seed}-{len(outputs)}.png"
        done = run_cli(
            "edit",
            "--model",
            "tiny",
            "-p",
            "x",
            "-i",
            str(EXAMPLES / "scene.jpg"),
            "--seed",
            str(seed),
            "--steps",
            "2",
            "-o",
            str(out),
            data_dir=data_dir,
        )
        assert done.returncode == 0, done.stderr
        outputs.append(out.read_bytes())
    assert Image.open(tmp_path / "seed1-0.png").size == (1248, 832), "auto keeps the 3:2 reference at ~1 MP"
    assert outputs[0] == outputs[1] and outputs[0] != outputs[2]


def test_tiny_model_folder_loads_through_the_real_loading_code(data_dir, tmp_path):
    folder = tmp_path / "tiny-dev"
    made = run_cli("tiny-model", "--variant", "dev", str(folder), data_dir=data_dir)
    assert made.returncode == 0, made.stderr
    assert (folder / "model_index.json").is_file()
    out = tmp_path / "dev.png"
    done = run_cli(
        "edit",
        "--model",
        str(folder),
        "-p",
        "x",
        "-i",
        str(EXAMPLES / "hat.png"),
        "--size",
        "128x128",
        "--steps",
        "2",
        "-o",
        str(out),
        data_dir=data_dir,
    )
    assert done.returncode == 0, done.stderr
    assert Image.open(out).size == (128, 128)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["-i", "no/such/file.jpg"], "not a file"),
        (["-i", str(EXAMPLES / "hat.png"), "--size", "3x5"], "at least 64"),
        (["-i", str(EXAMPLES / "hat.png"), "--size", "enormous"], "not a size"),
        (["-i", str(EXAMPLES / "hat.png")] * 11, "At most 10"),
        (["-i", __file__], "not an image"),
    ],
)
def test_errors_are_one_clear_line_and_an_exit_code(data_dir, tmp_path, args, says):
    done = run_cli("edit", "--model", "tiny", "-p", "x", *args, "-o", str(tmp_path / "o.jpg"), data_dir=data_dir)
    assert done.returncode != 0
    assert says in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "o.jpg").exists()


def test_a_model_that_is_not_there_suggests_tiny(data_dir, tmp_path):
    done = run_cli(
        "edit",
        "--model",
        "black-forest-labs/FLUX.2-klein-4B",
        "-p",
        "x",
        "-i",
        str(EXAMPLES / "hat.png"),
        "-o",
        str(tmp_path / "o.jpg"),
        data_dir=data_dir,
    )
    assert done.returncode != 0
    assert "--model tiny" in done.stderr and "Traceback" not in done.stderr


def test_keys_create_list_revoke_before_any_serve(tmp_path):
    created = run_cli("keys", "create", "--name", "alice", data_dir=tmp_path)
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("fe_")
    listed = run_cli("keys", "list", data_dir=tmp_path)
    assert "alice" in listed.stdout and secret not in listed.stdout
    key_id = listed.stdout.split()[0]
    assert run_cli("keys", "revoke", key_id, data_dir=tmp_path).returncode == 0
    assert "revoked" in run_cli("keys", "list", data_dir=tmp_path).stdout
    missing = run_cli("keys", "revoke", "nope", data_dir=tmp_path)
    assert missing.returncode != 0 and "No active key" in missing.stderr
