"""Which engine serves a model id: "ID=SOURCE" specs and the one place engines are made.

A source is one of:
  tiny              the tiny random [klein] (noise, not edits), built on first use
  bfl:<model>       Black Forest Labs' hosted API (e.g. bfl:flux-2-pro)
  <repo id>         a Hugging Face repo, e.g. black-forest-labs/FLUX.2-klein-4B
  <folder>          a local diffusers folder with model_index.json
"""

from __future__ import annotations

from fluxedit.config import Settings
from fluxedit.engines.base import Engine
from fluxedit.errors import InvalidInput

STANDARD_MODEL_IDS: tuple[str, ...] = tuple(
    f"blackforestlabs/flux-2/{name}/edit"
    for name in ("pro", "flex", "max", "dev", "klein-4b", "klein-9b", "klein-9b-kv")
)
DEFAULT_SOURCE = "black-forest-labs/FLUX.2-klein-4B"
TINY_SOURCE = "tiny"
BFL_PREFIX = "bfl:"


def parse_model_spec(text: str) -> tuple[str, str]:
    """ "ID=SOURCE" -> (id, source), e.g. "blackforestlabs/flux-2/klein-4b/edit=tiny"."""
    model_id, sep, source = text.partition("=")
    model_id, source = model_id.strip(), source.strip()
    if not sep or not model_id or not source:
        raise InvalidInput(
            f"Model spec {text!r} is not ID=SOURCE, e.g. blackforestlabs/flux-2/klein-4b/edit="
            f"{DEFAULT_SOURCE} (SOURCE: a Hugging Face repo id, a local folder, tiny, or bfl:<model>).",
            field="model",
        )
    if model_id.startswith("/") or model_id.endswith("/") or "//" in model_id or any(c.isspace() for c in model_id):
        raise InvalidInput(
            f"Model id {model_id!r} must be a path like blackforestlabs/flux-2/klein-4b/edit "
            "(no spaces, no leading, trailing or doubled slashes).",
            field="model",
        )
    return model_id, source


def make_engine(source: str, settings: Settings) -> Engine:
    """The engine for a source; nothing is loaded yet (call engine.load())."""
    if source.startswith(BFL_PREFIX):
        from fluxedit.engines.bfl import BflEngine  # another backend: imported only when used

        return BflEngine(source.removeprefix(BFL_PREFIX), settings)

    from fluxedit.engines.flux2 import Flux2Engine, Flux2Options  # torch + diffusers: imported only when used

    options = Flux2Options.from_settings(settings)
    if source == TINY_SOURCE:
        from fluxedit.engines.tiny import ensure_tiny_model

        return Flux2Engine(str(ensure_tiny_model(settings)), options)
    return Flux2Engine(source, options)
