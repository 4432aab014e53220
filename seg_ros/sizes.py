"""Image and network sizes as text: HEIGHTxWIDTH everywhere, read and written the same way.

Arrays are H×W×C and every flag pairs ``--height`` with ``--width``, so a size string is
``360x480`` for a 480-pixel-wide, 360-pixel-high image, in flags and in logs alike.
"""

from __future__ import annotations


def parse_size(text: str) -> tuple[int, int]:
    """Read '360x480' as (360, 480): height x width."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size {text!r} must be HEIGHTxWIDTH, e.g. 360x480") from None
    if height <= 0 or width <= 0:
        raise ValueError(f"size {text!r} must be positive")
    return height, width


def format_size(height: int, width: int) -> str:
    """Write (360, 480) as '360x480', the way parse_size reads it."""
    return f"{height}x{width}"
