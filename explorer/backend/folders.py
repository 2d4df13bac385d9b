"""Converted and assembled weights are written once, atomically, into the user cache dir."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def publish(folder: Path, build: Callable[[Path], None], complete: Callable[[Path], bool]) -> Path:
    """`folder`, built by `build(tmp)` in a temporary sibling and moved into place with os.replace. When another
    process completed it meanwhile, theirs is kept; a folder left incomplete (files deleted by hand, a full disk)
    is replaced. The temporary folder never survives."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        build(tmp)
        if complete(folder):  # another process finished first
            shutil.rmtree(tmp)
        else:
            if folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder
