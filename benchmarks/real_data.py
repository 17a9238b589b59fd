"""Real-data accuracy: pretrain and evaluate on MSR Action3D, UTKinect-Action3D and SBU Kinect Interaction.

One command (CPU, fixed seeds)::

    python benchmarks/real_data.py --data ../shared/data --out runs/real_data

converts each data set (``benchmarks/real_datasets.py``), builds its cache with ``crossclr prepare arrays``
(the project's layout-driven ``official`` preprocessing: center joint, shoulder rotation, resize to
``frames``), then for each data set trains and evaluates, all under the same protocol:

============================  =========================================================================
row                           how it is obtained
============================  =========================================================================
random init (joint / 3s)      the untrained encoders of the 3s-SkeletonCLR run (same seed); their
                              BatchNorm statistics are measured on the training split (no labels, no
                              gradient), otherwise eval-mode BN with its initial statistics shrinks the
                              features to near-constant vectors and the baseline is meaningless
SkeletonCLR (joint)           the joint stream of the 3s-SkeletonCLR run (before ``cross_epoch`` the
                              streams train independently: this is single-view SkeletonCLR on joints)
3s-SkeletonCLR                joint + motion + bone encoders, no cross-view stage
CrosSCLR (joint), 3s-CrosSCLR the 3s-SkeletonCLR run continued with cross-view mining from half of the
                              epochs (the first half is shared, as in the paper)
flow graph A* / adaptive      single-view SkeletonCLR on joints with the ``flow`` / ``adaptive`` graph
4s-CrosSCLR (+accel)          joint + motion + bone + accel, cross-view mining from half of the epochs
supervised (joint)            the same encoder trained end to end with all labels (``finetune`` from the
                              random init): the upper bound, with its own schedule (``supervised_steps``
                              1000 optimizer steps, no augmentation: with the pretraining augmentation and
                              200 steps it was under-trained and fell below the pretrained rows)
3s-CrosSCLR [name]            ``--variants``: more continuations of the shared first half with other
                              cross-view options (SSLConfig: ``cross_warmup``, ``cross_weight``,
                              ``mine_on``, ``topk``, ``mining_threshold``, ``cross_loss``)
============================  =========================================================================

BatchNorm statistics: every frozen encoder (pretrained, random, supervised) is evaluated with its BN
statistics re-measured on the clean training split (``calibrate_bn``: no labels, no gradient), because the
statistics accumulated during training follow the augmented (sheared, cropped) batches, not the clean
inputs of evaluation, and the random init must be calibrated anyway; the numbers with the statistics left
by training are in the column "BN stats from training" (the supervised encoder's "linear" is its own
classifier's accuracy).

Seeds and statistics: ``--seeds N`` (default 3) runs every row with seeds ``seed, seed + 1, ...`` (model
init, batch order, augmentation, linear heads); the table gives mean ± sample std over seeds (SBU folds are
averaged within a seed first) and, for each pretrained row, the paired difference to the random-init row of
the same seed and number of streams (joint or 3s): mean ± std [min, max] over seeds. That paired difference
is the check of whether pretraining helped on a data set. Cross-view rows are also paired with their own
single-view stage (3s-SkeletonCLR of the same seed) in a second table, with the mining precision (share of
mined positives of the anchor's class, from ``metrics.jsonl``) at the first and last cross-view epoch.
Settings are chosen with ``--holdout 0.3`` (train on part of the training subjects, evaluate on the others:
the test split is not read) or on training-split quantities (loss, mining precision), never on the test
split. ``--merge`` joins results.json files of processes run with different ``--seed``.

Linear evaluation (``training.protocols.linear.run_linear``): frozen encoders, linear heads trained on cached
features; several streams: heads trained jointly on the mean of their logits (official 3-stream
protocol). kNN (``training.protocols.knn.run_knn``): cosine, t = 0.1, k = ``knn_k`` (the official 200 exceeds
these training sets; fused streams: concatenated normalised features). The table shows the **last**
linear epoch (the best epoch is in the JSON and the table too, but choosing it looks at the test set).

Hyperparameters for small data (``SmallData``), chosen once before the final run, identical for every
method and data set:

- encoder: the official ST-GCN architecture (10 blocks, spatial K = 3, temporal kernel 9, dropout 0.5)
  at half the official width (base channels 8, hidden 128: 0.25 M parameters, 2.2x faster than 16 / 256
  on this CPU), sized for the CPU budget and for training sets of 100-284 samples;
- ``frames`` 30 (median sequence lengths: 39 / 29 / 23 frames for MSR / UTKinect / SBU);
- batch 16; ``steps`` = 200 optimizer steps per run, i.e. epochs = ceil(200 / steps per epoch)
  (MSR 12, UTKinect 34, SBU fold 1 15): the same number of updates on every data set;
- queue = the largest power of two <= training samples - batch, so a sample's own older key has left
  the queue before it comes back (MSR 256, UTKinect 64, SBU 128); key-encoder momentum 0.99 (0.999
  hardly moves in 200 steps); temperature 0.07 and top-1 mining (official);
- SGD lr 0.1, momentum 0.9, weight decay 1e-4, lr x 0.1 at 80 % of the epochs;
- linear heads: 100 epochs, batch 16, lr 0.1, x 0.1 at epoch 80 (the official 3.0 at batch 128,
  scaled linearly to 0.375, made the single-stream training loss oscillate up to 5x its starting value
  on these 128-d features; 0.1 was chosen on the training loss alone, never on test accuracy);
- supervised: lr 0.1, batch 16, 1000 optimizer steps, no augmentation, lr x 0.1 at 80 %.

CPU budget: per seed and all three data sets, about 5 minutes of one core for random init,
3s-SkeletonCLR and 3s-CrosSCLR (``--runs random,skeletonclr-3s,crossclr-3s``), about 1 more per
``--variants`` entry and 2-3 more for the supervised bound; every run of ``RUNS`` with 3 seeds (the
default) is of the order of 45 minutes (``--threads 1``, the default: with 2 threads on the shared 2-core
development machine a training step was 4-5 times slower). ``--steps``, ``--seeds``, ``--runs``,
``--datasets`` and ``--sbu-folds`` trade time for coverage (``--sbu-folds all`` runs the 5 folds and
reports their mean). The table gives the time of every run and the total wall-clock and CPU time.
Results: ``OUT/results.json``, ``OUT/results.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks import real_datasets as rd  # noqa: E402

log = logging.getLogger("real_data")

JMB = ("joint", "motion", "bone")
JMBA = ("joint", "motion", "bone", "accel")


@dataclass(frozen=True)
class SmallData:
    """The one set of hyperparameters used for every method and data set (see the module docstring)."""

    base_channels: int = 8  # the official ST-GCN at half its (quarter) width: 0.25 M parameters
    hidden_dim: int = 128
    frames: int = 30
    steps: int = 200  # optimizer steps per pretraining / supervised run
    batch_size: int = 16
    lr: float = 0.1
    weight_decay: float = 1e-4
    ssl_momentum: float = 0.99
    temperature: float = 0.07
    topk: int = 1
    linear_epochs: int = 100
    linear_lr: float = 0.1
    linear_batch: int = 16
    knn_k: int = 10
    knn_t: float = 0.1
    supervised_lr: float = 0.1
    supervised_steps: int = 1000  # end-to-end supervised bound: its own, longer schedule (see docstring)
    supervised_augment: bool = False  # the pretraining augmentation hurt the supervised bound (see docstring)
    seed: int = 0
    ssl_options: tuple[tuple[str, Any], ...] = ()  # SSLConfig overrides of every pretraining (--ssl)

    def supervised_epochs(self, num_train: int) -> int:
        per_epoch = max(num_train // self.batch_size, 1)
        return max(math.ceil(self.supervised_steps / per_epoch), 2)

    def queue_size(self, num_train: int) -> int:
        """Largest power of two <= num_train - batch_size (at least batch_size)."""
        room = max(num_train - self.batch_size, self.batch_size)
        return 2 ** int(math.floor(math.log2(room)))

    def epochs(self, num_train: int) -> int:
        """Epochs giving at least ``steps`` optimizer steps (incomplete last batches are dropped)."""
        per_epoch = max(num_train // self.batch_size, 1)
        return max(math.ceil(self.steps / per_epoch), 2)


@dataclass(frozen=True)
class Run:
    """One training run: a pretraining (or the random init, or the supervised encoder)."""

    key: str
    kind: str  # "random" | "ssl" | "supervised"
    streams: tuple[str, ...]
    graph: str = "spatial"
    cross: bool = False


@dataclass(frozen=True)
class Row:
    """One table row: a run's checkpoint evaluated on some of its streams."""

    label: str
    run: str
    streams: tuple[str, ...]


