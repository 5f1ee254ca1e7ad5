"""`dali-abs inpainter ...` subcommands (placeholder until the inpainter stage lands)."""


def register(subparsers) -> None:
    pass
