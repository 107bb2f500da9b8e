"""Numbers as people read them in the CLI's tables and doctor's findings: sizes in decimal units, counted words."""


def size(n: float) -> str:
    """Bytes as Ollama's CLI writes them: 512 B, 98.4 MB, 1.2 GB."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