RUNS: tuple[Run, ...] = (
    Run("random", "random", JMB),
    Run("skeletonclr-3s", "ssl", JMB),
    Run("crossclr-3s", "ssl", JMB, cross=True),  # continues skeletonclr-3s from half of the epochs
    Run("skeletonclr-flow", "ssl", ("joint",), graph="flow"),
    Run("skeletonclr-adaptive", "ssl", ("joint",), graph="adaptive"),
    Run("crossclr-4s", "ssl", JMBA, cross=True),
    Run("supervised", "supervised", ("joint",)),
)

ROWS: tuple[Row, ...] = (
    Row("random init (joint)", "random", ("joint",)),
    Row("random init (3s)", "random", JMB),
    Row("SkeletonCLR (joint)", "skeletonclr-3s", ("joint",)),
    Row("3s-SkeletonCLR", "skeletonclr-3s", JMB),
    Row("CrosSCLR (joint)", "crossclr-3s", ("joint",)),
    Row("3s-CrosSCLR", "crossclr-3s", JMB),
    Row("SkeletonCLR joint, flow graph A*", "skeletonclr-flow", ("joint",)),
    Row("SkeletonCLR joint, adaptive graph", "skeletonclr-adaptive", ("joint",)),
    Row("4s-CrosSCLR (+accel)", "crossclr-4s", JMBA),
    Row("supervised (joint, upper bound)", "supervised", ("joint",)),
)


# ---------------------------------------------------------------------------------------------------- data


def prepare(ds: rd.RealDataset, split: rd.Split, work: Path, hp: SmallData, suffix: str = "") -> Path:
    """npz (real_datasets.write_arrays_npz) -> cache through the ``crossclr prepare arrays`` command."""
    npz = rd.write_arrays_npz(ds, split, work / f"{ds.name}-{split.name}{suffix}.npz")
    cache = work / f"{ds.name}-{split.name}{suffix}.h5"
    if cache.exists():
        cache.unlink()
    cmd = ["crossclr", "prepare", "arrays", str(npz), "--out", str(cache), "--layout", rd.layout_argument(ds),
           "--frames", str(hp.frames), "--preprocess", "official", "--benchmark", f"{ds.name}-{split.name}"]
    log.info("%s", " ".join(cmd))
    exe = Path(sys.executable).with_name("crossclr")
    proc = subprocess.run([str(exe) if exe.exists() else "crossclr", *cmd[1:]], cwd=ROOT, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"crossclr prepare arrays failed for {npz}: {proc.stderr.strip()}")
    npz.unlink()
    return cache


# ---------------------------------------------------------------------------------------------------- runs


def ssl_config(hp: SmallData, num_train: int, extra: dict[str, Any] | None = None) -> Any:
    """The SSLConfig of every pretraining: the small-data values, ``hp.ssl_options``, then ``extra``."""
    from training.objectives.crossclr import SSLConfig

    values = {"queue_size": hp.queue_size(num_train), "momentum": hp.ssl_momentum,
              "temperature": hp.temperature, "topk": hp.topk, **dict(hp.ssl_options), **(extra or {})}
    return SSLConfig.from_dict(values)


def train_config(run: Run, hp: SmallData, num_train: int, ssl_extra: dict[str, Any] | None = None) -> Any:
    from training.config import TrainConfig
    from training.encoders.config import EncoderConfig

    epochs = hp.epochs(num_train)
    return TrainConfig(
        model=EncoderConfig(graph=run.graph, base_channels=hp.base_channels, hidden_dim=hp.hidden_dim),
        ssl=ssl_config(hp, num_train, ssl_extra),
        streams=run.streams, epochs=epochs, cross_epoch=epochs // 2 if run.cross else epochs,
        batch_size=hp.batch_size, lr=hp.lr, weight_decay=hp.weight_decay,
        lr_steps=(round(0.8 * epochs),), seed=hp.seed, device="cpu", num_workers=0, preload=True,
        save_every=epochs, tensorboard=False, log_every=1)


