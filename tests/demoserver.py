"""Helpers of the demo page's tests: a served app on a free loopback port, the event-stream parser a client
needs, and the PNG that the command line the page shows writes (the reference a page's grid must equal)."""

import base64
import shlex
import threading
from contextlib import contextmanager
from pathlib import Path

from spectralar import generate, vary
from spectralar.demo import make_server


@contextmanager
def serving(app):
    """The page of `app` served from a thread; yields its base URL."""
    server = make_server(app, "127.0.0.1", 0, quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def parse_events(text: str) -> list[tuple[str, str]]:
    """(event name, data) of each frame of a text/event-stream body, split as a client splits it."""
    out = []
    for frame in text.split("\n\n"):
        if not frame:
            continue
        fields = dict(line.split(": ", 1) for line in frame.split("\n"))
        out.append((fields["event"], fields["data"]))
    return out


def png_of(data_url: str) -> bytes:
    head, b64 = data_url.split(",", 1)
    assert head == "data:image/png;base64", head
    return base64.b64decode(b64)


def command_png(command: str, out_dir: Path, image: Path | None = None) -> bytes:
    """Run `command` (as the page prints it: `python -m spectralar.generate ...` or `... vary NAME ...`) in this
    process, with its --out in `out_dir` and, for vary, NAME replaced by the file `image`; return the PNG."""
    argv = shlex.split(command)
    assert argv[:2] == ["python", "-m"], command
    mains = {"spectralar.generate": generate.main, "spectralar.vary": vary.main}
    args = argv[3:]
    if image is not None:
        assert argv[2] == "spectralar.vary" and Path(args[0]).name == image.name, command
        args[0] = str(image)
    i = args.index("--out")
    out = out_dir / Path(args[i + 1]).name
    args[i + 1] = str(out)
    assert mains[argv[2]](args) == 0, command
    return out.read_bytes()
