"""Forward hooks, owned here and nowhere else: registered for one call and removed on exit.

There is no module-level mutable state. Each `capture` call owns the dict it fills and its hook handles,
and a hook records only forwards run by the thread that registered it, so two sessions encoding at once
cannot read each other's tensors even if they share a model (the backend also serialises model forwards
under a lock, which is the simplest correct choice on a shared accelerator).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator, Mapping

import torch
from torch import nn


@contextmanager
def capture(modules: Mapping[str, nn.Module]) -> Iterator[dict[str, torch.Tensor]]:
    """Record the output of each named module during the `with` block (last call wins).

    >>> with capture({"q": layer.self_attn.q_proj, "k": layer.self_attn.k_proj}) as out:
    ...     tower(pixel_values)
    >>> out["q"], out["k"]  # [B, T, D] each, exactly what the modules returned
    """
    owner = threading.get_ident()
    store: dict[str, torch.Tensor] = {}
    handles = []

    def make(name: str):
        def hook(_module, _inputs, output):
            if threading.get_ident() == owner:
                store[name] = output[0] if isinstance(output, tuple) else output

        return hook

    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(make(name)))
        yield store
    finally:
        for handle in handles:
            handle.remove()