def calibrate_bn(encoders: Any, x: Any, layout: Any, batch: int = 512) -> None:
    """Set the BatchNorm statistics of ``encoders`` ({view: STGCN}) to their exact average over ``x``
    (N, C, T, V, M) (no gradient; dropout off, so the statistics are the ones eval mode will see; in
    chunks of ``batch`` samples the average of the chunk statistics, exact when N <= batch)."""
    import torch
    from torch import nn

    from training.views import compute_view

    with torch.no_grad():
        for view, enc in encoders.items():
            bns = [m for m in enc.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
            enc.eval()
            saved = [m.momentum for m in bns]
            for m in bns:
                m.reset_running_stats()
                m.momentum = None  # cumulative average over all batches
                m.train()
            inputs = compute_view(x, view, layout)
            for chunk in inputs.split(batch):
                enc.forward_features(chunk)
            for m, mom in zip(bns, saved, strict=True):
                m.momentum = mom
            enc.eval()


def initial_checkpoint(cache: Path, out: Path, cfg: Any, calibrate: bool) -> Path:
    """A pretrain checkpoint holding the model of ``cfg`` exactly as its training run initialises it
    (same seed); ``calibrate``: with the encoders' BatchNorm statistics measured on the training split
    (see the module docstring)."""
    import torch

    from training.checkpoint import atomic_torch_save, make_checkpoint
    from training.config import config_to_dict
    from training.data import open_train_data
    from training.trainer import build_model, get_layout_text, seed_everything

    data = open_train_data(cache, batch_size=cfg.batch_size, preload=False)
    try:
        seed_everything(cfg.seed)
        model = build_model(cfg, data)
        if calibrate:
            x = torch.as_tensor(data.cache.split("train").read_all())  # (N, C, T, V, M)
            calibrate_bn(model.encoders_q, x, data.layout)
        ckpt = make_checkpoint(
            model_state={k: v.detach().cpu() for k, v in model.state_dict().items()}, optimizer_state=None,
            scheduler_state=None, epoch=0, rng=[], config=config_to_dict(cfg), streams=list(cfg.streams),
            layout_toml=get_layout_text(data), num_person=data.cache.num_person, frames=data.cache.frames,
            class_names=list(data.cache.class_names), preprocess=dict(data.cache.preprocess))
    finally:
        data.cache.close()
    out.mkdir(parents=True, exist_ok=True)
    return atomic_torch_save(ckpt, out / "pretrain.pt")


def random_init(cache: Path, out: Path, hp: SmallData, num_train: int) -> Path:
    """The encoders as the 3s-SkeletonCLR run initialises them, BatchNorm measured on the training split."""
    cfg = train_config(Run("random", "ssl", JMB), hp, num_train)
    return initial_checkpoint(cache, out, cfg, calibrate=True)


def recalibrate(ckpt: Path, cache: Path) -> Path:
    """A copy of a pretrain or linear/finetune checkpoint (``*_bnclean.pt`` beside it) whose encoders'
    BatchNorm statistics are re-measured on the clean training split (see ``calibrate_bn``)."""
    import torch

    from crossclr_infer.cache import open_cache
    from training.checkpoint import atomic_torch_save, torch_load_safe
    from training.protocols.io import LINEAR_FORMAT, load_any_encoders

    raw = torch_load_safe(ckpt, missing="no such checkpoint", unreadable="not readable ({reason})")
    encoders, _, _ = load_any_encoders(ckpt, None)
    with open_cache(cache) as c:
        x = torch.as_tensor(c.split("train").read_all())  # (N, C, T, V, M)
        layout = c.layout
    calibrate_bn(encoders, x, layout)
    for view, enc in encoders.items():
        state = {k: v.detach().cpu() for k, v in enc.state_dict().items()}
        if raw["format"] == LINEAR_FORMAT:
            raw["encoders"][view] = state
        else:
            raw["model"].update({f"encoders_q.{view}.{k}": v for k, v in state.items()})
    return atomic_torch_save(raw, ckpt.with_name(ckpt.stem + "_bnclean.pt"))


def pretrain(run: Run, cache: Path, out: Path, hp: SmallData, num_train: int, *, resume: bool = False,
             stop_after: int | None = None, ssl_extra: dict[str, Any] | None = None) -> Path:
    from training.trainer import train

    result = train(train_config(run, hp, num_train, ssl_extra), cache, out, resume=resume, progress=False,
                   stop_after_epochs=stop_after)
    if result.checkpoint is None:
        raise SystemExit(f"{run.key}: training wrote no checkpoint in {out}")
    return result.checkpoint


def supervised(cache: Path, random_ckpt: Path, out: Path, hp: SmallData, num_train: int) -> dict[str, Any]:
    from training.protocols.finetune import FinetuneConfig, run_finetune

    epochs = hp.supervised_epochs(num_train)
    cfg = FinetuneConfig(label_fraction=1.0, epochs=epochs, lr=hp.supervised_lr,
                         weight_decay=hp.weight_decay, batch_size=hp.batch_size,
                         augment=hp.supervised_augment, seed=hp.seed, eval_every=epochs)
    return run_finetune(cache, random_ckpt, out, streams=["joint"], cfg=cfg)


def evaluate(cache: Path, ckpt: Path, streams: tuple[str, ...], out: Path, hp: SmallData,
             standardize: bool = False) -> dict[str, Any]:
    from training.protocols.knn import run_knn
    from training.protocols.linear import LinearConfig, run_linear

    cfg = LinearConfig(epochs=hp.linear_epochs, lr=hp.linear_lr, batch_size=hp.linear_batch, fusion="joint",
                       seed=hp.seed, standardize=standardize)
    lin = run_linear(cache, ckpt, out, streams=list(streams), cfg=cfg)
    knn = run_knn(cache, ckpt, streams=list(streams), ks=(hp.knn_k,), t=hp.knn_t)
    key = "fused" if len(streams) > 1 else streams[0]
    return {"linear_last": lin["last"][key]["top1"], "linear_best": lin["best"][key]["top1"],
            "linear_best_epoch": lin["best"][key]["epoch"], "linear_train_loss": lin["history"][-1]["loss"],
            "knn": knn["results"][key][str(hp.knn_k)]["top1"]}


CROSS_ONLY = ("topk", "cross_loss", "context", "mining_threshold", "mine_on", "cross_weight", "cross_warmup")


@dataclass(frozen=True)
class Variant:
    """An extra continuation of the shared first half with other cross-view-stage options (``--variants``):
    row "3s-CrosSCLR [name]"; only options of the cross-view stage (``CROSS_ONLY``) may differ."""

    name: str
    options: tuple[tuple[str, Any], ...]

    @property
    def key(self) -> str:
        return f"crossclr-3s-{self.name}"


def _tomllib() -> Any:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    return tomllib


def parse_options(text: str) -> tuple[tuple[str, Any], ...]:
    """``"topk=3;mine_on=fused"`` -> (("topk", 3), ("mine_on", "fused")): values read as TOML scalars."""
    tomllib = _tomllib()
    out = []
    for item in filter(None, (t.strip() for t in text.replace(",", ";").split(";"))):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"option {item!r}: expected KEY=VALUE")
        try:
            parsed = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value.strip()
        out.append((key.strip(), parsed))
    return tuple(out)


