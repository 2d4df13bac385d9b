"""Visual Token Reduction Explorer — `python app.py [--model ID_OR_FOLDER] [--clip ID_OR_FOLDER] [--device auto]`.

Builds the Blocks from the explorer package and launches it on 127.0.0.1 (GRADIO_SERVER_NAME overrides).
The model loads in a background thread while the page is already served; a request that arrives first waits
for it (with a progress bar). On a Hugging Face Space (`SPACE_ID` set) `explorer.hosting` first installs the
offline default's two `--no-deps` wheels if they are missing and binds 0.0.0.0.

Ctrl-C and SIGTERM (a Space or container being stopped) stop it the same clean way: a generating answer stops at
its next token, the queue drains, Gradio closes its server and deletes the files it cached for this run, and the
export folder is removed. On a public server (`SPACE_ID` or `VTE_PUBLIC=1`) answers are capped at
`config.public_max_new_tokens` tokens.
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import signal  # noqa: E402
import threading  # noqa: E402

from explorer import hosting  # noqa: E402
from explorer.config import ExplorerConfig  # noqa: E402
from explorer.runtime import release_freed_memory  # noqa: E402
from explorer.service import Explorer  # noqa: E402
from explorer.ui import build_demo, serve  # noqa: E402


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # what Gradio's blocking launch() answers by closing its server


def stop_on_sigterm():
    """SIGTERM → KeyboardInterrupt in the main thread (Gradio's launch() then returns with its server closed).
    Returns the previous handler (None when not on the main thread, where signals cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _interrupt)


def main(argv=None) -> None:
    config = hosting.public_limits(ExplorerConfig.from_args(argv))  # a public Space: shorter answers
    hosting.prepare(model=config.model)  # a Hugging Face Space: missing wheels, bind address (nothing elsewhere)
    release_freed_memory()  # a long-running server: freed buffers go back to the OS (glibc)
    explorer = Explorer(config)
    previous = stop_on_sigterm()
    demo = None
    try:
        explorer.preload()  # loads the model in the background; the page is served meanwhile
        demo = build_demo(explorer)
        serve(demo, config)  # blocks until Ctrl-C / SIGTERM
    except KeyboardInterrupt:  # stopped while starting
        pass
    finally:
        explorer.stopping.set()  # a generating answer ends at its next token …
        if demo is not None:
            guard = getattr(demo, "guard", None)
            if guard is not None:
                guard.drain()  # … and the server closes once no job is running (bounded wait)
            demo.close()
        explorer.close()  # the export folder
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    main()
