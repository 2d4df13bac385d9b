"""The explorer: model backends, encoding, answers, FLOPs, pictures and the Gradio UI around `reducers/`.

    from explorer.config import ExplorerConfig
    from explorer.service import Explorer          # the app's operations without gradio
    from explorer.ui import build_demo             # the Blocks (the only gradio package besides app.py)
"""

__version__ = "0.5.0"
