"""One door for a run's configuration: :func:`resolve_run` merges every source in one order.

Sources, later ones winning (the names are what ``--print-config`` shows as each value's source)::

    default            TrainConfig's fields, the backbone's hyper-parameters and default_patience
    stored config.json  a resumed run's own settings
    config file         ``--config FILE``, or the study entry of ``mrdib run`` / ``mrdib sweep``
    command line        ``--backbone``, ``--lr``, ``--n-layers 2``, ...
    plug-in option      the plug-in's own flags (``--mrdib --alpha-kl 0.01``) and ``--plugin-opt``
    --set               ``--set key=value``

``mrdib train``, ``mrdib run``, ``mrdib sweep`` and the benchmarks all build their runs here, so the same
settings give the same run whichever command started it. The result is a frozen :class:`RunConfig`: the
trainer reads it and never changes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from types import MappingProxyType
from typing import Any

from mrdib_cli.defaults import LATER_TRAIN_DEFAULTS
from mrdib_cli.errors import UsageError
from mrdib_cli.training.config import TOP_KEYS, TRAIN_KEYS, TrainConfig, parse_value, train_value

DEFAULT = "default"
STORED = "stored config.json"
CONFIG_FILE = "config file"
COMMAND_LINE = "command line"
PLUGIN_OPTION = "plug-in option"
SET = "--set"
#: a feature table picked because it is the newest of its modality (none named)
NEWEST = "newest of its modality"
SECTIONS = ("train", "hparams", "plugin", "features")
SCALARS = ("backbone", "dataset", "run_name")


@dataclass(frozen=True)
class RunConfig:
    """A resolved run: every value filled in, hyper-parameters included; ``sources`` says where each
    dotted key (``train.lr``, ``hparams.n_layers``, ...) came from."""

    backbone: str
    dataset: str | None
    run_name: str | None
    train: TrainConfig
    hparams: Mapping[str, Any]
    plugin: Mapping[str, Any] | None = None
    features: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    sources: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready values (what ``config.json`` stores besides provenance)."""
        return {"backbone": self.backbone, "dataset": self.dataset, "run_name": self.run_name,
                "train": asdict(self.train), "hparams": dict(self.hparams),
                "plugin": None if self.plugin is None else dict(self.plugin), "features": dict(self.features)}

    def with_sources(self) -> dict[str, Any]:
        """:meth:`to_dict` plus ``sources``: where every value came from, keyed ``train.lr``, ``hparams.x``..."""
        return {**self.to_dict(), "sources": dict(self.sources)}


