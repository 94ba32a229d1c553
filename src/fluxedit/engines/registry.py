"""Which engine serves a model id: "ID=SOURCE" specs and the one place engines are made.

A source is one of:
  tiny              the tiny random [klein] (noise, not edits), built on first use
  bfl:<model>       Black Forest Labs' hosted API (e.g. bfl:flux-2-pro)
  <repo id>         a Hugging Face repo, e.g. black-forest-labs/FLUX.2-klein-4B
  <folder>          a local diffusers folder with model_index.json
"""

from __future__ import annotations

import threading

from fluxedit.config import Settings
from fluxedit.engines.base import Engine
from fluxedit.engines.capabilities import BFL_PREFIX, capabilities_of
from fluxedit.errors import InvalidInput

STANDARD_MODEL_IDS: tuple[str, ...] = tuple(
    f"blackforestlabs/flux-2/{name}/edit"
    for name in ("pro", "flex", "max", "dev", "klein-4b", "klein-9b", "klein-9b-kv")
)
DEFAULT_SOURCE = "black-forest-labs/FLUX.2-klein-4B"
TINY_SOURCE = "tiny"


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


def model_pairs(specs: list[str]) -> list[tuple[str, str]]:
    """`--model` flags -> (model id, source) pairs. None given: [klein] 4B; "tiny": the offline
    demo, the tiny model behind every standard id."""
    pairs: list[tuple[str, str]] = []
    for spec in specs or [f"blackforestlabs/flux-2/klein-4b/edit={DEFAULT_SOURCE}"]:
        if spec == TINY_SOURCE:
            pairs += [(model_id, TINY_SOURCE) for model_id in STANDARD_MODEL_IDS]
        else:
            pairs.append(parse_model_spec(spec))
    return pairs


def describe_source(source: str) -> tuple[str, int]:
    """(engine kind, most references) of the engine a source makes, without building it (no torch)."""
    capabilities = capabilities_of(source)
    return capabilities.kind, capabilities.max_references


def make_engine(source: str, settings: Settings, *, bfl_slots: threading.BoundedSemaphore | None = None) -> Engine:
    """The engine for a source; nothing is loaded yet (call engine.load()).

    `bfl_slots` bounds the tasks in flight at BFL; pass one to every BFL engine of one API key.
    """
    if source.startswith(BFL_PREFIX):
        from fluxedit.engines.bfl import BflEngine  # another backend: imported only when used

        return BflEngine(source.removeprefix(BFL_PREFIX), settings, slots=bfl_slots)

    from fluxedit.engines.flux2 import Flux2Engine, Flux2Options, quiet_libraries  # torch: imported only when used

    quiet_libraries()
    options = Flux2Options.from_settings(settings)
    if source == TINY_SOURCE:
        from fluxedit.engines.tiny import ensure_tiny_model

        return Flux2Engine(str(ensure_tiny_model(settings)), options)
    return Flux2Engine(source, options)
