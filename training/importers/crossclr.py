"""Import official CrosSCLR / SkeletonCLR checkpoints (plain state dicts) into this project's modules.

Official key layout (LinguoLi/CrosSCLR ``net/skeletonclr.py``, ``net/crossclr.py``,
``net/crossclr_3views.py``):

- encoders ``encoder_q``, ``encoder_k`` (joint), ``encoder_q_motion`` / ``encoder_k_motion``,
  ``encoder_q_bone`` / ``encoder_k_bone``; each ``A``, ``data_bn.*``, ``st_gcn_networks.i.*``,
  ``edge_importance.i`` and ``fc``: pretraining ``fc.0.*``/``fc.2.*`` (joint MLP projector) or ``fc.*``
  (linear projector); the motion/bone projectors of the multi-view models are
  ``fc.0.*``, ``fc.2.0.*``, ``fc.2.2.*`` — a Linear–ReLU in front of the *joint* projector, shared with it;
- queues ``queue`` / ``queue_motion`` / ``queue_bone`` (D, K) and pointers ``queue_ptr*`` (1,);
- linear-evaluation checkpoints hold only query encoders whose ``fc`` (classes, hidden) is the linear head.

Backbone names are identical to ``stgcn.STGCN``, so backbones map without renaming. The nested
motion/bone projectors cannot be expressed as this project's per-view two-layer projector: those projectors
are freshly initialised (seeded, listed in ``meta["fresh_keys"]``); the 256-d features are exact.

``convert_official_state`` maps the tensors (group the keys, infer the architecture, check the graph, then
pretraining or linear-evaluation conversion), ``build_imported`` loads them strictly into modules, and
``convert_crossclr_file`` writes the result (``training.importers.convert_official_file`` dispatches here).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch

from crossclr_infer.errors import CrossclrError
from crossclr_infer.graph import partition
from crossclr_infer.layouts import BUILTIN_LAYOUTS, Layout, layout_to_toml
from training.checkpoint import make_checkpoint
from training.config import TrainConfig, config_to_dict
from training.encoders.config import EncoderConfig
from training.encoders.heads import projector_head
from training.encoders.stgcn import STGCN
from training.importers.common import save_imported
from training.objectives.crossclr import CrosSCLR, SSLConfig
from training.protocols.io import save_linear

log = logging.getLogger(__name__)

SUFFIX_VIEW = {"": "joint", "_motion": "motion", "_bone": "bone"}
_ENC_RE = re.compile(r"^encoder_([qk])(_motion|_bone)?\.(.+)$")
_QUEUE_RE = re.compile(r"^queue(_ptr)?(_motion|_bone)?$")
_QUEUE_PTR_RE = re.compile(r"^queue_ptr(_motion|_bone)?$")
OFFICIAL_STAGE_BLOCKS = (4, 3, 3)


def _fail(source: str, msg: str) -> CrossclrError:
    return CrossclrError(f"{source}: {msg}")


def _listing(keys: list[str], limit: int = 12) -> str:
    keys = sorted(keys)
    more = f" … (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _split(state: Mapping[str, Any], source: str) -> tuple[dict, dict, list[str]]:
    """Group keys by encoder (q/k, suffix) and queue; return unknown keys."""
    encoders: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    queues: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for key, val in state.items():
        if not isinstance(val, torch.Tensor):
            raise _fail(source, f"entry {key!r} is a {type(val).__name__}, not a tensor; expected a plain "
                                "official state dict")
        k = key[len("module."):] if key.startswith("module.") else key
        m = _ENC_RE.match(k)
        if m:
            encoders.setdefault((m.group(1), m.group(2) or ""), {})[m.group(3)] = val
            continue
        m = _QUEUE_RE.match(k)
        if m:
            queues.setdefault(m.group(2) or "", {})["ptr" if m.group(1) else "queue"] = val
            continue
        unknown.append(key)
    return encoders, queues, unknown


def _infer_config(sd: dict[str, torch.Tensor], source: str) -> tuple[EncoderConfig, str, int]:
    """Encoder architecture from the joint query encoder's tensors; returns (cfg, projector form, in_ch)."""
    need = ["A", "data_bn.weight", "st_gcn_networks.0.gcn.conv.weight"]
    missing = [n for n in need if n not in sd]
    if missing:
        raise _fail(source, f"encoder_q lacks {missing}; expected an official ST-GCN encoder")
    k, v, _ = sd["A"].shape
    in_ch = sd["data_bn.weight"].shape[0] // v
    blocks = sorted({int(n.split(".")[1]) for n in sd if n.startswith("st_gcn_networks.")})
    if blocks != list(range(10)):
        raise _fail(source, f"encoder has {len(blocks)} ST-GCN blocks; official checkpoints have 10")
    base = sd["st_gcn_networks.0.gcn.conv.weight"].shape[0] // k
    hidden = sd["st_gcn_networks.9.gcn.conv.weight"].shape[0] // k
    tk = sd["st_gcn_networks.0.tcn.2.weight"].shape[2]
    edge = "edge_importance.0" in sd
    if "fc.2.2.weight" in sd:
        form, feat = "nested", sd["fc.2.2.weight"].shape[0]
    elif "fc.2.weight" in sd:
        form, feat = "mlp", sd["fc.2.weight"].shape[0]
    elif "fc.weight" in sd:
        form, feat = "linear", sd["fc.weight"].shape[0]
    else:
        raise _fail(source, "encoder_q has no fc (projector or classifier) weights; expected fc.* keys")
    cfg = EncoderConfig(graph="spatial", base_channels=int(base), hidden_dim=int(hidden),
                        feature_dim=int(feat), projector="mlp" if form == "mlp" else "linear",
                        temporal_kernel=int(tk), stage_blocks=OFFICIAL_STAGE_BLOCKS, edge_importance=edge)
    return cfg, form, int(in_ch)


