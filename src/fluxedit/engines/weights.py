"""Finding a FLUX.2 model's weights: a local folder or a Hugging Face repo id (or its cache).

Only huggingface_hub here, no torch: `fluxedit edit` checks its --model before it pays
for importing the engine.
"""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import hf_hub_download, is_offline_mode
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)

from fluxedit.errors import ModelUnavailable

# What can go wrong finding or reading weights: missing files, no network,
# offline mode, unknown or gated repos (all OSError or ValueError subclasses in
# huggingface_hub, except EntryNotFoundError), and a component whose library
# is missing (ImportError, e.g. [dev]'s Pixtral processor without torchvision).
LOAD_ERRORS = (OSError, ValueError, EntryNotFoundError, ImportError)


def model_unavailable(source: str, reason: str) -> ModelUnavailable:
    return ModelUnavailable(
        f"Model {source!r} is not available: {reason}. Download its weights first, pass a local folder "
        "that holds them, or use `--model tiny` for a tiny offline test model."
    )


def load_failure_reason(exc: BaseException) -> str:
    if isinstance(exc, GatedRepoError):
        return "its repository is gated; accept its licence on huggingface.co and set HF_TOKEN"
    if isinstance(exc, RepositoryNotFoundError):
        return "there is no such repository on the Hugging Face Hub (or it is private and HF_TOKEN is not set)"
    if isinstance(exc, HFValidationError):
        return "it is neither a folder here nor a valid Hugging Face repo id"
    if isinstance(exc, LocalEntryNotFoundError):
        why = "offline mode (HF_HUB_OFFLINE) is on" if is_offline_mode() else "the Hub could not be reached"
        return f"its weights are not in the local Hugging Face cache and {why}"
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, ImportError):
        return f"a library it needs is missing ({detail})"
    return f"its weights could not be loaded ({detail})"


def read_model_index(source: str) -> dict:
    """The model's model_index.json, from a local folder or the Hugging Face Hub (or its cache)."""
    folder = Path(source).expanduser()
    if folder.is_dir():
        index = folder / "model_index.json"
        if not index.is_file():
            raise model_unavailable(source, "the folder has no model_index.json, so it is not a diffusers model")
    elif source.startswith(("/", ".", "~")) or "\\" in source:
        raise model_unavailable(source, "no such folder")
    else:
        try:
            index = Path(hf_hub_download(source, "model_index.json"))
        except LOAD_ERRORS as exc:
            raise model_unavailable(source, load_failure_reason(exc)) from None
    return json.loads(index.read_text())
