"""``mrdib run``: a study's whole pipeline as a list of cached steps.

For each dataset: prepare (or import) -> extract-features -> build-graph; then for every backbone x seed x
MRdIB setting: train -> extra evaluations. Every step is a :func:`~mrdib_cli.workspace.cached_step` (the
library functions of the individual commands already are; training is wrapped here with the dataset and
feature digests as inputs and the resolved configuration as parameters), so running a study twice does no
work the second time and a changed key reruns exactly the steps it affects.

``plan(..., execute=False)`` is the dry run: every step says whether it is cached, will run, or is pending
on an earlier step that has not run yet.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from mrdib_cli.errors import MrdibError, UsageError
from mrdib_cli.defaults import settled_train
from mrdib_cli.workflow.config import BackboneSpec, DatasetSpec, Study
from mrdib_cli.workspace import (Manifest, StepResult, Workspace, cached_step, file_digest,
                                 read_json)

Log = Callable[[str], None]
#: training keys that do not change the numbers (the trainer's own resume identity ignores them too)
RUNTIME_TRAIN_KEYS = ("device", "threads", "eval_batch_users", "epochs_log")


@dataclass
class StepRecord:
    """One step of the pipeline as reported by ``run`` and ``--dry-run``."""

    kind: str
    target: str
    state: str  # cached | ran | will run | pending
    reason: str = ""
    seconds: float = 0.0
    run: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RunSpec:
    """One training run of the study."""

    dataset: str
    backbone: BackboneSpec
    seed: int
    mrdib: bool
    run_name: str
    overrides: dict[str, Any] = field(default_factory=dict)  # sweep point: "train.lr" / "hparams.x" -> value


@dataclass
class PipelineResult:
    steps: list[StepRecord]
    runs: list[str]
    dry_run: bool
    report: Path | None = None

    @property
    def n_ran(self) -> int:
        return sum(s.state == "ran" for s in self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "steps": [s.to_dict() for s in self.steps], "runs": self.runs,
                "n_ran": self.n_ran, "report": str(self.report) if self.report else None}


# ------------------------------------------------------------------------------------------ helpers
def manifest_state(base: Path, step: str, inputs: dict[str, str] | None, params: dict[str, Any] | None,
                   manifest_dir: Path | None = None) -> tuple[bool, str]:
    """Would :func:`cached_step` skip ``step``? (inputs/params None = compare with the stored ones)."""
    from mrdib_cli.workspace import _why_stale  # the exact rule cached_step applies

    mpath = (manifest_dir or base / "manifests") / f"{step}.json"
    if not mpath.exists():
        return False, "no previous result"
    old = Manifest.from_dict(read_json(mpath))
    reason = _why_stale(old, old.inputs if inputs is None else inputs, old.params if params is None else params,
                        base)
    return reason is None, reason or "inputs and parameters unchanged"


def run_name(study: str, ds: str, bb: str, mrdib: bool, seed: int, point: str = "") -> str:
    return f"{study}-{ds}-{bb}{'-mrdib' if mrdib else ''}{'-' + point if point else ''}-s{seed}"


def run_specs(study: Study) -> list[RunSpec]:
    """datasets x backbones x MRdIB settings x seeds, in that nesting order (seeds innermost)."""
    return [RunSpec(d.name, b, s, m, run_name(study.name, d.name, b.name, m, s))
            for d in study.datasets for b in study.backbones for m in study.mrdib for s in study.seeds]


def check_plugin_available(study: Study) -> None:
    """MRdIB available and its options valid when a run uses it; options no run would use are refused."""
    if study.mrdib_options and not any(study.mrdib):
        raise UsageError("mrdib_options are set, but no run uses MRdIB (mrdib: false): set mrdib: true (or "
                         "[false, true]), or remove mrdib_options")
    if any(study.mrdib):
        from mrdib_cli.training.plugin import available_plugins

        if "mrdib" not in available_plugins():
            raise UsageError("the study asks for mrdib: true but the MRdIB plug-in is not available in this "
                             "installation (update mrdib, or set mrdib: false)")
        from mrdib_cli.training.plugin import create_plugin

        try:  # unknown or invalid mrdib_options fail now, not after hours of baseline training
            create_plugin("mrdib", dict(study.mrdib_options))
        except UsageError as e:
            raise UsageError(f"mrdib_options: {e}") from None


# ------------------------------------------------------------------------------------------ dataset
def _prepare_params(spec: DatasetSpec, study: Study) -> tuple[Any, dict[str, Any] | None, dict[str, Any]]:
    from mrdib_cli.data.prepare import PrepareOptions

    p = dict(spec.prepare)
    demo_keys = {"users": "n_users", "items": "n_items", "interactions": "n_interactions",
                 "image_size": "image_size"}
    demo = {demo_keys[k]: p.pop(k) for k in list(p) if k in demo_keys}
    extra = {k: p.pop(k) for k in ("raw_dir", "base_url") if k in p}
    opts = PrepareOptions(**p)
    is_demo = (spec.source or "").lower() == "demo"
    if demo and not is_demo:
        raise UsageError(f"datasets '{spec.name}': prepare.users/items/interactions/image_size are for the "
                         "demo dataset only")
    return opts, (demo if is_demo else None), extra


def dataset_step(ws: Workspace, spec: DatasetSpec, study: Study, execute: bool, log: Log) -> StepRecord:
    ds_dir = ws.dataset_dir(spec.name)
    kind = "import" if spec.import_ else "prepare"
    if not execute:
        cached, reason = manifest_state(ds_dir, kind, None, None)
        if cached and spec.import_:
            # re-hash the folder: an import is cheap to check exactly
            d = Path(spec.import_["dir"]).expanduser()
            if d.is_dir():
                inputs = {f"file:{p.name}": file_digest(p) for p in sorted(d.iterdir()) if p.is_file()}
                cached, reason = manifest_state(ds_dir, kind, inputs, None)
        elif cached:
            opts, _, _ = _prepare_params(spec, study)
            old = read_json(ds_dir / "manifests" / "prepare.json")["params"]
            want = {**asdict(opts), "dataset": old.get("dataset")}
            cached = all(old.get(k) == v for k, v in want.items())
            reason = "parameters unchanged (raw files re-hashed when run)" if cached else "parameters changed"
        return StepRecord(kind, spec.name, "cached" if cached else "will run", reason)
    t0 = time.perf_counter()
    if spec.import_:
        from mrdib_cli.data.importers import import_dataset

        imp = dict(spec.import_)
        fmt, directory = imp.pop("format"), Path(imp.pop("dir")).expanduser()
        res, _ = import_dataset(ws, fmt, directory, spec.name, **imp)
    else:
        from mrdib_cli.data.prepare import prepare

        opts, demo, extra = _prepare_params(spec, study)
        raw_dir = Path(extra["raw_dir"]).expanduser() if "raw_dir" in extra else None
        res, _ = prepare(ws, spec.source or spec.name, opts, name=spec.name, raw_dir=raw_dir,
                         url=extra.get("base_url"), demo=demo, log=log)
    return _record(kind, spec.name, res, t0)


def _record(kind: str, target: str, res: StepResult, t0: float, run: str | None = None) -> StepRecord:
    return StepRecord(kind, target, "cached" if res.cached else "ran", res.reason,
                      round(time.perf_counter() - t0, 2), run)


def _feature_options(study: Study) -> tuple[Any, Any, Any]:
    from mrdib_cli.features.extract import ImageOptions, RunOptions, TextOptions

    f = study.features
    ro = RunOptions(device=f.get("device", "auto"), batch_size=f.get("batch_size", 64),
                    normalize=f.get("normalize", True), workers=0)
    io = to = None
    if f.get("image") is not None:
        im = dict(f["image"])
        pre = im.get("pretrained", "laion2b_s34b_b79k")
        io = ImageOptions(model=im.get("model", "ViT-B-32"),
                          pretrained=None if pre in (None, "none") else pre,
                          checkpoint=Path(im["checkpoint"]).expanduser() if im.get("checkpoint") else None,
                          allow_random_weights=bool(im.get("allow_random_weights", False)),
                          image_dir=Path(im["image_dir"]).expanduser() if im.get("image_dir") else None,
                          model_config=Path(im["model_config"]).expanduser() if im.get("model_config") else None)
    if f.get("text") is not None:
        tx = dict(f["text"])
        to = TextOptions(**tx) if tx else TextOptions()
    return ro, io, to


def feature_steps(ws: Workspace, spec: DatasetSpec, study: Study, execute: bool, log: Log) -> list[StepRecord]:
    from mrdib_cli.data.handle import DatasetHandle

    ro, io, to = _feature_options(study)
    todo = [("image", io), ("text", to)]
    todo = [(m, o) for m, o in todo if o is not None]
    if not todo:
        return []
    if not execute:
        if not (ws.dataset_dir(spec.name) / "dataset.json").exists():
            return [StepRecord("features", f"{spec.name}/{m}", "pending", "dataset not built yet") for m, _ in todo]
        return [_feature_dry(ws, spec.name, m, o) for m, o in todo]
    from mrdib_cli.features.extract import extract_image, extract_text

    handle = DatasetHandle.open(ws, spec.name)
    recs = []
    for m, o in todo:
        t0 = time.perf_counter()
        if m == "image" and o.pretrained is None:
            log("[yellow]note:[/yellow] image features use RANDOM open_clip weights (offline demo "
                "configuration): they carry no visual semantics; recorded in the table's provenance")
        r = extract_image(ws, handle, o, ro) if m == "image" else extract_text(ws, handle, o, ro)
        recs.append(StepRecord("features", f"{spec.name}/{m}", "cached" if r.cached else "ran", r.reason,
                               round(time.perf_counter() - t0, 2)))
    return recs


def _feature_dry(ws: Workspace, ds: str, modality: str, opts: Any) -> StepRecord:
    from mrdib_cli.data import feature_store as store
    from mrdib_cli.features.resolve import resolve_image_weights

    if modality == "image":
        if opts.model_config is not None:
            from mrdib_cli.features.resolve import register_model_config

            register_model_config(opts.model_config)
        label = resolve_image_weights(opts.model, opts.pretrained, opts.checkpoint, opts.allow_random_weights).label
    else:
        label = Path(opts.model).name if Path(opts.model).exists() else opts.model.split("/")[-1]
    ds_dir = ws.dataset_dir(ds)
    stem = store.table_path(ds_dir, modality, label).stem
    cached, reason = manifest_state(ds_dir, f"features-{stem}", None, None)
    return StepRecord("features", f"{ds}/{modality}", "cached" if cached else "will run",
                      "table and manifest present (settings re-checked when run)" if cached else reason)


def graph_step(ws: Workspace, spec: DatasetSpec, study: Study, execute: bool) -> StepRecord:
    from mrdib_cli.data.handle import DatasetHandle

    g = study.graph
    if not execute:
        ds_dir = ws.dataset_dir(spec.name)
        if not (ds_dir / "dataset.json").exists():
            return StepRecord("graph", spec.name, "pending", "dataset not built yet")
        handle = DatasetHandle(ds_dir)
        states = [manifest_state(ds_dir, f"graph-adj-{v}", {"train_interactions": handle.digest}, None)
                  for v in g["adj"]]
        ok = all(s[0] for s in states)
        return StepRecord("graph", spec.name, "cached" if ok else "will run",
                          "adjacency up to date (kNN graphs checked when run)" if ok else
                          next(s[1] for s in states if not s[0]))
    from mrdib_cli.graphs.store import build_graphs

    t0 = time.perf_counter()
    handle = DatasetHandle.open(ws, spec.name)
    infos = build_graphs(handle, knn_k=g["knn_k"], knn_norms=tuple(g["knn_norm"]), adj_variants=tuple(g["adj"]),
                         cooccurrence=g["cooccurrence"] or None)
    built = [i.name for i in infos if not i.cached]
    return StepRecord("graph", spec.name, "ran" if built else "cached",
                      f"built {', '.join(built)}" if built else "all graphs up to date",
                      round(time.perf_counter() - t0, 2))


# ------------------------------------------------------------------------------------------ training
def run_config(study: Study, rs: RunSpec) -> Any:
    """The resolved :class:`~mrdib_cli.training.resolve.RunConfig` of one run: the study entry (and a sweep's
    grid point) is the config-file source, so ``mrdib run`` resolves exactly as ``mrdib train --config``."""
    from mrdib_cli.training.resolve import resolve_run

    entry: dict[str, Any] = {"backbone": rs.backbone.name, "dataset": rs.dataset, "run_name": rs.run_name,
                             "train": {**study.train, "seed": rs.seed}, "hparams": dict(rs.backbone.hparams),
                             "plugin": {"name": "mrdib", **study.mrdib_options} if rs.mrdib else None}
    for key, v in rs.overrides.items():
        section, _, name = key.partition(".")
        if section == "mrdib_options":
            if entry["plugin"] is not None:
                entry["plugin"][name] = v
        else:
            entry[section][name] = v
    return resolve_run(file=entry, file_source=str(study.path or study.name))


def _resolved(study: Study, rs: RunSpec) -> Any:
    """:func:`run_config`, a refusal naming the study and the run (a sweep's point is in its name)."""
    try:
        return run_config(study, rs)
    except UsageError as e:
        raise _in_run(study, rs, e) from None


def _in_run(study: Study, rs: RunSpec, e: UsageError) -> UsageError:
    """``e`` prefixed with the study file and the run it concerns."""
    where = study.path.name if study.path else study.name
    return UsageError(f"{where}, run '{rs.run_name}': {e}", exit_code=e.exit_code)


def _check_devices(study: Study, specs: list[RunSpec], configs: dict[str, Any]) -> None:
    """Refuse a run whose training device this machine does not have (``train: {device: cuda}`` without CUDA)."""
    from mrdib_cli.training.trainer import resolve_device

    for rs in specs:
        device = configs[rs.run_name].train.device
        try:
            resolve_device(device)
        except UsageError:  # its message names --device; a study's user set train.device
            raise _in_run(study, rs, UsageError(f"train.device is '{device}' but this machine has no CUDA device "
                                                "(set device: cpu or auto)")) from None


def train_identity(ws: Workspace, cfg: Any) -> tuple[dict[str, str], dict[str, Any]] | None:
    """(inputs, params) of a training step, or None when the dataset does not exist yet."""
    from mrdib_cli.data.handle import DatasetHandle
    from mrdib_cli.models.base import get_backbone

    ds_dir = ws.dataset_dir(cfg.dataset)
    if not (ds_dir / "dataset.json").exists():
        return None
    handle = DatasetHandle(ds_dir)
    cls = get_backbone(cfg.backbone)
    inputs = {"dataset": handle.digest}
    for m in cls.modalities:
        p = handle.feature_path(m, cfg.features.get(m))
        if p is not None:
            inputs[f"features:{m}"] = file_digest(p)
    train = settled_train(asdict(cfg.train), RUNTIME_TRAIN_KEYS)
    params = {"backbone": cls.name, "hparams": dict(cfg.hparams),
              "plugin": None if cfg.plugin is None else dict(cfg.plugin), "train": train,
              "features": dict(cfg.features)}
    return inputs, params


def train_manifest_dir(ws: Workspace) -> Path:
    # outside the run folder: the trainer replaces the run folder when it retrains
    return ws.runs_dir / ".manifests"


def train_step(ws: Workspace, rs: RunSpec, cfg: Any, execute: bool, log: Log,
               on_epoch: Callable[[Any], None] | None = None) -> StepRecord:
    """Train one run of the study (``cfg``: its :func:`run_config`), or say whether it would, is cached or waits."""
    ident = train_identity(ws, cfg)
    base = ws.run_dir(rs.run_name)
    step = f"train-{rs.run_name}"
    outputs = ["config.json", "results.json", "embeddings.npz"]
    label = f"{rs.backbone.name}{'+mrdib' if rs.mrdib else ''} on {rs.dataset}, seed {rs.seed}"
    if not execute:
        if ident is None:
            return StepRecord("train", label, "pending", "dataset not built yet", run=rs.run_name)
        if any(f"features:{m}" not in ident[0] for m in _required(cfg.backbone)):
            return StepRecord("train", label, "pending", "features not extracted yet", run=rs.run_name)
        cached, reason = manifest_state(base, step, ident[0], ident[1], train_manifest_dir(ws))
        return StepRecord("train", label, "cached" if cached else "will run", reason, run=rs.run_name)
    if ident is None:
        raise UsageError(f"dataset '{rs.dataset}' does not exist")
    inputs, params = ident

    def run() -> dict[str, Any]:
        from mrdib_cli.training.trainer import Trainer

        log(f"training {rs.run_name} ({label})")
        trainer = _resumable(ws, cfg, base, on_epoch, log) or Trainer(ws, cfg, overwrite=True, on_epoch=on_epoch,
                                                                      on_info=log)
        result = trainer.fit()
        if result.status == "stopped":  # Ctrl-C: the checkpoint stays; the next `mrdib run` resumes it
            raise KeyboardInterrupt
        if result.status != "finished":
            raise MrdibError(f"run '{rs.run_name}' {result.status}: {result.message}")
        return {"best_epoch": result.best_epoch, "epochs_run": result.epochs_run}

    t0 = time.perf_counter()
    res = cached_step(step, base, inputs, params, run, outputs, manifest_dir=train_manifest_dir(ws))
    return _record("train", label, res, t0, rs.run_name)


def _resumable(ws: Workspace, cfg: Any, run_dir: Path, on_epoch: Any, log: Log) -> Any:
    """A Trainer resuming an interrupted run of the same configuration (RNG and sampler restored), or None."""
    from mrdib_cli.training.trainer import Trainer

    if not (run_dir / "checkpoints" / "last.pt").exists():
        return None
    if (run_dir / "results.json").exists() and read_json(run_dir / "results.json").get("status") != "stopped":
        return None
    try:
        return Trainer(ws, cfg, resume=True, on_epoch=on_epoch, on_info=log)
    except MrdibError as e:  # a different configuration or an unreadable checkpoint: start afresh
        log(f"not resuming '{cfg.run_name}' ({e}); training it from scratch")
        return None


def _required(backbone: str) -> tuple[str, ...]:
    from mrdib_cli.models.base import get_backbone

    return tuple(get_backbone(backbone).required_modalities)


def eval_steps(ws: Workspace, study: Study, rs: RunSpec, execute: bool) -> list[StepRecord]:
    """Extra test evaluations (e.g. mask train+valid); the trainer already saved the train-mask one."""
    from mrdib_cli.evaluation.runs import Run, result_tag

    recs = []
    for mask in study.eval_masks:
        tag = result_tag("test", mask, "flat")
        # a dry run before training has no run yet; a saved result counts only if it scored the current best epoch
        have = (ws.run_dir(rs.run_name) / "embeddings.npz").exists() and \
            Run.open(ws, rs.run_name).saved_result(tag)[0] is not None
        target = f"{rs.run_name} ({tag})"
        if not execute:
            recs.append(StepRecord("eval", target, "cached" if have else "will run",
                                   "saved result present" if have else "no saved result", run=rs.run_name))
            continue
        if have:
            recs.append(StepRecord("eval", target, "cached", "saved result present", run=rs.run_name))
            continue
        from mrdib_cli.evaluation.runs import evaluate_run

        t0 = time.perf_counter()
        evaluate_run(Run.open(ws, rs.run_name), split="test", mask=mask, ks=tuple(study.train_config.ks))
        recs.append(StepRecord("eval", target, "ran", "no saved result", round(time.perf_counter() - t0, 2),
                               rs.run_name))
    return recs


# ------------------------------------------------------------------------------------------ driver
def run_pipeline(ws: Workspace, study: Study, *, dry_run: bool = False, log: Log = lambda s: None,
                 on_step: Callable[[StepRecord], None] | None = None,
                 on_epoch: Callable[[Any], None] | None = None,
                 specs: list[RunSpec] | None = None, report: bool = True) -> PipelineResult:
    """Run (or with ``dry_run`` only list) every step of ``study``; returns what each step did."""
    check_plugin_available(study)
    execute = not dry_run
    steps: list[StepRecord] = []
    emit = on_step or (lambda s: None)

    def add(recs: StepRecord | list[StepRecord]) -> None:
        for r in recs if isinstance(recs, list) else [recs]:
            steps.append(r)
            emit(r)

    specs = specs if specs is not None else run_specs(study)
    # every run resolved before the first step: a setting no run can train with is refused now, not after
    # the dataset, features and graphs were built
    configs = {rs.run_name: _resolved(study, rs) for rs in specs}
    if execute:  # and a device this machine lacks, before the first step too
        _check_devices(study, specs, configs)
    for ds in study.datasets:
        add(dataset_step(ws, ds, study, execute, log))
        add(feature_steps(ws, ds, study, execute, log))
        add(graph_step(ws, ds, study, execute))
        for rs in (r for r in specs if r.dataset == ds.name):
            add(train_step(ws, rs, configs[rs.run_name], execute, log, on_epoch))
            add(eval_steps(ws, study, rs, execute))
    runs = [r.run_name for r in specs]
    report_dir = None
    if report and study.report_out:
        report_dir = Path(study.report_out).expanduser()
        if not report_dir.is_absolute():
            report_dir = ws.root / report_dir
        inputs = report_inputs(ws, runs)
        cached, reason = manifest_state(report_dir, "report", inputs, {"runs": runs})
        if execute and not cached:
            from mrdib_cli.reporting.report import build_report

            t0 = time.perf_counter()
            res = cached_step("report", report_dir, inputs, {"runs": runs},
                              lambda: {"figures": len(build_report(ws, runs, report_dir, log=log).figures)},
                              ["report.md"])
            add(_record("report", str(report_dir), res, t0))
        else:
            add(StepRecord("report", str(report_dir), "cached" if cached else "will run", reason))
    return PipelineResult(steps, runs, dry_run, report_dir)


def report_inputs(ws: Workspace, runs: list[str]) -> dict[str, str]:
    """A report depends on each run's results, curves and diagnostics (digests of the files present)."""
    inputs = {}
    for r in runs:
        for f in ("results.json", "metrics.jsonl", "diagnose.json"):
            p = ws.run_dir(r) / f
            inputs[f"{r}/{f}"] = file_digest(p) if p.exists() else "absent"
    return inputs
