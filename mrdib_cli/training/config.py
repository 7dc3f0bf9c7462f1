"""Run configuration: defaults <- config file (YAML/TOML) <- command-line options <- ``--set key=value``.

The resolved configuration is stored in the run folder (``config.json``) and is what ``--print-config``
shows. Unknown keys are errors everywhere (a typo must never be silently ignored). ``--set`` accepts
``train.lr=5e-4``, ``hparams.n_layers=2``, ``plugin.alpha_kl=0.01`` or a bare key, which is looked up
first among the training options, then among the backbone's hyper-parameters.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mrdib_cli.errors import MissingInputError, UsageError

TOP_KEYS = ("backbone", "dataset", "run_name", "train", "hparams", "plugin", "features")


@dataclass
class TrainConfig:
    """Training-loop settings; defaults are MMRec's (reference notes §1.6)."""

    epochs: int = 1000
    patience: int = 20  # stop on the (patience+1)-th consecutive non-improving epoch, as MMRec
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 2048
    seed: int = 999
    device: str = "auto"
    valid_metric: str = "recall@20"  # rounded to 4 decimals, strict improvement (MMRec)
    ks: list[int] = field(default_factory=lambda: [10, 20])
    eval_batch_users: int = 4096
    test_mask: str = "train"  # MMRec masks only train items at test time; "train+valid" also masks valid
    threads: int = 0  # torch CPU threads; 0 = the free cores (cores minus the 1-minute load)

    def validate(self) -> None:
        if self.epochs < 1 or self.patience < 0 or self.batch_size < 1 or not self.lr > 0 or math.isinf(self.lr):
            raise UsageError(f"epochs and batch_size must be >= 1, patience >= 0 and lr a finite number > 0 "
                             f"(got epochs={self.epochs}, batch_size={self.batch_size}, patience={self.patience}, "
                             f"lr={self.lr})")
        if not self.weight_decay >= 0 or math.isinf(self.weight_decay):
            raise UsageError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if self.test_mask not in ("train", "train+valid"):
            raise UsageError(f"test_mask must be 'train' or 'train+valid', got {self.test_mask!r}")
        if not self.ks or any(k < 1 for k in self.ks):
            raise UsageError("ks must be a non-empty list of positive integers")
        metric, _, k = self.valid_metric.partition("@")
        if not k.isdigit() or int(k) not in self.ks:
            raise UsageError(f"valid_metric '{self.valid_metric}' must be '<metric>@K' with K in ks {self.ks}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise UsageError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")


TRAIN_KEYS = tuple(f.name for f in fields(TrainConfig))

PATIENCE_UNSET = -1  # placeholder while options are merged: "the user gave no patience"


def resolve_patience(train: TrainConfig, backbone_cls: type) -> None:
    """Fill an unset patience with the backbone's ``default_patience`` (e.g. SOIL's released code stops
    after 10 bad epochs), else MMRec's 20. A patience from --patience, a config file, --set or a resumed
    run's config.json is never overridden."""
    if train.patience == PATIENCE_UNSET:
        train.patience = int(getattr(backbone_cls, "default_patience", None) or TrainConfig.patience)


@dataclass
class RunConfig:
    """Everything that defines a training run (what ``config.json`` stores besides provenance)."""

    backbone: str = ""
    dataset: str | None = None
    run_name: str | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    hparams: dict[str, Any] = field(default_factory=dict)  # overrides; resolved against the backbone
    plugin: dict[str, Any] | None = None  # {"name": ..., option: value, ...}
    features: dict[str, str] = field(default_factory=dict)  # modality -> feature table name

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["train"] = asdict(self.train)
        return d


