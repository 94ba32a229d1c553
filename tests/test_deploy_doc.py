"""docs/deploy.md documents every setting an operator can give."""

from __future__ import annotations

from pathlib import Path

from fluxedit.config import Settings

DEPLOY = Path(__file__).resolve().parents[1] / "docs" / "deploy.md"


def test_deploy_guide_names_every_setting() -> None:
    text = DEPLOY.read_text(encoding="utf-8")
    missing = [f"FLUXEDIT_{name.upper()}" for name in Settings.model_fields if f"`FLUXEDIT_{name.upper()}`" not in text]
    assert missing == [], f"docs/deploy.md does not describe {', '.join(missing)}"