class _Layers:
    """Dotted key -> (value, source), filled source by source in increasing priority."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.sources: dict[str, str] = {}

    def put(self, key: str, value: Any, source: str) -> None:
        if key == "plugin.name" and self.values.get(key) not in (None, value):
            for k in [k for k in self.values if k.startswith("plugin.")]:  # another plug-in: drop its options
                del self.values[k], self.sources[k]
        self.values[key], self.sources[key] = value, source

    def add(self, data: Mapping[str, Any] | None, source: str) -> None:
        """A nested mapping as in a config file (unknown keys are errors naming ``source``)."""
        if not data:
            return
        unknown = sorted(set(data) - set(TOP_KEYS))
        if unknown:
            raise UsageError(f"{source}: unknown key(s) {', '.join(unknown)} (valid: {', '.join(TOP_KEYS)})")
        for section in SECTIONS:
            if data.get(section) is not None and not isinstance(data[section], Mapping):
                raise UsageError(f"{source}: '{section}' must be a mapping of key: value, got {data[section]!r}")
        for key in SCALARS:
            if data.get(key) is not None:
                self.put(key, data[key], source)
        for k, v in (data.get("train") or {}).items():
            self.put(f"train.{k}", train_value(k, v, source), source)
        plugin = data.get("plugin")
        if plugin is not None:
            if "name" not in plugin and "plugin.name" not in self.values:
                raise UsageError(f"{source}: plugin needs a 'name'")
            if "name" in plugin:
                self.put("plugin.name", plugin["name"], source)
        for section in ("hparams", "plugin", "features"):
            for k, v in (data.get(section) or {}).items():
                if (section, k) != ("plugin", "name"):
                    self.put(f"{section}.{k}", str(v) if section == "features" else v, source)

    def add_sets(self, sets: Iterable[str], backbone_keys: set[str]) -> None:
        """``--set key=value`` items: dotted keys, or bare ones looked up among training options first."""
        backbone = self.values.get("backbone", "")
        for item in sets:
            key, eq, raw = item.partition("=")
            if not eq or not key.strip():
                raise UsageError(f"--set expects key=value, got {item!r}")
            key, value = key.strip(), parse_value(raw)
            section, dot, name = key.partition(".")
            if not dot and key in SCALARS:
                self.put(key, value, SET)
                continue
            if not dot:
                section, name = ("train" if key in TRAIN_KEYS else "hparams"), key
                if section == "hparams" and key not in backbone_keys:
                    raise UsageError(f"--set {key}: not a training option nor a hyper-parameter of "
                                     f"{backbone} (training: {', '.join(TRAIN_KEYS)}; "
                                     f"{backbone}: {', '.join(sorted(backbone_keys))})")
            if section not in SECTIONS:
                raise UsageError(f"--set {key}: unknown section '{section}' (train, hparams, plugin, features)")
            if section == "plugin" and "plugin.name" not in self.values:
                raise UsageError(f"--set {key}: no plug-in selected (use --plugin NAME)")
            if section == "train":
                value = train_value(name, value, SET)
            self.put(f"{section}.{name}", str(value) if section == "features" else value, SET)

    def section(self, name: str) -> dict[str, Any]:
        prefix = name + "."
        return {k[len(prefix):]: v for k, v in self.values.items() if k.startswith(prefix)}


def resolve_run(ws: Any = None, *, stored: Mapping[str, Any] | None = None,
                file: Mapping[str, Any] | None = None, file_source: str = CONFIG_FILE,
                flags: Mapping[str, Any] | None = None, plugin: Mapping[str, Any] | None = None,
                sets: Iterable[str] = ()) -> RunConfig:
    """Merge the sources in order (see the module docstring) and fill every default once.

    Each source is a nested mapping shaped like a config file (``backbone``, ``train: {...}``,
    ``hparams: {...}``, ...); ``plugin`` holds the plug-in options from the command line (``name`` included).
    ``ws`` (a :class:`~mrdib_cli.workspace.Workspace`) names the active dataset when none is given.
    """
    from mrdib_cli.models.base import get_backbone, resolve_hparams

    layers = _Layers()
    if stored:
        layers.add({k: stored[k] for k in ("backbone", "dataset", "run_name", *SECTIONS) if stored.get(k) is not None},
                   STORED)
    layers.add(file, file_source)
    layers.add(flags, COMMAND_LINE)
    layers.add({"plugin": dict(plugin)} if plugin else None, PLUGIN_OPTION)
    sets = list(sets)
    for item in sets:  # a --set backbone=... decides which hyper-parameters the other --set items may name
        if item.partition("=")[0].strip() == "backbone":
            layers.put("backbone", parse_value(item.partition("=")[2]), SET)
    if not layers.values.get("backbone"):
        raise UsageError("no backbone given: use --backbone NAME (or 'backbone:' in --config)")
    cls = get_backbone(str(layers.values["backbone"]))
    layers.add_sets(sets, set(cls.defaults))
    dataset = layers.values.get("dataset")
    if dataset is None and ws is not None:
        dataset = ws.resolve_dataset(None)
    sources = dict(layers.sources)
    hparams = resolve_hparams(cls, str(dataset or ""), layers.section("hparams"))
    train = layers.section("train")
    if "patience" not in train and getattr(cls, "default_patience", None):
        train["patience"] = int(cls.default_patience)  # e.g. SOIL's released code stops after 10 bad epochs
        sources["train.patience"] = f"{cls.name} default"
    tc = TrainConfig(**train)
    tc.validate(lambda key: _named(sources, f"train.{key}"))
    plug = layers.section("plugin")
    for key in [*SCALARS, *(f"train.{k}" for k in TRAIN_KEYS), *(f"hparams.{k}" for k in hparams)]:
        if key not in sources:
            ds_default = key.startswith("hparams.") and key[8:] in _dataset_defaults(cls, dataset)
            sources[key] = f"{cls.name} default for {dataset}" if ds_default else DEFAULT
    cfg = RunConfig(backbone=cls.name, dataset=None if dataset is None else str(dataset),
                    run_name=layers.values.get("run_name"), train=tc, hparams=MappingProxyType(hparams),
                    plugin=MappingProxyType(plug) if plug else None,
                    features=MappingProxyType(layers.section("features")), sources=MappingProxyType(sources))
    check_run(cfg)
    return cfg


def check_run(cfg: RunConfig) -> None:
    """Refuse, when the configuration is resolved, what the run itself would refuse later: so that nothing is
    written, and ``--print-config`` and dry runs show no configuration that cannot train."""
    check_plugin(cfg)
    check_minibatch(cfg)


def check_plugin(cfg: RunConfig) -> None:
    """The plug-in's options (names, types, ranges), and whether it can work with this backbone and mode."""
    if not cfg.plugin:
        return
    from mrdib_cli.models.base import get_backbone
    from mrdib_cli.training.plugin import create_plugin

    if "resolved" in cfg.plugin and cfg.sources.get("plugin.resolved") != STORED:
        raise UsageError("plugin.resolved is what a run derives from its backbone when it starts (config.json "
                         "stores it), not an option: remove it")
    plugin = create_plugin(str(cfg.plugin.get("name")), {k: v for k, v in cfg.plugin.items() if k != "name"})
    why = plugin.refuses_backbone(get_backbone(cfg.backbone))
    if why:
        raise UsageError(why)
    if cfg.train.minibatch == "sampled" and (why := plugin.refuses_sampled()):
        raise UsageError(f"--minibatch sampled: {why}, or use --minibatch full")


