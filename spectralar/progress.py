"""Progress bars for long steps, and the one line a command says about its set-up (the CPU threads it uses).

Bars go to stderr and show only when stderr is a terminal: a log file or a pipe gets no bar characters, and a
process other than rank 0 of a torchrun job shows none. `announce(line)` holds a line (e.g. the thread count)
until the first bar starts, so a command prints it once its up-front checks have passed and its first long step
begins, and an error in those checks stays the only line on stderr. Imports nothing else of spectralar.
"""

from __future__ import annotations

import os
import sys

from tqdm import tqdm

__all__ = ["announce", "bar", "discard_announcement", "flush_announcement"]

_pending: list[str] = []


def announce(line: str) -> None:
    """Print `line` on stderr when the first bar starts (or at `flush_announcement`), once."""
    _pending[:] = [line]


def flush_announcement() -> None:
    """Print the held line now (nothing when there is none or it was printed)."""
    if _pending:
        print(_pending.pop(), file=sys.stderr, flush=True)


def discard_announcement() -> None:
    """Drop the held line (a command that failed says only its error)."""
    _pending.clear()


def bar(iterable=None, *, desc: str, total: int | None = None, unit: str = "it", leave: bool = False,
        enabled: bool = True, **kwargs):
    """tqdm over `iterable` (or a manual bar of `total`; `kwargs` go to tqdm, e.g. `initial`), on stderr, off
    when stderr is not a terminal, when `enabled` is False, or in a torchrun process other than the first. Prints
    the announced line first."""
    flush_announcement()
    show = enabled and os.environ.get("RANK", "0") == "0"
    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave, file=sys.stderr, dynamic_ncols=True,
                disable=None if show else True, **kwargs)
