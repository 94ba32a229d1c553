"""`fluxedit serve | worker | edit | keys | tiny-model` (being written)."""


def main(argv: list[str] | None = None) -> int:
    raise SystemExit("fluxedit: CLI not written yet")
