"""Visual tokens → projector → `inputs_embeds` at the image position of the chat template → greedy answer.

Exactly the tokens given are fed: the chat-rendered prompt holds one image placeholder token, which is
replaced by the M' projected tokens (M' = all N patches, or `len(reduction.tokens)`); nothing else is added.
Decoding is greedy (argmax, ties → lowest id), one token per forward with the KV cache, so it is
deterministic and the prefill (the first forward over the whole prompt) is timed on its own.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import Tensor

from .protocol import Answer

# LLaVA-1.5's conversation format, used when a checkpoint ships no chat template.
LLAVA_15_FORMAT = "USER: {image}\n{prompt} ASSISTANT:"


@dataclass(frozen=True)
class ChatPrompt:
    """Token ids of the rendered chat prompt before and after the (single) image placeholder."""

    before: tuple[int, ...]
    after: tuple[int, ...]
    text: str

    @property
    def n_text(self) -> int:
        return len(self.before) + len(self.after)


def render_chat(prompt: str, image_token: str, tokenizer, processor=None) -> str:
    """The checkpoint's chat template with one image placeholder and the generation prompt appended."""
    prompt = (prompt or "").replace(image_token, " ").strip()
    template_owner = processor if getattr(processor, "chat_template", None) else None
    if template_owner is not None:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return template_owner.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": f"{image_token}\n{prompt}"}]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return LLAVA_15_FORMAT.format(image=image_token, prompt=prompt)


def chat_prompt(prompt: str, tokenizer, image_token: str, image_token_id: int, processor=None) -> ChatPrompt:
    text = render_chat(prompt, image_token, tokenizer, processor)
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (bos and text.startswith(bos))
    ids = list(tokenizer(text, add_special_tokens=add_special)["input_ids"])
    slots = [i for i, t in enumerate(ids) if t == image_token_id]
    if len(slots) != 1:
        raise ValueError(f"the chat template produced {len(slots)} image placeholders, expected exactly one")
    return ChatPrompt(tuple(ids[: slots[0]]), tuple(ids[slots[0] + 1 :]), text)


def build_inputs_embeds(embed_tokens, projector, chat: ChatPrompt, tokens: Tensor) -> Tensor:
    """[1, len(before) + M' + len(after), H]: text embeddings around the projected visual tokens."""
    weight = embed_tokens.weight
    device, dtype = weight.device, weight.dtype
    visual = projector(tokens.to(device=device, dtype=dtype))
    before = embed_tokens(torch.tensor(chat.before, dtype=torch.long, device=device))
    after = embed_tokens(torch.tensor(chat.after, dtype=torch.long, device=device))
    return torch.cat([before, visual.to(dtype), after], dim=0).unsqueeze(0)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (so a timer around it measures the work, not the launch)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def greedy_loop(prefill: Callable[[], Tensor], step: Callable[[Tensor, int], Tensor], device: torch.device,
                max_new_tokens: int, stop_ids: set[int], step_lock=None) -> Iterator[tuple[int, float]]:
    """The greedy decoding loop every generator shares: yield (token id, prefill seconds); stops after a stop
    id (yielded) or max_new_tokens.

    `prefill()` runs the first forward over the whole input and returns the first next-token id [1];
    `step(next_id, i)` feeds the i-th generated token (i = 0, 1, …) and returns the next id. Each runs in
    inference mode under `step_lock` (if given); the lock is never held across a yield. The prefill is timed
    on its own, synchronised with the device.
    """
    lock = step_lock if step_lock is not None else nullcontext()
    t0 = time.perf_counter()
    with lock, torch.inference_mode():
        next_id = prefill()
        sync(device)
    prefill_s = time.perf_counter() - t0
    for i in range(max_new_tokens):
        token = int(next_id.item())
        yield token, prefill_s
        if token in stop_ids or i == max_new_tokens - 1:
            return
        with lock, torch.inference_mode():
            next_id = step(next_id, i)


def greedy_stream(model, inputs_embeds: Tensor, max_new_tokens: int, stop_ids: set[int],
                  step_lock=None) -> Iterator[tuple[int, float]]:
    """Yield (token id, prefill seconds) greedily (`greedy_loop`) with the model's own forward and KV cache.

    `model` is a causal LM taking inputs_embeds / input_ids with a KV cache (LlavaForConditionalGeneration).
    """
    device = inputs_embeds.device
    mask = torch.ones(1, inputs_embeds.shape[1], dtype=torch.long, device=device)
    past = None

    def prefill() -> Tensor:
        nonlocal past
        out = model(inputs_embeds=inputs_embeds, attention_mask=mask, use_cache=True, logits_to_keep=1)
        past = out.past_key_values
        return out.logits[:, -1].argmax(-1)

    def step(next_id: Tensor, _i: int) -> Tensor:
        nonlocal mask, past
        mask = torch.cat([mask, mask.new_ones(1, 1)], dim=1)
        out = model(input_ids=next_id.view(1, 1), attention_mask=mask, past_key_values=past, use_cache=True,
                    logits_to_keep=1)
        past = out.past_key_values
        return out.logits[:, -1].argmax(-1)

    return greedy_loop(prefill, step, device, max_new_tokens, stop_ids, step_lock)


def answer_stream(model, embed_tokens, projector, chat: ChatPrompt, tokens: Tensor, decode: Callable[[list[int]], str],
                  max_new_tokens: int, stop_ids: set[int], step_lock=None, generate=None,
                  n_visual_kept: int | None = None, layer: int = 0) -> Iterator[str | Answer]:
    """Yield the growing answer text after every new token, then the final `Answer`.

    `generate` replaces `greedy_stream` (same call and yield protocol). FastV passes one that prunes inside the
    LM at `layer`, keeping `n_visual_kept` of the `tokens` from that layer on (reported in the `Answer`)."""
    t0 = time.perf_counter()
    lock = step_lock if step_lock is not None else nullcontext()
    with lock, torch.inference_mode():
        inputs_embeds = build_inputs_embeds(embed_tokens, projector, chat, tokens)
    n_visual = int(tokens.shape[0])
    ids: list[int] = []
    chosen: list[int] = []  # ids plus the stop token, if one ended the answer
    prefill_s, stop, text = 0.0, "length", ""
    for token, prefill_s in (generate or greedy_stream)(model, inputs_embeds, max_new_tokens, stop_ids, step_lock):
        chosen.append(token)
        if token in stop_ids:
            stop = "eos"
            break
        ids.append(token)
        text = decode(ids)
        yield text
    yield Answer(text=text, n_visual_tokens=n_visual if n_visual_kept is None else int(n_visual_kept),
                 prefill_s=prefill_s, total_s=time.perf_counter() - t0, n_prompt_tokens=int(inputs_embeds.shape[1]),
                 n_new_tokens=len(ids), stop=stop, n_visual_tokens_in=n_visual, layer=int(layer),
                 token_ids=tuple(chosen))
