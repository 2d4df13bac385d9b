"""Visual Token Reduction Explorer — `python app.py [--model ID_OR_FOLDER] [--clip ID_OR_FOLDER] [--device auto]`.

Builds the Blocks from the explorer package and launches it on 127.0.0.1 (GRADIO_SERVER_NAME overrides).
The model loads in a background thread while the page is already served; a request that arrives first waits
for it (with a progress bar).
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from explorer.config import ExplorerConfig  # noqa: E402
from explorer.runtime import release_freed_memory  # noqa: E402
from explorer.service import Explorer  # noqa: E402
from explorer.ui import build_demo, launch_kwargs  # noqa: E402


def main(argv=None) -> None:
    config = ExplorerConfig.from_args(argv)
    release_freed_memory()  # a long-running server: freed buffers go back to the OS (glibc)
    explorer = Explorer(config)
    explorer.preload()  # loads the model in the background; the page is served meanwhile
    demo = build_demo(explorer)
    demo.queue(max_size=64, default_concurrency_limit=2)
    demo.launch(**launch_kwargs(config))


if __name__ == "__main__":
    main()
