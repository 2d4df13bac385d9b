"""Test-only launcher: `explorer.evaluate` on the tiny seeded LLaVA (tests/tiny.py), CPU, one torch thread.

    python -m tests.evaluate_tiny --images DIR --questions FILE --out OUT ...
    python -m accelerate.commands.launch --multi_gpu --num_processes 2 -m tests.evaluate_tiny ... --device cpu

One thread per process in every run, so a single-process run and a sharded one sum floats in the same order.
"""

from __future__ import annotations

import sys

import torch


def factory(config):
    from tests import tiny

    return tiny.tiny_backend("cpu")


def main(argv=None) -> int:
    from explorer import evaluate

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return evaluate.main(argv, backend_factory=factory)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    sys.exit(main())
