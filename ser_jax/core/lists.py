"""Comma-separated config values ("a, b,,c") as lists."""


def parse_list(spec: str) -> list[str]:
    """The non-empty, stripped items of a comma-separated string, in order."""
    return [item.strip() for item in spec.split(",") if item.strip()]
