"""The prompts the published run script builds for each keyframe: the user's prompt + an added prompt + that
keyframe's extra prompt, and a fixed negative prompt; both pairs switch to the "RAW photo" ones when the model id
names a realistic model (run_fresco.py: 'Realistic' or 'realistic' in sd_path)."""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

# the published pairs (run_fresco.py, run_keyframe_translation)
ADDED_PROMPT = ", best quality, extremely detailed, "
NEGATIVE_PROMPT = ("longbody, lowres, bad anatomy, bad hands, missing finger, extra digit, fewer digits, cropped, "
                   "worst quality, low quality")
REALISTIC_ADDED_PROMPT = (", RAW photo, subject, (high detailed skin:1.2), 8k uhd, dslr, soft lighting, high quality, "
                          "film grain, Fujifilm XT3, ")
REALISTIC_NEGATIVE_PROMPT = ("(deformed iris, deformed pupils, semi-realistic, cgi, 3d, render, sketch, cartoon, "
                             "drawing, anime, mutated hands and fingers:1.4), (deformed, distorted, disfigured:1.3), "
                             "poorly drawn, bad anatomy, wrong anatomy, extra limb, missing limb, floating limbs, "
                             "disconnected limbs, mutation, mutated, ugly, disgusting, amputation")


def is_realistic(model: str) -> bool:
    """The published test: the model id or path contains 'Realistic' or 'realistic'."""
    return "Realistic" in model or "realistic" in model


def published_pair(model: str) -> tuple[str, str]:
    """(added prompt, negative prompt) the published script uses for `model`."""
    if is_realistic(model):
        return REALISTIC_ADDED_PROMPT, REALISTIC_NEGATIVE_PROMPT
    return ADDED_PROMPT, NEGATIVE_PROMPT


def parse_extra_prompts(value) -> dict[int, str]:
    """Per-keyframe extra prompts {frame index: text} from a mapping (YAML) or "38:, closed eyes;52:, smiling"
    (CLI); None gives {}. Errors name `extra_prompts` and what is accepted."""
    if value is None or value == {}:
        return {}
    if isinstance(value, str):
        out = {}
        for item in filter(None, (v.strip() for v in value.split(";"))):
            idx, sep, text = item.partition(":")
            if not sep:
                raise ValueError(f"extra_prompts: expected 'FRAME:TEXT' items separated by ';', got {item!r}")
            out[idx.strip()] = text
        value = out
    if not isinstance(value, Mapping):
        raise ValueError(f"extra_prompts: a mapping of frame index to text (or 'FRAME:TEXT;...'), got "
                         f"{type(value).__name__}")
    result = {}
    for k, v in value.items():
        try:
            idx = int(k)
        except (TypeError, ValueError):
            raise ValueError(f"extra_prompts: frame indices must be integers >= 0, got {k!r}") from None
        if idx < 0 or isinstance(k, bool):
            raise ValueError(f"extra_prompts: frame indices must be integers >= 0, got {k!r}")
        if not isinstance(v, str):
            raise ValueError(f"extra_prompts: the text for frame {idx} must be a string, got {type(v).__name__}")
        result[idx] = v
    return result


def format_extra_prompts(value: Mapping) -> str:
    """The CLI/UI text form 'FRAME:TEXT;FRAME:TEXT' of a {frame: text} mapping (parse_extra_prompts reads it back;
    a text holding ';' does not round-trip)."""
    return ";".join(f"{k}:{v}" for k, v in sorted(parse_extra_prompts(value).items()))


def frame_prompts(prompt: str, frames: Sequence[int], added_prompt: str = "",
                  extra_prompts: Optional[Mapping[int, str]] = None) -> list[str]:
    """One prompt per frame of a batch (video frame indices, anchors included): prompt + added_prompt +
    extra_prompts[frame], as published (the anchors keep the prompts they had in their own batch, which are the
    same strings since a frame's prompt depends only on its index)."""
    extra = extra_prompts or {}
    return [prompt + added_prompt + extra.get(int(k), "") for k in frames]
