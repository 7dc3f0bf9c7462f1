"""Study configuration for ``mrdib run`` / ``mrdib sweep`` (YAML or TOML), validated strictly.

A study is datasets x backbones x seeds (x MRdIB off/on). Every key is checked: an unknown key or a value
of the wrong type is a one-line error naming the key (``study.yaml: train.lr must be a number, got 'fast'``),
because a typo silently ignored is a result silently wrong. The ``train`` section is the trainer's own
:class:`~mrdib_cli.training.config.TrainConfig` (checked by the trainer's ``train_value``), and backbone
hyper-parameters are checked against the backbone's declared defaults, so there is one source of truth.

Schema (all sections optional except ``datasets`` and ``backbones``)::

    name: demo-study              # prefix of run names and the report folder
    datasets:                     # list; each entry one of
      - {name: demo, source: demo, prepare: {users: 600, items: 300, interactions: 6000}}
      - {name: baby, source: baby, prepare: {k_core: 5, raw_dir: /data/raw}}
      - {name: baby, import: {format: lattice, dir: /data/baby}}
    features:                     # what extract-features runs (false/omitted modality = skipped)
      image: {model: ViT-B-32, pretrained: laion2b_s34b_b79k}   # or pretrained: none + allow_random_weights
      text: {model: all-MiniLM-L6-v2}
      device: auto
    graph: {knn_k: 10, knn_norm: [sym_binary], adj: [sym]}
    backbones: [lightgcn, {name: lgmrec, hparams: {n_ui_layers: 2}}]
    seeds: [999, 1000]
    mrdib: [false, true]          # bool or list of bools
    mrdib_options: {alpha_kl: 0.005}
    train: {epochs: 50, patience: 20}
    eval: {masks: [train, train+valid]}
    report: {out: reports/demo}
    sweep: {grid: {n_ui_layers: [1, 2], train.lr: [1e-3, 1e-4]}, metric: recall@20}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mrdib_cli.defaults import SEED
from mrdib_cli.errors import UsageError
from mrdib_cli.training.config import TrainConfig, load_config_file, train_value

DATASET_SOURCES_HINT = "'demo', an Amazon 2014 category (baby, sports, clothing, ...)"


@dataclass
class DatasetSpec:
    name: str
    source: str | None = None  # demo / amazon category; None when imported
    prepare: dict[str, Any] = field(default_factory=dict)
    import_: dict[str, Any] | None = None


@dataclass
class BackboneSpec:
    name: str
    hparams: dict[str, Any] = field(default_factory=dict)


@dataclass
class Study:
    """A validated study configuration."""

    path: Path | None
    name: str
    datasets: list[DatasetSpec]
    backbones: list[BackboneSpec]
    seeds: list[int] = field(default_factory=lambda: [SEED])
    mrdib: list[bool] = field(default_factory=lambda: [False])
    mrdib_options: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)  # the train options given; see train_config
    features: dict[str, Any] = field(default_factory=dict)
    graph: dict[str, Any] = field(default_factory=lambda: {"knn_k": 10, "knn_norm": ["sym_binary"],
                                                         "adj": ["sym"]})
    eval_masks: list[str] = field(default_factory=list)
    report_out: str | None = None
    sweep: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def train_config(self) -> TrainConfig:
        """The study's train options over the defaults (a backbone's own patience is added per run)."""
        return TrainConfig(**self.train)


# ----------------------------------------------------------------------------------------- checking
class _Checker:
    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, key: str, msg: str) -> None:
        raise UsageError(f"{self.where}: {key} {msg}")

    def keys(self, d: Any, key: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if d is None:
            return {}
        if not isinstance(d, dict):
            self.fail(key or "top level", f"must be a mapping, got {_show(d)}")
        unknown = sorted(set(d) - set(allowed))
        if unknown:
            k = f"{key}.{unknown[0]}" if key else unknown[0]
            raise UsageError(f"{self.where}: unknown key '{k}' (valid{' in ' + key if key else ''}: "
                             f"{', '.join(allowed)})")
        return d

    def typed(self, v: Any, key: str, types: tuple[type, ...], what: str) -> Any:
        if isinstance(v, bool) and bool not in types:
            self.fail(key, f"must be {what}, got {_show(v)}")
        if int in types and float in types and isinstance(v, int) and not isinstance(v, bool):
            return v
        if not isinstance(v, types):
            self.fail(key, f"must be {what}, got {_show(v)}")
        return v

    def str_(self, v: Any, key: str) -> str:
        return self.typed(v, key, (str,), "a string")

    def int_(self, v: Any, key: str) -> int:
        return self.typed(v, key, (int,), "an integer")

    def bool_(self, v: Any, key: str) -> bool:
        return self.typed(v, key, (bool,), "true or false")

    def list_of(self, v: Any, key: str, one, allow_scalar: bool = True) -> list[Any]:  # noqa: ANN001
        if not isinstance(v, list):
            if not allow_scalar:
                self.fail(key, f"must be a list, got {_show(v)}")
            v = [v]
        return [one(x, f"{key}[{i}]") for i, x in enumerate(v)]


def _show(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


TOP = ("name", "datasets", "dataset", "features", "graph", "backbones", "backbone", "seeds", "seed", "mrdib",
       "mrdib_options", "train", "eval", "report", "sweep")
PREPARE_KEYS = ("k_core", "split", "seed", "raw_dir", "base_url", "max_malformed", "users", "items",
                "interactions", "image_size")
IMPORT_KEYS = ("format", "dir", "features", "feature_dim")
IMAGE_KEYS = ("model", "pretrained", "checkpoint", "allow_random_weights", "image_dir", "model_config")
TEXT_KEYS = ("model", "template")
FEATURE_KEYS = ("image", "text", "device", "batch_size", "normalize")
GRAPH_KEYS = ("knn_k", "knn_norm", "adj", "cooccurrence")
SWEEP_KEYS = ("grid", "metric")


def _dataset(c: _Checker, d: Any, key: str) -> DatasetSpec:
    if isinstance(d, str):
        return DatasetSpec(name=d, source=d)
    d = c.keys(d, key, ("name", "source", "prepare", "import"))
    if "name" not in d and "source" not in d:
        c.fail(key, "needs a 'name' (and 'source' or 'import')")
    name = c.str_(d.get("name", d.get("source")), f"{key}.name")
    prep = c.keys(d.get("prepare"), f"{key}.prepare", PREPARE_KEYS)
    for k, v in prep.items():
        if k in ("k_core", "seed", "users", "items", "interactions", "image_size"):
            c.int_(v, f"{key}.prepare.{k}")
        elif k == "max_malformed":
            c.typed(v, f"{key}.prepare.{k}", (int, float), "a number")
        else:
            c.str_(v, f"{key}.prepare.{k}")
    imp = None
    if d.get("import") is not None:
        if "source" in d or prep:
            c.fail(key, "has both 'import' and 'source'/'prepare'; a dataset is either prepared or imported")
        imp = dict(c.keys(d["import"], f"{key}.import", IMPORT_KEYS))
        for k in ("format", "dir"):
            if k not in imp:
                c.fail(f"{key}.import", f"needs '{k}'")
            c.str_(imp[k], f"{key}.import.{k}")
        if imp["format"] not in ("mmrec", "lattice", "recbole"):
            c.fail(f"{key}.import.format", f"must be mmrec, lattice or recbole, got {_show(imp['format'])}")
    source = None if imp else c.str_(d.get("source", name), f"{key}.source")
    return DatasetSpec(name=name, source=source, prepare=dict(prep), import_=imp)


def _backbone(c: _Checker, b: Any, key: str) -> BackboneSpec:
    from mrdib_cli.models.base import get_backbone

    if isinstance(b, str):
        b = {"name": b}
    b = c.keys(b, key, ("name", "hparams"))
    name = c.str_(b.get("name"), f"{key}.name")
    try:
        cls = get_backbone(name)
    except UsageError as e:
        raise UsageError(f"{c.where}: {key}.name: {e}") from None
    hp = c.keys(b.get("hparams"), f"{key}.hparams", tuple(sorted(cls.defaults)))
    for k, v in hp.items():
        _check_like(c, v, cls.defaults[k], f"{key}.hparams.{k}")
    return BackboneSpec(cls.name, dict(hp))


def _check_like(c: _Checker, v: Any, default: Any, key: str) -> None:
    """A value must have the type of the declared default (ints accepted for floats)."""
    if default is None or v is None:
        return
    if isinstance(default, bool):
        c.bool_(v, key)
    elif isinstance(default, float):
        c.typed(v, key, (int, float), "a number")
    elif isinstance(default, int):
        c.int_(v, key)
    elif isinstance(default, str):
        c.str_(v, key)
    elif isinstance(default, (list, tuple)):
        c.typed(v, key, (list,), "a list")


def _train(c: _Checker, d: Any) -> dict[str, Any]:
    """The ``train`` options given (only those: the resolver fills the rest, a backbone's patience included)."""
    given: dict[str, Any] = {}
    for k, v in c.keys(d, "train", tuple(TrainConfig.__dataclass_fields__)).items():
        default = getattr(TrainConfig(), k)
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            c.typed(v, f"train.{k}", (int, float) if isinstance(default, float) else (int,),
                    "a number" if isinstance(default, float) else "an integer")
        try:
            given[k] = train_value(k, v, c.where)
        except UsageError as e:
            raise UsageError(str(e).replace("training option '", "train.").replace("' must", " must")) from None
    try:
        TrainConfig(**given).validate(lambda key: f"train.{key}")
    except UsageError as e:
        raise UsageError(f"{c.where}: {e}") from None
    return given


def _features(c: _Checker, d: Any) -> dict[str, Any]:
    d = dict(c.keys(d, "features", FEATURE_KEYS))
    for mod, keys in (("image", IMAGE_KEYS), ("text", TEXT_KEYS)):
        v = d.get(mod)
        if v is None or v is False:
            d[mod] = None
            continue
        if v is True:
            v = {}
        sec = dict(c.keys(v, f"features.{mod}", keys))
        for k, x in sec.items():
            if k == "allow_random_weights":
                c.bool_(x, f"features.{mod}.{k}")
            elif not (k == "pretrained" and x is None):
                c.str_(x, f"features.{mod}.{k}")
        d[mod] = sec
    if "device" in d:
        c.str_(d["device"], "features.device")
    if "batch_size" in d:
        c.int_(d["batch_size"], "features.batch_size")
    if "normalize" in d:
        c.bool_(d["normalize"], "features.normalize")
    return d


def _graph(c: _Checker, d: Any) -> dict[str, Any]:
    from mrdib_cli.graphs.knn import NORMS
    from mrdib_cli.graphs.store import ADJ_VARIANTS

    d = c.keys(d, "graph", GRAPH_KEYS)
    g = {"knn_k": c.int_(d.get("knn_k", 10), "graph.knn_k"),
         "knn_norm": c.list_of(d.get("knn_norm", ["sym_binary"]), "graph.knn_norm", c.str_),
         "adj": c.list_of(d.get("adj", ["sym"]), "graph.adj", c.str_),
         "cooccurrence": c.int_(d.get("cooccurrence", 0), "graph.cooccurrence")}
    for n in g["knn_norm"]:
        if n not in NORMS:
            c.fail("graph.knn_norm", f"has unknown normalisation '{n}' (choose from {', '.join(NORMS)})")
    for a in g["adj"]:
        if a not in ADJ_VARIANTS:
            c.fail("graph.adj", f"has unknown variant '{a}' (choose from {', '.join(ADJ_VARIANTS)})")
    return g


def _sweep(c: _Checker, d: Any, backbones: list[BackboneSpec]) -> dict[str, Any] | None:
    if d is None:
        return None
    d = c.keys(d, "sweep", SWEEP_KEYS)
    grid = c.keys(d.get("grid"), "sweep.grid", tuple(str(k) for k in (d.get("grid") or {})))
    if not grid:
        c.fail("sweep.grid", "must map at least one parameter to a list of values")
    from mrdib_cli.models.base import get_backbone

    hp_keys = set().union(*[set(get_backbone(b.name).defaults) for b in backbones])
    train_keys = set(TrainConfig.__dataclass_fields__)
    out: dict[str, list[Any]] = {}
    for k, vals in grid.items():
        section, dot, name = k.partition(".")
        if not dot:
            section, name = ("train" if k in train_keys else "hparams"), k
        ok = ((section == "train" and name in train_keys) or (section == "hparams" and name in hp_keys)
              or section == "mrdib_options")
        if not ok:
            raise UsageError(f"{c.where}: unknown key 'sweep.grid.{k}' (not a training option nor a "
                             f"hyper-parameter of {', '.join(b.name for b in backbones)})")
        vals = c.list_of(vals, f"sweep.grid.{k}", lambda x, _k: x, allow_scalar=False)
        if not vals:
            c.fail(f"sweep.grid.{k}", "must list at least one value")
        out[f"{section}.{name}"] = vals
    metric = c.str_(d.get("metric", "recall@20"), "sweep.metric")
    return {"grid": out, "metric": metric}


def parse_study(data: dict[str, Any], where: str = "config", path: Path | None = None) -> Study:
    """Validate a study mapping (from a YAML/TOML file) into a :class:`Study`."""
    c = _Checker(where)
    data = c.keys(data, "", TOP)
    for a, b in (("datasets", "dataset"), ("backbones", "backbone"), ("seeds", "seed")):
        if a in data and b in data:
            c.fail(a, f"and '{b}' are both given; use one")
    ds_raw = data.get("datasets", data.get("dataset"))
    if ds_raw is None:
        c.fail("datasets", "is missing (e.g. datasets: [demo])")
    datasets = c.list_of(ds_raw, "datasets", lambda x, k: _dataset(c, x, k))
    names = [d.name for d in datasets]
    if len(set(names)) != len(names):
        c.fail("datasets", "lists a dataset name twice")
    bb_raw = data.get("backbones", data.get("backbone"))
    if bb_raw is None:
        c.fail("backbones", "is missing (e.g. backbones: [lightgcn, lgmrec])")
    backbones = c.list_of(bb_raw, "backbones", lambda x, k: _backbone(c, x, k))
    seeds = c.list_of(data.get("seeds", data.get("seed", [SEED])), "seeds", c.int_)
    mrdib = c.list_of(data.get("mrdib", [False]), "mrdib", c.bool_)
    raw_opts = data.get("mrdib_options")
    opts = c.keys(raw_opts, "mrdib_options", tuple(str(k) for k in raw_opts) if isinstance(raw_opts, dict) else ())
    name = c.str_(data.get("name", path.stem if path else "study"), "name")
    from mrdib_cli.workspace import check_name

    check_name(name, "study name")
    ev = c.keys(data.get("eval"), "eval", ("masks",))
    masks = c.list_of(ev.get("masks", []), "eval.masks", c.str_)
    for m in masks:
        if m not in ("train", "train+valid"):
            c.fail("eval.masks", f"has unknown mask '{m}' (train or train+valid)")
    rep = c.keys(data.get("report"), "report", ("out",))
    return Study(path=path, name=name, datasets=datasets, backbones=backbones, seeds=seeds,
                 mrdib=list(dict.fromkeys(mrdib)), mrdib_options=dict(opts), train=_train(c, data.get("train")),
                 features=_features(c, data.get("features")), graph=_graph(c, data.get("graph")),
                 eval_masks=masks, report_out=c.str_(rep["out"], "report.out") if "out" in rep else None,
                 sweep=_sweep(c, data.get("sweep"), backbones), raw=data)


def load_study(path: str | Path) -> Study:
    """Read and validate a study file (YAML/TOML; the trainer's reader, so both accept the same files).

    Relative paths inside the file (import dirs, raw dirs, model configs, checkpoints, image dirs) are taken
    relative to the file's folder, so a study folder can be moved or shared as a whole.
    """
    p = Path(path)
    study = parse_study(load_config_file(p), where=p.name, path=p)
    resolve_paths(study, p.resolve().parent)
    return study


def _rel(value: str, base: Path) -> str:
    q = Path(value).expanduser()
    return str(q if q.is_absolute() else base / q)


def resolve_paths(study: Study, base: Path) -> None:
    for d in study.datasets:
        if d.import_ and "dir" in d.import_:
            d.import_["dir"] = _rel(d.import_["dir"], base)
        if "raw_dir" in d.prepare:
            d.prepare["raw_dir"] = _rel(d.prepare["raw_dir"], base)
    image = study.features.get("image")
    if image:
        for k in ("model_config", "checkpoint", "image_dir"):
            if image.get(k):
                image[k] = _rel(image[k], base)
