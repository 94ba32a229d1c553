"""Tiny FLUX.2 models for tests: built once per session, saved to folders, loaded
through the real loading code (Flux2Engine.load -> from_pretrained on the folder)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from PIL import Image, ImageDraw


@pytest.fixture(scope="session")
def torch_one_thread() -> None:
    """One torch thread: the test machine's few cores are shared, and torch's
    spinning worker threads slow tiny models 10x or more when cores are busy."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory, torch_one_thread: None) -> dict[str, Path]:
    """{"klein": folder, "klein-kv": folder, "dev": folder}, each a saved tiny model."""
    from fluxedit.engines.tiny import VARIANTS, save_tiny_model

    root = tmp_path_factory.mktemp("tiny-models")
    return {variant: save_tiny_model(variant, root / variant) for variant in VARIANTS}


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dirs: dict[str, Path]):
    """A loaded Flux2Engine on the tiny [klein], shared by the session."""
    from fluxedit.engines.flux2 import Flux2Engine

    engine = Flux2Engine(str(tiny_model_dirs["klein"]))
    engine.load()
    return engine


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Hugging Face offline mode with an empty cache; returns the network attempts (there must be none)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    attempts: list[object] = []

    def no_network(*args, **kwargs):
        attempts.append(args)
        raise OSError("network use in a test")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    return attempts


def reference_image(index: int, size: tuple[int, int] = (128, 128)) -> Image.Image:
    """A distinct RGB picture per index: a coloured background with a shape."""
    colours = [(200, 40, 40), (40, 160, 60), (40, 70, 200), (220, 200, 40), (150, 60, 170)]
    image = Image.new("RGB", size, colours[index % len(colours)])
    draw = ImageDraw.Draw(image)
    w, h = size
    inset = 8 + 4 * index
    draw.ellipse((inset, inset, w - inset, h - inset), fill=colours[(index + 2) % len(colours)])
    return image
