"""`dali-abs segmenter ...` subcommands (placeholder until the segmenter stage lands)."""


def register(subparsers) -> None:
    pass