def parse_variants(text: str) -> list[Variant]:
    """``"warm:cross_warmup=40|k3:topk=3"`` -> variants; each must change cross-view options only."""
    out = []
    for part in filter(None, (t.strip() for t in text.split("|"))):
        name, _, opts = part.partition(":")
        options = parse_options(opts)
        bad = [k for k, _ in options if k not in CROSS_ONLY]
        if bad:
            raise SystemExit(f"variant {name!r}: {bad} change the first stage; use --ssl for those "
                             f"(variants may set {CROSS_ONLY})")
        out.append(Variant(name.strip(), options))
    return out


def preset_ssl_options(path: Path) -> tuple[tuple[str, Any], ...]:
    """The [ssl] options of a preset TOML other than the size-dependent ones set here (queue, momentum)."""
    ssl = _tomllib().loads(path.read_text()).get("ssl", {})
    return tuple((k, v) for k, v in ssl.items() if k not in ("queue_size", "momentum"))


def continue_as(first: Path, out: Path, ssl_dict: dict[str, Any]) -> None:
    """Copy the shared first-half checkpoint to ``out`` with its config's ssl table set to ``ssl_dict``
    (cross-view options have no effect before the cross-view stage) and the warm-up step counter added when
    the variant has one, so the trainer resumes it as a run of that config."""
    import torch

    from training.checkpoint import atomic_torch_save, torch_load_safe

    raw = torch_load_safe(first, missing="no such checkpoint", unreadable="not readable ({reason})")
    raw["config"]["ssl"] = dict(ssl_dict)
    if ssl_dict.get("cross_warmup", 0) > 0:
        raw["model"].setdefault("cross_steps", torch.zeros((), dtype=torch.long))
    out.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(raw, out / first.name)
    if (first.parent / "metrics.jsonl").exists():  # the first stage's curve, for plot-metrics
        shutil.copy2(first.parent / "metrics.jsonl", out / "metrics.jsonl")