def check_minibatch(cfg: RunConfig) -> None:
    """Refuse a ``--minibatch sampled`` run this version cannot train (and a sampled-only option without it),
    when the configuration is resolved: before anything is written, and in ``--print-config`` and dry runs."""
    from mrdib_cli.models.base import get_backbone, sampled_backbones

    tc = cfg.train
    if tc.minibatch == "full":
        if tc.node_budget:
            raise UsageError(f"{named(cfg, 'train.node_budget')} bounds the neighbourhoods of --minibatch "
                             "sampled; set minibatch to sampled, or node_budget to 0")
        if _fanout_given(cfg):
            raise UsageError(f"{named(cfg, 'train.fanout')} sets the neighbourhoods of --minibatch sampled; "
                             "set minibatch to sampled, or remove it")
        return
    supported = sampled_backbones()
    if cfg.backbone not in supported:
        raise UsageError(f"--minibatch sampled is not available for {cfg.backbone} (available for: "
                         f"{', '.join(supported)}); use --minibatch full")
    if cfg.plugin and not get_backbone(cfg.backbone).sampled_hook_rows:
        able = ", ".join(n for n in supported if get_backbone(n).sampled_hook_rows)
        raise UsageError(f"--minibatch sampled takes a plug-in only on backbones that pass its hooks the step's "
                         f"rows ({able}), not on {cfg.backbone}; drop the plug-in or use --minibatch full")
    if tc.weight_decay:
        raise UsageError(f"--minibatch sampled updates embedding rows lazily and has no weight decay, but "
                         f"{named(cfg, 'train.weight_decay')} is {tc.weight_decay:g}; set it to 0 or use "
                         "--minibatch full")
    check_fanout(cfg)


def check_fanout(cfg: RunConfig) -> None:
    """Refuse fan-outs the sampled step would not use (more values than it samples hops), and a node budget
    where it samples none: a user who asked for them would otherwise believe they shaped the run."""
    from mrdib_cli.models.base import get_backbone

    fanout, cls = tuple(cfg.train.fanout), get_backbone(cfg.backbone)
    hops = cls.sampled_hops(cfg.hparams, bool(cfg.plugin))
    if hops == 0 and _fanout_given(cfg):
        raise UsageError(f"{cfg.backbone}'s sampled step reads no graph neighbourhood, so "
                         f"{named(cfg, 'train.fanout')} has no effect; remove it")
    if hops == 0 and cfg.train.node_budget:
        raise UsageError(f"{cfg.backbone}'s sampled step reads no graph neighbourhood, so "
                         f"{named(cfg, 'train.node_budget')} has no effect; set it to 0")
    if len(fanout) > max(hops, 1):
        fix = f"give at most {hops} (the last serves deeper hops) or raise {cls.hop_settings}"
        if cfg.sources.get("train.fanout") == STORED:  # a run stored before this check: its settings are fixed
            fix = "train it again with --force, or as a new run with another --run-name"
        raise UsageError(f"{named(cfg, 'train.fanout')} gives {len(fanout)} values, one per hop, but "
                         f"{cfg.backbone} samples {hops} hop(s) with these settings; {fix}")


def _fanout_given(cfg: RunConfig) -> bool:
    """Whether a fan-out was asked for: a value other than the default, or the default typed on the command line
    (``--fanout 10``, ``--set fanout=10``), where the user expects it to shape the run. A config file may hold
    the default: ``--print-config`` writes every value, and its output must train when fed back."""
    return (tuple(cfg.train.fanout) != tuple(LATER_TRAIN_DEFAULTS["fanout"])
            or cfg.sources.get("train.fanout") in (COMMAND_LINE, SET))


def named(cfg: RunConfig, key: str) -> str:
    """An option as a refusal names it: with its flag when the command line set it, else with where it came
    from (a config file, a study, --set, a stored run), so the user knows what to change."""
    return _named(cfg.sources, key)


def _named(sources: Mapping[str, str], key: str) -> str:
    name, source = key.rpartition(".")[2], sources.get(key, DEFAULT)
    if source == COMMAND_LINE:
        return f"{name} (--{name.replace('_', '-')})"
    return f"{name} ({'its default' if source == DEFAULT else 'from ' + source})"


def _dataset_defaults(cls: Any, dataset: Any) -> set[str]:
    """Hyper-parameters whose default ``cls`` sets per dataset, for this dataset (e.g. LGMRec on Sports)."""
    name = str(dataset or "").lower()
    return {k for key, d in cls.dataset_defaults.items() if name.startswith(key) for k in d}


def with_run_name(cfg: RunConfig, run_name: str) -> RunConfig:
    """A copy of ``cfg`` naming its run (the default name is only known once the dataset is)."""
    return replace(cfg, run_name=run_name, sources=MappingProxyType({**cfg.sources, "run_name": DEFAULT}))

