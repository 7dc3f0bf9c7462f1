"""Run configuration pieces: the training options, value parsing and config files.

:mod:`mrdib_cli.training.resolve` merges the sources (defaults <- config file <- command line <- ``--set``);
the resolved configuration is stored in the run folder (``config.json``) and is what ``--print-config``
shows. Unknown keys are errors everywhere (a typo must never be silently ignored). ``--set`` accepts
``train.lr=5e-4``, ``hparams.n_layers=2``, ``plugin.alpha_kl=0.01`` or a bare key, which is looked up
first among the training options, then among the backbone's hyper-parameters.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from mrdib_cli.defaults import EVAL_BATCH_USERS, KS, LATER_TRAIN_DEFAULTS, SEED
from mrdib_cli.errors import MissingInputError, UsageError
from mrdib_cli.evaluation.metrics import METRICS

MINIBATCH_MODES = ("full", "sampled")
#: the largest fan-out and node budget: the sampler's index arithmetic is int64, and a fan-out above a node's
#: degree already keeps every neighbour, so a larger value could only overflow it
MAX_SAMPLE = 2**31 - 1
TOP_KEYS = ("backbone", "dataset", "run_name", "train", "hparams", "plugin", "features")


@dataclass(frozen=True)
class TrainConfig:
    """Training-loop settings; defaults are MMRec's (its ``overall.yaml``). Frozen: the resolver builds it."""

    epochs: int = 1000
    patience: int = 20  # stop on the (patience+1)-th consecutive non-improving epoch, as MMRec
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 2048
    seed: int = SEED
    device: str = "auto"
    valid_metric: str = "recall@20"  # rounded to 4 decimals, strict improvement (MMRec)
    ks: list[int] = field(default_factory=lambda: list(KS))
    eval_batch_users: int = EVAL_BATCH_USERS
    test_mask: str = "train"  # MMRec masks only train items at test time; "train+valid" also masks valid
    threads: int = 0  # torch CPU threads; 0 = the free cores (cores minus the 1-minute load)
    # full: MMRec's whole-graph forward per step; sampled: the batch's neighbourhoods
    minibatch: str = LATER_TRAIN_DEFAULTS["minibatch"]
    # sampled: neighbours per node per hop (the last repeats)
    fanout: list[int] = field(default_factory=lambda: list(LATER_TRAIN_DEFAULTS["fanout"]))
    # sampled: at most this many new nodes per hop of a step's neighbourhood (0: no bound)
    node_budget: int = LATER_TRAIN_DEFAULTS["node_budget"]

    def validate(self, named: Callable[[str], str] = str) -> None:
        """Refuse out-of-range values; ``named`` turns a key into how the refusal names it (with the flag,
        config file or ``--set`` it came from, so the user knows what to change)."""
        for key, ok, rule in self._rules():
            if not ok:
                raise UsageError(f"{named(key)} must be {rule}, got {getattr(self, key)!r}")
        metric, _, k = self.valid_metric.partition("@")
        if metric not in METRICS or not k.isdigit() or int(k) not in self.ks:
            raise UsageError(f"{named('valid_metric')} '{self.valid_metric}' must be '<metric>@K' with metric one "
                             f"of {', '.join(METRICS)} and K in ks {self.ks}")

    def _rules(self) -> list[tuple[str, bool, str]]:
        """(key, whether its value is valid, what a valid value is), in the order they are checked."""
        def count(v: Any, low: int) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and low <= v <= MAX_SAMPLE
        finite = "a finite number"
        return [
            ("epochs", self.epochs >= 1, "an integer >= 1"),
            ("patience", self.patience >= 0, "an integer >= 0"),
            ("batch_size", self.batch_size >= 1, "an integer >= 1"),
            ("seed", isinstance(self.seed, int) and not isinstance(self.seed, bool) and 0 <= self.seed < 2**64,
             "an integer from 0 to 2**64 - 1 (torch's seed range)"),
            ("lr", self.lr > 0 and not math.isinf(self.lr), f"{finite} > 0"),
            ("weight_decay", self.weight_decay >= 0 and not math.isinf(self.weight_decay), f"{finite} >= 0"),
            ("test_mask", self.test_mask in ("train", "train+valid"), "'train' or 'train+valid'"),
            ("ks", bool(self.ks) and all(k >= 1 for k in self.ks), "a non-empty list of positive integers"),
            ("minibatch", self.minibatch in MINIBATCH_MODES, " or ".join(MINIBATCH_MODES)),
            ("fanout", bool(self.fanout) and all(count(k, 1) for k in self.fanout),
             (f"a non-empty list of integers from 1 to {MAX_SAMPLE} (a fan-out above a node's degree keeps all "
              "its neighbours)")),
            ("node_budget", count(self.node_budget, 0), f"an integer from 0 (no bound) to {MAX_SAMPLE}"),
            ("eval_batch_users", count(self.eval_batch_users, 1), f"an integer from 1 to {MAX_SAMPLE}"),
            ("threads", count(self.threads, 0), "an integer >= 0 (0: the free cores)"),
            ("device", self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
             "auto, cpu, cuda or cuda:N"),
        ]


TRAIN_KEYS = tuple(f.name for f in fields(TrainConfig))


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
    if t and t[0] in "[{\"":
        try:
            return json.loads(t)
        except json.JSONDecodeError:
            raise UsageError(f"cannot parse value {text!r} (JSON lists/objects/strings expected)") from None
    return t


def _yaml_load(text: str) -> Any:
    """``yaml.safe_load``, except that ``1e-3`` is a number, as in YAML 1.2 and JSON: PyYAML follows YAML 1.1,
    which wants a dot (``1.0e-3``) and reads ``1e-3`` as text, the way most people write learning rates."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
                                 list("-+0123456789"))
    loader = Loader(text)  # a SafeLoader: plain data only, no Python objects
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


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
            data = _yaml_load(text) or {}
        else:
            raise UsageError(f"config file {p} must end in .yaml, .yml, .toml or .json")
    except UsageError:
        raise
    except Exception as e:  # yaml/toml parse errors carry a line number in their message
        raise UsageError(f"cannot parse config file {p}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UsageError(f"config file {p} must contain a mapping at the top level")
    # what --print-config adds to say where each value came from: read back, the file is where they come from
    data.pop("sources", None)
    return data


def train_value(key: str, value: Any, where: str) -> Any:
    """``value`` for training option ``key``, converted like its default (int -> float, scalar -> list);
    an unknown key or a value of the wrong type is an error naming ``where``."""
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
    return value


def _kind(default: Any) -> str:
    return f"a list of {type(default[0]).__name__}" if isinstance(default, list) else type(default).__name__