def _check_keys(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], prefix: str,
                source: str) -> None:
    missing = [prefix + n for n in expected if n not in got]
    unknown = [prefix + n for n in got if n not in expected]
    if missing or unknown:
        parts = []
        if unknown:
            parts.append(f"unknown keys {_listing(unknown)}")
        if missing:
            parts.append(f"missing keys {_listing(missing)}")
        raise _fail(source, "; ".join(parts) + "; expected the official encoder layout of this architecture")
    bad = [f"{prefix}{n} {tuple(got[n].shape)} vs {tuple(t.shape)}" for n, t in expected.items()
           if tuple(got[n].shape) != tuple(t.shape)]
    if bad:
        raise _fail(source, f"tensor shapes differ from the inferred architecture: {_listing(bad, 6)}")


class _Grouped(NamedTuple):
    """An official state dict grouped: encoders by (q/k, suffix), queues by suffix, the views present."""

    encoders: dict[tuple[str, str], dict[str, torch.Tensor]]
    queues: dict[str, dict[str, torch.Tensor]]
    suffixes: list[str]  # key suffixes of the query encoders present ("", "_motion", "_bone")
    view_of: dict[str, str]  # suffix -> this project's view name


def convert_official_state(state_dict: Mapping[str, Any], *, layout: Layout | None = None,
                           single_view: str = "joint", source: str = "official checkpoint"
                           ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Map an official state dict onto this project's modules.

    Returns ``(ours, meta)``:

    - pretraining checkpoints (``meta["kind"] == "pretrain"``): ``ours`` is a complete state dict of
      ``CrosSCLR(layout, EncoderConfig.from_dict(meta["encoder_config"]),
      SSLConfig(queue_size=meta["queue_size"]), tuple(meta["views"]))`` (``encoders_q.<view>.*``,
      ``encoders_k.<view>.*``, ``queue.keys_<view>`` (K, D), ``queue.labels`` (all −1), ``queue.ptr``);
    - linear-evaluation checkpoints (``"linear"``): ``ours`` holds ``encoders.<view>.*`` (STGCN with
      ``projector="none"``) and ``heads.<view>.weight`` / ``.bias`` (classes, hidden); ``meta["num_class"]``.

    ``meta`` also has ``views``, ``encoder_config`` (dict), ``in_channels``, ``fresh_keys`` (keys of
    ``ours`` that are newly initialised, not imported) and ``notes``. ``single_view`` names the view of a
    one-encoder (SkeletonCLR) checkpoint. Unknown or missing keys raise ``CrossclrError`` listing them.
    """
    layout = layout or BUILTIN_LAYOUTS["ntu-rgb+d"]
    grouped = _group(state_dict, single_view, source)
    cfg, form, in_ch = _infer_config(grouped.encoders[("q", "")], source)
    _check_graph(grouped.encoders[("q", "")]["A"], layout, source)
    if any(w == "k" for (w, _) in grouped.encoders) or grouped.queues:
        return _convert_pretrain(grouped, cfg, in_ch, layout, source)
    return _convert_linear(grouped, cfg, form, in_ch, layout, source)


def _group(state_dict: Mapping[str, Any], single_view: str, source: str) -> _Grouped:
    """Group the keys and name the views; unknown keys, a missing ``encoder_q`` or unpaired key encoders
    and queues are refused."""
    encoders, queues, unknown = _split(state_dict, source)
    if unknown:
        raise _fail(source, f"unknown keys {_listing(unknown)}; expected official "
                            "encoder_q*/encoder_k*/queue* keys (SkeletonCLR or CrosSCLR)")
    if ("q", "") not in encoders:
        raise _fail(source, "no encoder_q.* keys; expected an official SkeletonCLR/CrosSCLR state dict")
    suffixes = [s for s in SUFFIX_VIEW if ("q", s) in encoders]
    if single_view not in ("joint", "motion", "bone", "accel"):
        raise _fail(source, f"single_view {single_view!r} is not a view; expected joint, motion, "
                            "bone or accel")
    view_of = {"": single_view} if suffixes == [""] else {s: SUFFIX_VIEW[s] for s in suffixes}
    orphans = [f"encoder_k{s}.*" for (w, s) in encoders if w == "k" and s not in suffixes]
    orphans += [f"queue{s}" for s in queues if s not in suffixes]
    if orphans:
        raise _fail(source, f"{orphans} have no matching encoder_q{{suffix}}.*; expected pairs of query "
                            "encoders and their keys/queues")
    return _Grouped(encoders, queues, suffixes, view_of)


def _check_graph(a: torch.Tensor, layout: Layout, source: str) -> None:
    """The checkpoint's graph ``A`` must be ``layout``'s spatial partition."""
    ours_a = torch.from_numpy(partition(layout, "spatial"))
    if tuple(a.shape) != tuple(ours_a.shape) or not torch.allclose(a.float(), ours_a, atol=1e-6):
        raise _fail(source, f"the checkpoint's graph A {tuple(a.shape)} is not the spatial partition "
                            f"of layout {layout.name!r} {tuple(ours_a.shape)}; pass the layout it was "
                            "trained on")


def _convert_pretrain(g: _Grouped, cfg: EncoderConfig, in_ch: int, layout: Layout,
                      source: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Query and key encoders, queues and the queue pointer of a pretraining checkpoint."""
    _check_pretrain_complete(g, source)
    ref = STGCN(layout, cfg, in_channels=in_ch).state_dict()
    ours: dict[str, torch.Tensor] = {}
    fresh: list[str] = []
    for s in g.suffixes:
        view = g.view_of[s]
        for w, root in (("q", "encoders_q"), ("k", "encoders_k")):
            sd = g.encoders[(w, s)]
            _check_keys(sd, _expected_encoder(ref, nested=_is_nested(sd)), f"encoder_{w}{s}.", source)
            fresh += _copy_encoder(sd, ref, cfg, f"{root}.{view}.", ours)
        ours[f"queue.keys_{view}"] = _queue_keys(g.queues[s]["queue"], s, cfg, source)
    k_size, notes = _queue_state(g, ours, source)
    if fresh:
        views_fresh = sorted({k.split(".")[1] for k in fresh})
        notes.append(f"projectors of {views_fresh} are freshly initialised: the official code nests "
                     "the joint projector inside them, which this project's per-view projector "
                     "cannot express; the encoders' 256-d features are imported exactly")
        log.warning("%s: %s", source, notes[-1])
    meta = {"kind": "pretrain", "views": [g.view_of[s] for s in g.suffixes], "encoder_config": cfg.to_dict(),
            "in_channels": in_ch, "queue_size": int(k_size), "num_class": None, "fresh_keys": fresh,
            "notes": notes}
    return ours, meta


def _check_pretrain_complete(g: _Grouped, source: str) -> None:
    missing = [f"encoder_k{s}.*" for s in g.suffixes if ("k", s) not in g.encoders]
    missing += [f"queue{s}" for s in g.suffixes if "queue" not in g.queues.get(s, {})]
    missing += [f"queue_ptr{s}" for s in g.suffixes if "ptr" not in g.queues.get(s, {})]
    if missing:
        raise _fail(source, f"missing keys {missing}; a pretraining checkpoint needs, per view, "
                            "encoder_q*, encoder_k*, queue* and queue_ptr*")


def _is_nested(sd: Mapping[str, torch.Tensor]) -> bool:
    """Whether an official encoder has the multi-view projector that nests the joint one."""
    return "fc.2.2.weight" in sd or "fc.2.0.weight" in sd


def _expected_encoder(ref: Mapping[str, torch.Tensor], *, nested: bool) -> dict[str, torch.Tensor]:
    """The official tensors of one encoder: ``ref``'s backbone plus its joint or nested projector."""
    backbone = {n: t for n, t in ref.items() if not n.startswith("fc.")}
    joint_fc = {n: t for n, t in ref.items() if n.startswith("fc.")}
    if not nested:
        return {**backbone, **joint_fc}
    return {**backbone, "fc.0.weight": ref["fc.0.weight"], "fc.0.bias": ref["fc.0.bias"],
            **{"fc.2." + n[3:]: t for n, t in joint_fc.items()}}


def _copy_encoder(sd: Mapping[str, torch.Tensor], ref: Mapping[str, torch.Tensor], cfg: EncoderConfig,
                  prefix: str, ours: dict[str, torch.Tensor]) -> list[str]:
    """Copy one encoder into ``ours`` under ``prefix``; a nested projector is replaced by a fresh one
    (seeded), whose keys are returned."""
    for n in ref:
        if not n.startswith("fc."):
            ours[prefix + n] = sd[n].clone()
    if not _is_nested(sd):
        for n in ref:
            if n.startswith("fc."):
                ours[prefix + n] = sd[n].clone()
        return []
    fresh = []
    for n, t in _fresh_projector(cfg).items():
        ours[prefix + n] = t.clone()
        fresh.append(prefix + n)
    return fresh


def _fresh_projector(cfg: EncoderConfig) -> dict[str, torch.Tensor]:
    """A projector initialised from seed 0 (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        proj = projector_head(cfg).state_dict()
    return {"fc." + n: t.detach().clone() for n, t in proj.items()}


def _queue_keys(queue: torch.Tensor, suffix: str, cfg: EncoderConfig, source: str) -> torch.Tensor:
    """An official queue (D, K) as this project's keys (K, D)."""
    if queue.dim() != 2 or queue.shape[0] != cfg.feature_dim:
        raise _fail(source, f"queue{suffix} has shape {tuple(queue.shape)}; expected ({cfg.feature_dim}, K)")
    return queue.t().contiguous().float().clone()  # (D, K) -> (K, D)


def _queue_state(g: _Grouped, ours: dict[str, torch.Tensor], source: str) -> tuple[int, list[str]]:
    """``queue.labels`` (all −1) and ``queue.ptr`` into ``ours``; returns the queue size and notes."""
    sizes = {tuple(g.queues[s]["queue"].shape) for s in g.suffixes}
    if len(sizes) != 1:
        raise _fail(source, f"queues have different shapes {sorted(sizes)}; expected one queue size")
    notes = []
    ptrs = {int(g.queues[s]["ptr"].reshape(-1)[0]) for s in g.suffixes}
    if len(ptrs) != 1:
        notes.append(f"queue pointers differ {sorted(ptrs)}; using the joint one")
    k_size = next(iter(sizes))[1]
    ours["queue.labels"] = torch.full((k_size,), -1, dtype=torch.long)
    ours["queue.ptr"] = torch.tensor(int(g.queues[g.suffixes[0]]["ptr"].reshape(-1)[0]) % k_size)
    return k_size, notes


def _convert_linear(g: _Grouped, cfg: EncoderConfig, form: str, in_ch: int, layout: Layout,
                    source: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Linear evaluation: the query encoders' ``fc`` (classes, hidden) are the heads."""
    if form != "linear":
        raise _fail(source, "query encoders carry a projector but no encoder_k*/queue* keys; expected either "
                            "a pretraining checkpoint (with keys and queues) or a linear-evaluation one "
                            "(fc of shape (classes, hidden))")
    head_cfg = EncoderConfig.from_dict({**cfg.to_dict(), "projector": "none", "feature_dim": cfg.hidden_dim})
    ref = STGCN(layout, head_cfg, in_channels=in_ch).state_dict()
    expected = {**ref, "fc.weight": torch.empty(cfg.feature_dim, cfg.hidden_dim),
                "fc.bias": torch.empty(cfg.feature_dim)}
    ours: dict[str, torch.Tensor] = {}
    for s in g.suffixes:
        sd = g.encoders[("q", s)]
        _check_keys(sd, expected, f"encoder_q{s}.", source)
        view = g.view_of[s]
        for n in ref:
            ours[f"encoders.{view}.{n}"] = sd[n].clone()
        ours[f"heads.{view}.weight"] = sd["fc.weight"].clone()
        ours[f"heads.{view}.bias"] = sd["fc.bias"].clone()
    meta = {"kind": "linear", "views": [g.view_of[s] for s in g.suffixes],
            "encoder_config": head_cfg.to_dict(), "in_channels": in_ch, "queue_size": None,
            "num_class": int(cfg.feature_dim), "fresh_keys": [], "notes": []}
    return ours, meta


def build_imported(ours: Mapping[str, torch.Tensor], meta: Mapping[str, Any], layout: Layout | None = None,
                   num_person: int = 2) -> dict[str, Any]:
    """Modules loaded (strictly) from ``convert_official_state``'s output.

    ``{"model": CrosSCLR}`` for pretraining checkpoints; ``{"encoders": {view: STGCN}, "heads":
    {view: nn.Linear}}`` for linear-evaluation ones. Everything in eval mode on CPU.
    """
    layout = layout or BUILTIN_LAYOUTS["ntu-rgb+d"]
    cfg = EncoderConfig.from_dict(dict(meta["encoder_config"]))
    if meta["kind"] == "pretrain":
        model = CrosSCLR(layout, cfg, SSLConfig(queue_size=int(meta["queue_size"])), tuple(meta["views"]),
                         num_person=num_person, in_channels=int(meta["in_channels"]))
        model.load_state_dict(dict(ours), strict=True)
        return {"model": model.eval()}
    encoders, heads = {}, {}
    for view in meta["views"]:
        enc = STGCN(layout, cfg, num_person=num_person, in_channels=int(meta["in_channels"]))
        prefix = f"encoders.{view}."
        sub = {k[len(prefix):]: v for k, v in ours.items() if k.startswith(prefix)}
        enc.load_state_dict(sub, strict=True)
        w = ours[f"heads.{view}.weight"]
        head = torch.nn.Linear(w.shape[1], w.shape[0])
        head.load_state_dict({"weight": w, "bias": ours[f"heads.{view}.bias"]})
        encoders[view], heads[view] = enc.eval(), head.eval()
    return {"encoders": encoders, "heads": heads}


# ---------------------------------------------------------------------------------------------------------
# files


def convert_crossclr_file(path: Path, out: Path, state: Mapping[str, torch.Tensor], layout: Layout, *,
                          frames: int, num_person: int, single_view: str) -> Path:
    """An official CrosSCLR/SkeletonCLR state (read from ``path``) -> ``out``: pretraining checkpoints as
    ``crossclr-pretrain-v1``, linear-evaluation ones (``encoder_q*.fc`` = heads) as ``crossclr-linear-v1``.
    Both are loaded strictly into this project's modules (``build_imported``) before anything is written."""
    ours, meta = convert_official_state(state, layout=layout, single_view=single_view, source=str(path))
    built = build_imported(ours, meta, layout, num_person=num_person)
    preprocess = {"mode": "official", "frames": int(frames)}
    if meta["kind"] == "pretrain":
        return _write_pretrain(path, out, built["model"], meta, layout, frames=frames, num_person=num_person,
                               preprocess=preprocess)
    return _write_linear(path, out, built, meta, layout, frames=frames, num_person=num_person,
                         preprocess=preprocess)


def _write_pretrain(path: Path, out: Path, model: torch.nn.Module, meta: Mapping[str, Any], layout: Layout,
                    *, frames: int, num_person: int, preprocess: dict[str, Any]) -> Path:
    views = list(meta["views"])
    base = TrainConfig()
    cfg = TrainConfig(model=EncoderConfig.from_dict(dict(meta["encoder_config"])),
                      ssl=SSLConfig(queue_size=int(meta["queue_size"])), streams=tuple(views),
                      cross_epoch=base.cross_epoch if len(views) > 1 else base.epochs)
    ckpt = make_checkpoint(model_state={k: v.detach().cpu() for k, v in model.state_dict().items()},
                           optimizer_state=None, scheduler_state=None, epoch=cfg.epochs, rng=[],
                           config=config_to_dict(cfg), streams=views, layout_toml=layout_to_toml(layout),
                           num_person=num_person, frames=frames, class_names=[], preprocess=preprocess)
    save_imported(ckpt, out, path, list(meta.get("notes", [])))
    log.info("%s: imported pretraining checkpoint (%s) -> %s", path, ", ".join(views), out)
    return out


def _write_linear(path: Path, out: Path, built: Mapping[str, Any], meta: Mapping[str, Any], layout: Layout,
                  *, frames: int, num_person: int, preprocess: dict[str, Any]) -> Path:
    num_class = int(meta["num_class"])
    streams = list(meta["views"])
    save_linear(out, built["encoders"], built["heads"], fusion="joint",
                fusion_weights={v: 1.0 / len(streams) for v in streams},
                class_names=_class_names(layout, num_class), layout=layout,
                meta={"config": {"model": dict(meta["encoder_config"])}, "frames": frames,
                      "num_person": num_person, "in_channels": int(meta["in_channels"]),
                      "preprocess": preprocess, "source_checkpoint": str(path)},
                metrics={})
    log.info("%s: imported linear-evaluation checkpoint (%s, %d classes) -> %s", path, ", ".join(streams),
             num_class, out)
    return out


def _class_names(layout: Layout, num_class: int) -> list[str]:
    """NTU's action names for the 60/120-class NTU layouts, else "class 1", "class 2", ..."""
    if layout.name == "ntu-rgb+d" and num_class in (60, 120):
        from crossclr_infer.ntu import NTU_ACTION_NAMES

        return list(NTU_ACTION_NAMES[:num_class])
    return [f"class {i + 1}" for i in range(num_class)]