def mining_curve(run_dir: Path) -> list[dict[str, Any]]:
    """Per-epoch stage, loss and mining precision from a run's metrics.jsonl."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{"epoch": r["epoch"], "stage": r.get("stage"), "loss": r.get("loss"),
             "mining_precision": r.get("mining_precision")} for r in rows if r.get("kind") == "epoch"]


def run_split(ds: rd.RealDataset, split: rd.Split, work: Path, hp: SmallData, cache: Path, prep_s: float, *,
              runs_wanted: tuple[str, ...] | None = None, variants: tuple[Variant, ...] = (),
              trained_bn: bool = True, tag: str = "") -> list[dict[str, Any]]:
    """Every run and row on one split of one data set with seed ``hp.seed``; one record per row."""
    n_train = len(split.train)
    runs = {r.key: r for r in RUNS}
    wanted = set(runs_wanted or runs)
    base = work / f"{ds.name}-{split.name}-seed{hp.seed}"
    if base.exists():
        shutil.rmtree(base)
    ckpts: dict[str, Path] = {}
    times: dict[str, float] = {}

    def timed(key: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        log.info("%s %s seed %d: %s", ds.name, split.name, hp.seed, key)
        t = time.perf_counter()
        value = fn(*args, **kwargs)
        times[key] = times.get(key, 0.0) + time.perf_counter() - t
        return value

    ckpts["random"] = timed("random", random_init, cache, base / "random", hp, n_train)
    # 3s-SkeletonCLR to half of the epochs, then continuations: single-view (SkeletonCLR), cross-view, and
    # the cross-view variants
    half = hp.epochs(n_train) // 2
    sk, cr = runs["skeletonclr-3s"], runs["crossclr-3s"]
    conts = [(sk, sk.key, None)]
    if "crossclr-3s" in wanted:
        conts.append((cr, cr.key, None))
    conts += [(cr, v.key, dict(v.options)) for v in variants]
    if wanted & {"skeletonclr-3s", "crossclr-3s"} or variants:
        first = timed("shared", pretrain, sk, cache, base / sk.key, hp, n_train, stop_after=half)
        for run, key, extra in conts[1:]:
            continue_as(first, base / key, train_config(run, hp, n_train, extra).ssl.to_dict())
        for run, key, extra in conts:
            ckpts[key] = timed(key, pretrain, run, cache, base / key, hp, n_train, resume=True,
                               ssl_extra=extra)
        shared = times.pop("shared")
        for _, key, _ in conts:
            times[key] += shared
    for key in ("skeletonclr-flow", "skeletonclr-adaptive", "crossclr-4s"):
        if key in wanted:
            ckpts[key] = timed(key, pretrain, runs[key], cache, base / key, hp, n_train)
    sup = None
    if "supervised" in wanted:
        sup = timed("supervised", supervised, cache, ckpts["random"], base / "supervised", hp, n_train)
    # the protocol: every frozen encoder's BN statistics re-measured on the clean training split (random
    # init already is); the statistics left by training (augmented batches) are evaluated too, for reference
    t0 = time.perf_counter()
    clean = {k: (v if k == "random" else recalibrate(v, cache)) for k, v in ckpts.items()}
    sup_clean = recalibrate(Path(sup["output"]), cache) if sup is not None else None
    calib_s = time.perf_counter() - t0
    rows = [r for r in ROWS if r.run in ckpts or (r.run == "supervised" and sup is not None)]
    rows += [Row(f"3s-CrosSCLR [{v.name}]", v.key, JMB) for v in variants]
    if tag:  # pretrained rows of a run with other first-stage options (--ssl) get their own labels
        rows = [r if r.run in ("random", "supervised") else replace(r, label=f"{r.label} {{{tag}}}")
                for r in rows]
    records = []
    for row in rows:
        rec: dict[str, Any] = {"dataset": ds.name, "split": split.name, "seed": hp.seed, "row": row.label,
                               "run": row.run, "streams": list(row.streams), "num_train": n_train,
                               "num_test": len(split.test), "epochs": hp.epochs(n_train),
                               "queue_size": hp.queue_size(n_train), "train_s": times[row.run],
                               "prepare_s": prep_s, "bn_calibration_s": calib_s}
        t0 = time.perf_counter()
        if row.run == "supervised":
            from training.protocols.knn import run_knn
            from training.protocols.linear import evaluate_linear

            ev = evaluate_linear(cache, sup_clean, split="val", streams=["joint"])
            knn = run_knn(cache, sup_clean, streams=["joint"], ks=(hp.knn_k,), t=hp.knn_t)
            rec.update(linear_last=ev["last"]["joint"]["top1"], linear_best=None, linear_best_epoch=None,
                       linear_train_loss=sup["history"][-1]["loss"],
                       knn=knn["results"]["joint"][str(hp.knn_k)]["top1"],
                       epochs=hp.supervised_epochs(n_train),
                       trained_bn={"linear_last": sup["last"]["joint"]["top1"]})
        else:
            out = base / row.run / ("linear-" + "-".join(row.streams))
            rec.update(evaluate(cache, clean[row.run], row.streams, out, hp))
            if row.run != "random" and trained_bn:
                tbn_out = out.with_name(out.name + "-tbn")
                rec["trained_bn"] = evaluate(cache, ckpts[row.run], row.streams, tbn_out, hp)
            if row.run != "random":
                rec["ssl"] = json.loads((base / row.run / "config.json").read_text())["ssl"]
                rec["curve"] = mining_curve(base / row.run)
        rec["eval_s"] = time.perf_counter() - t0
        log.info("%s", {k: v for k, v in rec.items() if k != "curve"})
        records.append(rec)
    return records


# ---------------------------------------------------------------------------------------------- transformer


@dataclass(frozen=True)
class SmallTransformer:
    """The MAMP transformer rows (``--transformer``): a small MAMP encoder; data and protocol as above."""

    width: int = 64  # official 256
    depth: int = 4  # official 8
    heads: int = 4
    t_patch: int = 4  # official: tokens of 4 frames x 1 joint
    mask_ratio: float = 0.9  # official
    tau: float = 0.8  # official (NTU-60)
    decoder_depth: int = 1  # official 3
    lr: float = 1e-3  # official AdamW lr (batch 128); weight decay 0.05, warm-up 5 % of the epochs, cosine
    cross_lr: float = 0.01  # the cross-view stage (SGD, contrastive heads added), on MAMP's encoders


T_ROWS: tuple[Row, ...] = (
    Row("transformer, random init (joint)", "t-random", ("joint",)),
    Row("transformer, random init (3s)", "t-random", JMB),
    Row("MAMP (joint)", "t-mamp", ("joint",)),
    Row("3s-MAMP", "t-mamp", JMB),
    Row("3s-MAMP + cross-view stage", "t-cross", JMB),
)


def transformer_frames(hp: SmallData, th: SmallTransformer) -> int:
    """The ST-GCN rows' frame count rounded up to a multiple of the temporal patch."""
    return -(-hp.frames // th.t_patch) * th.t_patch


def transformer_config(kind: str, hp: SmallData, th: SmallTransformer, num_train: int,
                       init_from: Path | None = None) -> Any:
    from training.config import TrainConfig
    from training.encoders.config import EncoderConfig
    from training.objectives.crossclr import SSLConfig
    from training.objectives.mamp import MAMPConfig

    epochs = hp.epochs(num_train)
    common = {"streams": JMB, "epochs": epochs, "batch_size": hp.batch_size, "seed": hp.seed,
              "device": "cpu", "num_workers": 0, "preload": True, "save_every": epochs, "tensorboard": False,
              "bf16": False}
    if kind == "mamp":
        model = EncoderConfig(graph="transformer", hidden_dim=th.width, depth=th.depth, num_heads=th.heads,
                              t_patch=th.t_patch, projector="none")
        return TrainConfig(model=model, objective="mamp", optimizer="adamw", lr=th.lr, weight_decay=0.05,
                           weight_decay_on="matrices", schedule="cosine",
                           warmup_epochs=max(1, epochs // 20), min_lr=th.lr / 2,
                           mamp=MAMPConfig(mask_ratio=th.mask_ratio, tau=th.tau,
                                           decoder_depth=th.decoder_depth, decoder_dim=th.width,
                                           decoder_heads=th.heads), **common)
    model = EncoderConfig(graph="transformer", hidden_dim=th.width, depth=th.depth, num_heads=th.heads,
                          t_patch=th.t_patch, projector="mlp", feature_dim=th.width)
    return TrainConfig(model=model, objective="crossclr", cross_epoch=0,
                       init_from=str(init_from or ""),
                       ssl=SSLConfig(queue_size=hp.queue_size(num_train), momentum=hp.ssl_momentum,
                                     temperature=hp.temperature, topk=hp.topk),
                       lr=th.cross_lr, weight_decay=hp.weight_decay, lr_steps=(round(0.8 * epochs),),
                       **common)


def run_transformer_split(ds: rd.RealDataset, split: rd.Split, work: Path, hp: SmallData,
                          th: SmallTransformer) -> list[dict[str, Any]]:
    """The transformer rows on one split: random init, 3-stream MAMP, and MAMP + cross-view stage."""
    from training.trainer import train

    frames = transformer_frames(hp, th)
    cache = prepare(ds, split, work, replace(hp, frames=frames), suffix=f"-t{frames}")
    n_train = len(split.train)
    base = work / f"{ds.name}-{split.name}-transformer"
    if base.exists():
        shutil.rmtree(base)
    times: dict[str, float] = {}
    ckpts: dict[str, Path] = {}
    mamp_cfg = transformer_config("mamp", hp, th, n_train)
    t = time.perf_counter()
    # the transformer has LayerNorm only: nothing to calibrate
    ckpts["t-random"] = initial_checkpoint(cache, base / "t-random", mamp_cfg, calibrate=False)
    times["t-random"] = time.perf_counter() - t
    for key, cfg in (("t-mamp", mamp_cfg), ("t-cross", None)):
        log.info("%s %s: %s", ds.name, split.name, key)
        t = time.perf_counter()
        if cfg is None:
            cfg = transformer_config("cross", hp, th, n_train, init_from=ckpts["t-mamp"])
        result = train(cfg, cache, base / key, progress=False)
        if result.checkpoint is None:
            raise SystemExit(f"{key}: training wrote no checkpoint in {base / key}")
        ckpts[key] = result.checkpoint
        times[key] = time.perf_counter() - t + (times["t-mamp"] if key == "t-cross" else 0.0)
    records = []
    for row in T_ROWS:
        t0 = time.perf_counter()
        rec: dict[str, Any] = {"dataset": ds.name, "split": split.name, "row": row.label, "run": row.run,
                               "streams": list(row.streams), "num_train": n_train,
                               "num_test": len(split.test), "epochs": hp.epochs(n_train),
                               "queue_size": hp.queue_size(n_train),
                               "train_s": times[row.run], "frames": frames, "seed": hp.seed}
        out = base / row.run / ("linear-" + "-".join(row.streams))
        rec.update(evaluate(cache, ckpts[row.run], row.streams, out, hp))
        # MAMP's own probe (features standardised before the head), beside the plain protocol
        std = evaluate(cache, ckpts[row.run], row.streams, out.with_name(out.name + "-std"), hp,
                       standardize=True)
        rec["standardized"] = {k: std[k] for k in ("linear_last", "linear_best")}
        rec["eval_s"] = time.perf_counter() - t0
        log.info("%s", rec)
        records.append(rec)
    return records


# ---------------------------------------------------------------------------------------------------- report


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _std(values: list[float]) -> float | None:
    """Sample standard deviation (n − 1); None for fewer than two values."""
    if len(values) < 2:
        return None
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def _stats(values: list[float | None]) -> dict[str, Any] | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"mean": sum(vals) / len(vals), "std": _std(vals), "min": min(vals), "max": max(vals),
            "n": len(vals), "values": vals}


def seed_means(records: list[dict[str, Any]], key: str, **match: Any) -> dict[int, float]:
    """{seed: mean of ``key``} over the records whose fields equal ``match`` (several splits of a seed, such
    as SBU's folds, averaged within it); records without ``key`` are left out."""
    by_seed: dict[int, list[float]] = {}
    for r in records:
        if r.get(key) is not None and all(r.get(k) == v for k, v in match.items()):
            by_seed.setdefault(r.get("seed", 0), []).append(r[key])
    return {sd: sum(v) / len(v) for sd, v in by_seed.items()}


def paired_stats(mine: dict[int, float], ref: dict[int, float]) -> dict[str, Any] | None:
    """``_stats`` of the per-seed differences ``mine - ref`` over the seeds both have (None: no such seed)."""
    common = sorted(set(mine) & set(ref))
    return _stats([mine[sd] - ref[sd] for sd in common]) if common else None


def table_head(columns: list[str], numeric_from: int) -> list[str]:
    """A markdown table's header and rule, columns from ``numeric_from`` on right-aligned."""
    rule = "|" + "".join("---|" if i < numeric_from else "---:|" for i in range(len(columns)))
    return ["| " + " | ".join(columns) + " |", rule]


def write_report(out: Path, result: dict[str, Any], md: str) -> str:
    """``OUT/results.json`` (``result``) and ``OUT/results.md`` (``md``); returns ``md``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "results.md").write_text(md)
    return md


def baseline_row(row: str, streams: list[str]) -> str:
    """The random-init row a pretrained row is paired with: same streams count (joint or 3s)."""
    return "random init (joint)" if len(streams) == 1 else "random init (3s)"


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per (data set, row): per seed the mean over splits (SBU folds), then mean ± std over seeds,
    and paired differences (same seed and split) against the random-init row of the same number of
    streams (``vs_random``) and, for cross-view rows, against 3s-SkeletonCLR (``vs_single``)."""
    def per_seed(ds_name: str, row: str, key: str) -> dict[int, float]:
        return seed_means(records, key, dataset=ds_name, row=row)

    def paired(ds_name: str, row: str, other: str, key: str) -> dict[str, Any] | None:
        a, b = per_seed(ds_name, row, key), per_seed(ds_name, other, key)
        return paired_stats(a, b) if row != other else None

    out = []
    keys = list(dict.fromkeys((r["dataset"], r["row"]) for r in records))
    for ds_name, row in keys:
        group = [r for r in records if r["dataset"] == ds_name and r["row"] == row]
        seeds = sorted({r.get("seed", 0) for r in group})
        lin, knn = per_seed(ds_name, row, "linear_last"), per_seed(ds_name, row, "knn")
        base = baseline_row(row, group[0]["streams"])
        line = {"dataset": ds_name, "row": row, "run": group[0]["run"], "seeds": seeds,
                "splits": sorted({r["split"] for r in group}),
                "linear_last": _stats(list(lin.values())), "knn": _stats(list(knn.values())),
                "linear_best": _stats(list(per_seed(ds_name, row, "linear_best").values())),
                "train_s_per_seed": sum(r["train_s"] for r in group) / len(seeds),
                "eval_s_per_seed": sum(r["eval_s"] for r in group) / len(seeds)}
        if group[0]["run"] != "random":
            line["vs_random"] = {"baseline": base, "linear_last": paired(ds_name, row, base, "linear_last"),
                                 "knn": paired(ds_name, row, base, "knn")}
        if "CrosSCLR" in row and row.startswith("3s"):
            tag = row[row.index(" {"):] if " {" in row else ""
            single = "3s-SkeletonCLR" + tag
            line["vs_single"] = {"baseline": single,
                                 "linear_last": paired(ds_name, row, single, "linear_last"),
                                 "knn": paired(ds_name, row, single, "knn")}
        precs = [[c["mining_precision"] for c in r.get("curve", []) if c.get("stage") == "cross"
                  and c.get("mining_precision") is not None] for r in group]
        if any(precs):
            line["mining_precision_cross"] = {"first": _mean([p[0] for p in precs if p]),
                                              "last": _mean([p[-1] for p in precs if p])}
        out.append(line)
    return out


def _pm(st: dict[str, Any] | None) -> str:
    if st is None:
        return "—"
    return f"{st['mean']:.1f}" if st["std"] is None else f"{st['mean']:.1f} ± {st['std']:.1f}"


def _diff(st: dict[str, Any] | None) -> str:
    if st is None:
        return "—"
    spread = "" if st["n"] < 2 else f" ± {st['std']:.1f} [{st['min']:+.1f}, {st['max']:+.1f}]"
    return f"{st['mean']:+.1f}{spread}"


def markdown(summary: list[dict[str, Any]], hp: SmallData) -> str:
    lines = [f"| data set | method | linear top-1 (last) | kNN top-1 (k={hp.knn_k}) "
             "| Δ linear vs random init | Δ kNN vs random init | train time / seed (s) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    seen: set[tuple[str, str, str]] = set()
    for s in summary:
        run_key = (s["dataset"], s["run"], s["row"].partition(" {")[2])  # {tag}: a run with other options
        train = "(same run)" if run_key in seen else f"{s['train_s_per_seed']:.0f}"
        seen.add(run_key)
        folds = "" if len(s["splits"]) == 1 else f" ({len(s['splits'])} folds)"
        vr = s.get("vs_random") or {}
        lines.append(f"| {s['dataset']}{folds} | {s['row']} | {_pm(s['linear_last'])} | {_pm(s['knn'])} | "
                     f"{_diff(vr.get('linear_last'))} | {_diff(vr.get('knn'))} | {train} |")
    return "\n".join(lines)


def markdown_cross(summary: list[dict[str, Any]]) -> str:
    """Cross-view rows against their own single-view stage (3s-SkeletonCLR, same seeds)."""
    rows = [s for s in summary if "vs_single" in s]
    if not rows:
        return ""
    lines = ["| data set | method | Δ linear vs its 3s-SkeletonCLR | Δ kNN vs its 3s-SkeletonCLR "
             "| mining precision, first / last cross epoch |", "|---|---|---:|---:|---:|"]
    for s in rows:
        mp = s.get("mining_precision_cross") or {}
        prec = "—" if not mp else f"{mp['first']:.2f} / {mp['last']:.2f}"
        lines.append(f"| {s['dataset']} | {s['row']} | {_diff(s['vs_single']['linear_last'])} | "
                     f"{_diff(s['vs_single']['knn'])} | {prec} |")
    return "\n".join(lines)


def cpu_model() -> str:
    """The CPU's model name (``crossclr_infer.hardware.cpu_caps``)."""
    from crossclr_infer.hardware import cpu_caps

    return cpu_caps().model


def machine_line() -> str:
    """The machine of a results file: the CPU with its instruction sets (``CpuCaps.line``), torch and its
    threads."""
    import torch

    from crossclr_infer.hardware import cpu_caps

    return f"{cpu_caps().line()}, torch {torch.__version__} with {torch.get_num_threads()} threads"


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its finished children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def holdout_split(ds: rd.RealDataset, split: rd.Split, fraction: float = 0.3) -> rd.Split:
    """Validation split for choosing settings without the test set: the training subjects (or SBU subject
    pairs) of ``split``, sorted, the last ones held out until they hold ≥ ``fraction`` of its samples; the
    rest train. The test part of ``split`` is not used at all."""
    subjects = sorted({ds.samples[i].subject for i in split.train})
    held: set[str] = set()
    count = 0
    for subj in reversed(subjects):
        if count >= fraction * len(split.train) or len(held) == len(subjects) - 1:
            break
        held.add(subj)
        count += sum(1 for i in split.train if ds.samples[i].subject == subj)
    train = tuple(i for i in split.train if ds.samples[i].subject not in held)
    val = tuple(i for i in split.train if ds.samples[i].subject in held)
    return rd.Split(f"{split.name}-holdout", train, val)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=ROOT / ".." / "shared" / "data",
                   help="folder holding msr_action3d/, utkinect/, sbu_kinect/ (read only, never copied)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "real_data", help="work and result folder")
    p.add_argument("--datasets", default="msr,utkinect,sbu", help="comma-separated, of msr,utkinect,sbu")
    p.add_argument("--steps", type=int, default=SmallData.steps,
                   help="optimizer steps per pretraining run (sets the epochs)")
    p.add_argument("--supervised-steps", type=int, default=SmallData.supervised_steps,
                   help="optimizer steps of the supervised bound")
    p.add_argument("--supervised-augment", action="store_true",
                   help="train the supervised bound with the pretraining augmentation (default: none)")
    p.add_argument("--frames", type=int, default=SmallData.frames, help="frames per preprocessed sample")
    p.add_argument("--sbu-folds", default="1", help="SBU folds to run: a comma list of 1..5, or 'all'")
    p.add_argument("--utkinect-protocol", default="cross-subject", choices=["cross-subject", "loso"])
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=SmallData.seed, help="first seed")
    p.add_argument("--seeds", type=int, default=3, help="seeds per row: seed, seed + 1, ...")
    p.add_argument("--runs", default="", help=f"comma list of runs (default all): {[r.key for r in RUNS]}")
    p.add_argument("--preset", type=Path, default=None,
                   help="a training preset TOML whose [ssl] options (other than queue_size and momentum, "
                        "set by the data size) every pretraining uses: training/presets/crossclr_small.toml")
    p.add_argument("--ssl", default="", help="SSLConfig overrides for every pretraining, 'key=value;...' "
                                             "(after --preset)")
    p.add_argument("--variants", default="",
                   help="extra cross-view continuations of the shared first half, 'name:key=value;...|...' "
                        f"(keys of {CROSS_ONLY})")
    p.add_argument("--holdout", type=float, default=0.0,
                   help="choose settings without the test set: train on the training subjects but a held-out "
                        "share of them (e.g. 0.3) and evaluate on those")
    p.add_argument("--tag", default="", help="appended as {TAG} to the labels of pretrained rows (runs with "
                                             "other --ssl options, to be merged with the default ones)")
    p.add_argument("--no-trained-bn", action="store_true",
                   help="skip the reference evaluation with the BN statistics left by training")
    p.add_argument("--transformer", choices=["off", "also", "only"], default="off",
                   help="MAMP transformer rows (random init, 3s-MAMP, + cross-view stage): off, also, only")
    p.add_argument("--merge", type=Path, nargs="+", default=None,
                   help="only merge the records of these results.json files (runs split over processes, e.g. "
                        "by --seed) into OUT/results.json and OUT/results.md")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.merge:
        return merge_results(args.merge, args.out)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("real_data").setLevel(logging.INFO)

    import torch

    torch.set_num_threads(args.threads)
    ssl_opts = (preset_ssl_options(args.preset) if args.preset else ()) + parse_options(args.ssl)
    hp = replace(SmallData(), steps=args.steps, frames=args.frames, seed=args.seed, ssl_options=ssl_opts,
                 supervised_steps=args.supervised_steps, supervised_augment=args.supervised_augment)
    ssl_config(hp, 1000)  # fail early on a bad option
    variants = tuple(parse_variants(args.variants))
    for v in variants:
        ssl_config(hp, 1000, dict(v.options))
    runs_wanted = tuple(r.strip() for r in args.runs.split(",") if r.strip()) or None
    unknown_runs = sorted(set(runs_wanted or ()) - {r.key for r in RUNS})
    if unknown_runs:
        p.error(f"unknown runs {unknown_runs}; expected some of {[r.key for r in RUNS]}")
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    unknown = sorted(set(names) - set(rd.DATASETS))
    if unknown:
        p.error(f"unknown data sets {unknown}; expected some of {rd.DATASETS}")
    folds = list(range(1, 6)) if args.sbu_folds == "all" else [int(f) for f in args.sbu_folds.split(",")]
    seeds = [args.seed + i for i in range(args.seeds)]
    args.out.mkdir(parents=True, exist_ok=True)
    machine = machine_line()
    cmd = "python benchmarks/real_data.py " + " ".join(argv if argv is not None else sys.argv[1:])
    t_all, cpu0 = time.perf_counter(), cpu_seconds()
    records: list[dict[str, Any]] = []
    data_info: dict[str, Any] = {}
    md = ""
    for name in names:
        ds = rd.load_dataset(name, args.data)
        data_info[ds.name] = {"samples": len(ds.samples), "skipped_samples": ds.skipped,
                              "dropped_untracked_frames": ds.dropped_frames}
        splits = rd.standard_splits(ds, utkinect_protocol=args.utkinect_protocol)
        if ds.name == "sbu-kinect":
            splits = [splits[f - 1] for f in folds]
        if args.holdout > 0:
            splits = [holdout_split(ds, sp, args.holdout) for sp in splits]
        for split in splits:
            t0 = time.perf_counter()
            cache = prepare(ds, split, args.out, hp) if args.transformer != "only" else None
            prep_s = time.perf_counter() - t0
            for seed in seeds:
                hps = replace(hp, seed=seed)
                if cache is not None:
                    records.extend(run_split(ds, split, args.out, hps, cache, prep_s, runs_wanted=runs_wanted,
                                             variants=variants, trained_bn=not args.no_trained_bn,
                                             tag=args.tag))
                if args.transformer != "off":
                    for rec in run_transformer_split(ds, split, args.out, hps, SmallTransformer()):
                        records.append({**rec, "seed": seed})
                md = write_results(args.out, records, hp, data_info, machine, cmd,
                                   time.perf_counter() - t_all, cpu_seconds() - cpu0, seeds)
    print(md)
    return 0


def merge_results(files: list[Path], out: Path) -> int:
    """One table from several results.json files (same hyperparameters apart from the seed)."""
    parts = [json.loads(f.read_text()) for f in files]
    unique: dict[tuple, dict[str, Any]] = {}  # a row run by two processes (same seed) counts once
    for part in parts:
        for r in part["records"]:
            unique.setdefault((r["dataset"], r["split"], r.get("seed", 0), r["row"]), r)
    records = list(unique.values())
    hp = SmallData(**{k: (tuple(tuple(x) for x in v) if k == "ssl_options" else v)
                      for k, v in parts[0]["hyperparameters"].items() if k in SmallData.__dataclass_fields__})
    seeds = sorted({sd for part in parts for sd in part.get("seeds", [])})
    data_info = {k: v for part in parts for k, v in part["data"].items()}
    cmd = "; ".join(part["command"] for part in parts)
    out.mkdir(parents=True, exist_ok=True)
    print(write_results(out, records, hp, data_info, parts[0]["machine"], cmd,
                        sum(part["total_s"] for part in parts), sum(part.get("cpu_s", 0.0) for part in parts),
                        seeds))
    return 0


def write_results(out: Path, records: list[dict[str, Any]], hp: SmallData, data_info: dict[str, Any],
                  machine: str, cmd: str, total_s: float, cpu_s: float, seeds: list[int]) -> str:
    """results.json and results.md from the records so far (rewritten after every split and seed)."""
    summary = summarise(records)
    result = {"command": cmd, "machine": machine, "total_s": total_s, "cpu_s": cpu_s, "seeds": seeds,
              "hyperparameters": asdict(hp), "data": data_info, "summary": summary, "records": records}
    per_split = {(r["dataset"], r["split"]): r for r in records if r["run"] == "random"}
    splits = "; ".join(f"{d} {sp}: {r['num_train']} train / {r['num_test']} test, {r['epochs']} epochs, "
                       f"queue {r['queue_size']}" for (d, sp), r in per_split.items())
    done = sorted({r.get("seed", 0) for r in records})
    md = (f"{markdown(summary, hp)}\n\n{markdown_cross(summary)}\n\n"
          f"Seeds {done} (of {seeds}); mean ± sample std over seeds; Δ: paired difference per seed, "
          f"mean ± std [min, max]. Splits: {splits}.\nMachine: {machine}. Wall {total_s / 60:.1f} min, "
          f"CPU {cpu_s / 60:.1f} min. Command: `{cmd}`.\nHyperparameters: {json.dumps(asdict(hp))}.\n")
    return write_report(out, result, md)


if __name__ == "__main__":
    sys.exit(main())
