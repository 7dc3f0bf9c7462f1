"""The open_clip image encoder: model construction, preprocessing and batched encoding.

Only the vision tower is kept (the text tower of a CLIP model is dead weight here). Images are decoded and
preprocessed in DataLoader workers, so decoding overlaps the forward pass; a bad image becomes a per-item
status instead of an exception.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mrdib_cli.errors import DataError, UsageError
from mrdib_cli.features.images_io import DEFAULT_MAX_PIXELS, ImageRef, load_image
from mrdib_cli.features.resolve import ImageWeights


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA without it is a usage error, not a crash."""
    d = (device or "auto").lower()
    if d == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if d.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device} requested but CUDA is not available; use --device cpu or auto")
    try:
        return torch.device(d)
    except RuntimeError:
        raise UsageError(f"unknown device '{device}' (use auto, cpu, cuda or cuda:N)") from None


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """fp16 autocast on CUDA only; CPU stays fp32 (CPU fp16 is slow and changes numerics)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def precision_of(device: torch.device) -> str:
    return "fp16-autocast" if device.type == "cuda" else "fp32"


def _one_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = " ".join(lines[:3])
    return text[:300] + ("..." if len(text) > 300 else "")


@dataclass
class ImageEncoder:
    """A loaded vision tower plus its eval transform and the preprocessing it implies."""

    visual: torch.nn.Module
    transform: Any
    preprocess: dict[str, Any]
    dim: int
    device: torch.device

    @classmethod
    def build(cls, weights: ImageWeights, device: torch.device, seed: int) -> ImageEncoder:
        """Create the model; random weights are seeded so a rerun gives the same (random) features."""
        import open_clip
        from open_clip.transform import PreprocessCfg, image_transform_v2

        torch.manual_seed(seed)
        log = logging.getLogger()
        level = log.level
        log.setLevel(logging.ERROR)  # open_clip logs "initialized randomly" as a warning; we warn ourselves
        try:
            model = open_clip.create_model(weights.model, pretrained=None, device="cpu",
                                           force_quick_gelu=weights.quick_gelu,
                                           force_preprocess_cfg=weights.preprocess_overrides or None)
        except Exception as e:  # noqa: BLE001
            raise UsageError(f"cannot build open_clip model {weights.model}: {_one_line(e)}") from None
        finally:
            log.setLevel(level)
        if weights.path is not None:
            try:
                open_clip.load_checkpoint(model, str(weights.path), strict=True, weights_only=True)
            except RuntimeError as e:
                msg = _one_line(e)
                if "size mismatch" in msg or "Missing key" in msg or "Unexpected key" in msg:
                    raise UsageError(f"checkpoint {weights.path.name} does not fit {weights.model}: {msg} "
                                     "(pick the --image-model it was trained with)") from None
                raise DataError(f"cannot load checkpoint {weights.path}: {msg}") from None
            except Exception as e:  # noqa: BLE001 - unreadable/pickled/garbage files
                raise DataError(f"cannot load checkpoint {weights.path} ({type(e).__name__}: {_one_line(e)}); "
                                "expected an open_clip state dict (.pt/.bin/.safetensors)") from None
        pp = open_clip.get_model_preprocess_cfg(model)
        cfg = PreprocessCfg(**{k: v for k, v in pp.items() if k in PreprocessCfg.__dataclass_fields__})
        transform = image_transform_v2(cfg, is_train=False)
        visual = model.visual.to(device).eval()
        dim = int(model.visual.output_dim) if hasattr(model.visual, "output_dim") else int(
            model.text_projection.shape[1])
        del model
        preprocess = {"size": cfg.size, "resize_mode": cfg.resize_mode, "interpolation": cfg.interpolation,
                      "mean": list(cfg.mean), "std": list(cfg.std), "fill_color": cfg.fill_color,
                      "center_crop": cfg.resize_mode == "shortest", "alpha": "composited on white"}
        return cls(visual, transform, preprocess, dim, device)

    @torch.inference_mode()
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        with autocast(self.device):
            out = self.visual(pixels.to(self.device, non_blocking=True))
        if isinstance(out, tuple):
            out = out[0]
        return out.float()


class _ImageSet(Dataset):
    """Decodes one item per index; returns (position, tensor or None, status, reason)."""

    def __init__(self, refs: Sequence[ImageRef], transform: Any, max_pixels: int) -> None:
        self.refs, self.transform, self.max_pixels = refs, transform, max_pixels

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str, str]:
        ref = self.refs[i]
        if ref.path is None:
            return i, None, ref.status, ref.reason
        img, reason = load_image(Path(ref.path), self.max_pixels)
        if img is None:
            return i, None, "failed", reason
        try:
            return i, self.transform(img), "ok", ""
        except Exception as e:  # noqa: BLE001 - e.g. a 1x1 image the transform rejects
            return i, None, "failed", f"preprocessing failed ({type(e).__name__})"


def _collate(batch: list[tuple[int, torch.Tensor | None, str, str]]) -> tuple[list[int], torch.Tensor | None,
                                                                              list[str], list[str]]:
    pos = [b[0] for b in batch]
    ok = [b[1] for b in batch if b[1] is not None]
    return pos, (torch.stack(ok) if ok else None), [b[2] for b in batch], [b[3] for b in batch]


def iter_image_batches(refs: Sequence[ImageRef], transform: Any, batch_size: int, workers: int,
                       pin_memory: bool, max_pixels: int = DEFAULT_MAX_PIXELS
                       ) -> Iterator[tuple[list[int], torch.Tensor | None, list[str], list[str]]]:
    """Decoded, preprocessed batches in input order (DataLoader keeps order with workers)."""
    loader = DataLoader(_ImageSet(refs, transform, max_pixels), batch_size=batch_size, shuffle=False,
                        num_workers=max(0, workers), collate_fn=_collate,
                        persistent_workers=False, pin_memory=pin_memory)
    yield from loader


def encode_image_shard(enc: ImageEncoder, refs: Sequence[ImageRef], batch_size: int, workers: int,
                       max_pixels: int = DEFAULT_MAX_PIXELS, on_items: Any = None,
                       stats: dict[str, float] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Encode one shard: (vectors [n, d] with zero rows for non-ok items, status [n], reasons [n]).

    ``stats["forward_s"]`` accumulates the time inside the model forward (incl. the copy back), so the
    share of time the pipeline spends elsewhere is measured on the very same batches.
    """
    n = len(refs)
    vectors = np.zeros((n, enc.dim), dtype=np.float32)
    status = np.empty(n, dtype="<U10")
    reasons = np.empty(n, dtype="<U200")
    for pos, pixels, st, rs in iter_image_batches(refs, enc.transform, batch_size, workers,
                                                  enc.device.type == "cuda", max_pixels):
        status[pos] = st
        reasons[pos] = rs
        if pixels is not None:
            rows = [p for p, s in zip(pos, st) if s == "ok"]
            t = time.perf_counter()
            vectors[rows] = enc.forward(pixels).cpu().numpy()
            if stats is not None:
                stats["forward_s"] = stats.get("forward_s", 0.0) + time.perf_counter() - t
        if on_items is not None:
            on_items(len(pos))
    return vectors, status, reasons
