"""Matplotlib figures to PNG bytes (rendered fully before anything is written)."""

from __future__ import annotations

import io


def figure_png(fig) -> bytes:
    """Render ``fig`` to PNG bytes and close it, so a failed render leaves no file behind."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return buf.getvalue()
