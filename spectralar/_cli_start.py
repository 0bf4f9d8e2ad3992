"""What `python -m spectralar.X` sets up before anything heavy is imported: a Ctrl-C that no command handles
(while torch loads, say) ends the command with one line instead of a traceback. Code that catches
KeyboardInterrupt still gets it, and the process still ends by SIGINT, as shells expect.

While the heavy modules import, SIGINT is held back (`hold_interrupts`) and delivered when they are in: an
interrupt inside numpy's C initialisation (which torch imports under a try) was either swallowed, the command
then running on as if no key had been pressed, or left numpy half-loaded and failing with a traceback later."""

from __future__ import annotations

import signal
import sys

__all__ = ["hold_interrupts", "quiet_interrupts"]


def quiet_interrupts() -> None:
    previous = sys.excepthook

    def hook(kind, value, tb):
        if not issubclass(kind, KeyboardInterrupt):
            return previous(kind, value, tb)
        argv = getattr(sys, "orig_argv", [])
        prog = f"python -m {argv[argv.index('-m') + 1]}" if "-m" in argv[:-1] else "spectralar"
        sys.stderr.write(f"{prog}: interrupted (Ctrl-C){'; ' + str(value) if str(value) else ''}\n")

    sys.excepthook = hook


class hold_interrupts:  # noqa: N801  (used like a function: `held = hold_interrupts(); ...; held.release()`)
    """Block SIGINT in this thread until `release()`, which delivers one that arrived meanwhile (raising
    KeyboardInterrupt there). A no-op where the platform has no signal masks."""

    def __init__(self):
        self._mask = getattr(signal, "pthread_sigmask", None)
        if self._mask is not None:
            self._mask(signal.SIG_BLOCK, {signal.SIGINT})

    def release(self) -> None:
        if self._mask is not None:
            self._mask(signal.SIG_UNBLOCK, {signal.SIGINT})