def parse_value(text: str) -> Any:
    """A ``--set`` value: int, float, bool, null, JSON list/object, else the string itself."""
    t = text.strip()
    for conv in (int, float):
        try:
            return conv(t)
        except ValueError:
            pass
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    if t.lower() in ("null", "none"):
        return None
    if t[:1] in "[{\"":
        try:
            return json.loads(t)
        except json.JSONDecodeError:
            raise UsageError(f"cannot parse value {text!r} (JSON lists/objects/strings expected)") from None
    return t


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (.yaml/.yml) or TOML (.toml) run configuration; keys are checked by :func:`merge`."""
    p = Path(path)
    if not p.exists():
        raise MissingInputError(f"config file not found: {p}")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix.lower() == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib

            data = tomllib.loads(text)
        elif p.suffix.lower() in (".yaml", ".yml", ".json"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            raise UsageError(f"config file {p} must end in .yaml, .yml, .toml or .json")
    except UsageError:
        raise
    except Exception as e:  # yaml/toml parse errors carry a line number in their message
        raise UsageError(f"cannot parse config file {p}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UsageError(f"config file {p} must contain a mapping at the top level")
    return data


def merge(cfg: RunConfig, data: dict[str, Any], where: str) -> None:
    """Merge a nested mapping (from a file) into ``cfg``; unknown keys are errors naming ``where``."""
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {', '.join(unknown)} (valid: {', '.join(TOP_KEYS)})")
    for key in ("backbone", "dataset", "run_name"):
        if key in data:
            setattr(cfg, key, data[key])
    for section in ("train", "hparams", "plugin", "features"):
        if data.get(section) is not None and not isinstance(data[section], dict):
            raise UsageError(f"{where}: '{section}' must be a mapping of key: value, got {data[section]!r}")
    for k, v in (data.get("train") or {}).items():
        set_train(cfg.train, k, v, where)
    cfg.hparams.update(data.get("hparams") or {})
    if data.get("plugin") is not None:
        plug = dict(data["plugin"])
        if "name" not in plug:
            raise UsageError(f"{where}: plugin needs a 'name'")
        cfg.plugin = {**(cfg.plugin or {}), **plug}
    cfg.features.update(data.get("features") or {})


def set_train(train: TrainConfig, key: str, value: Any, where: str) -> None:
    if key not in TRAIN_KEYS:
        raise UsageError(f"{where}: unknown training option '{key}' (valid: {', '.join(TRAIN_KEYS)})")
    default = getattr(TrainConfig(), key)
    bad = UsageError(f"{where}: training option '{key}' must be {_kind(default)}, got {value!r}")
    if isinstance(default, bool) or default is None:
        pass
    elif isinstance(value, bool):  # YAML 'true' is an int to Python; never a count or a rate
        raise bad
    elif isinstance(default, float) and isinstance(value, int):
        value = float(value)
    elif isinstance(default, list):
        value = value if isinstance(value, list) else [value]
        if any(not isinstance(v, type(default[0])) or isinstance(v, bool) for v in value):
            raise bad
    elif not isinstance(value, type(default)):
        raise bad
    setattr(train, key, value)


def _kind(default: Any) -> str:
    return f"a list of {type(default[0]).__name__}" if isinstance(default, list) else type(default).__name__


def apply_sets(cfg: RunConfig, sets: list[str], backbone_keys: set[str]) -> None:
    """Apply ``--set key=value`` items (dotted or bare keys)."""
    for item in sets:
        key, eq, raw = item.partition("=")
        if not eq or not key.strip():
            raise UsageError(f"--set expects key=value, got {item!r}")
        key, value = key.strip(), parse_value(raw)
        section, dot, name = key.partition(".")
        if not dot and key in ("backbone", "dataset", "run_name"):
            setattr(cfg, key, value)
            continue
        if not dot:
            section, name = ("train" if key in TRAIN_KEYS else "hparams"), key
            if section == "hparams" and key not in backbone_keys:
                raise UsageError(f"--set {key}: not a training option nor a hyper-parameter of "
                                 f"{cfg.backbone} (training: {', '.join(TRAIN_KEYS)}; "
                                 f"{cfg.backbone}: {', '.join(sorted(backbone_keys))})")
        if section == "train":
            set_train(cfg.train, name, value, "--set")
        elif section == "hparams":
            cfg.hparams[name] = value
        elif section == "plugin":
            if cfg.plugin is None:
                raise UsageError(f"--set {key}: no plug-in selected (use --plugin NAME)")
            cfg.plugin[name] = value
        elif section == "features":
            cfg.features[name] = str(value)
        else:
            raise UsageError(f"--set {key}: unknown section '{section}' (train, hparams, plugin, features)")
