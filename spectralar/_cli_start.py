"""What `python -m spectralar.X` sets up before anything heavy is imported: a Ctrl-C that no command handles
(while torch loads, say) ends the command with one line instead of a traceback. Code that catches
KeyboardInterrupt still gets it, and the process still ends by SIGINT, as shells expect."""

from __future__ import annotations

import sys

__all__ = ["quiet_interrupts"]


def quiet_interrupts() -> None:
    previous = sys.excepthook

    def hook(kind, value, tb):
        if not issubclass(kind, KeyboardInterrupt):
            return previous(kind, value, tb)
        argv = getattr(sys, "orig_argv", [])
        prog = f"python -m {argv[argv.index('-m') + 1]}" if "-m" in argv[:-1] else "spectralar"
        sys.stderr.write(f"{prog}: interrupted (Ctrl-C){'; ' + str(value) if str(value) else ''}\n")

    sys.excepthook = hook
