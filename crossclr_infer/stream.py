"""Live skeleton streams: frames in, one prediction per hop out (``crossclr predict --stream``), no torch.

Input: JSON lines, one object per frame (UTF-8; blank lines are ignored)::

    {"t": 0.000, "bodies": [{"id": 7, "joints": [[0.12, 0.31, 3.02], [0.11, 0.55, 2.98], ...]}]}
    {"t": 0.033, "bodies": [{"id": 7, "joints": [[0.13, 0.31, 3.01], null, ...], "scores": [0.9, 0, ...]}]}

- ``t``: timestamp in seconds (number, required), strictly increasing.
- ``bodies``: the bodies of the frame (a list, may be empty). Each body:

  - ``joints``: one entry per joint of the model's layout (or of the camera's, ``Predictor(from_layout=...)``
    / ``--from-layout``: mapped by joint name, ``crossclr_infer.layout_map``), in its order: ``[x, y, z]``
    for 3-D models (``[x, y, z, score]`` accepted), ``[x, y]`` or ``[x, y, score]`` for 2-D models (those
    prepared with the ``pose2d`` preprocessing: COCO-17, OpenPose BODY_25); ``null`` = not detected;
  - ``id``: tracking ID, an integer or a string (optional; default: the body's index in the list); the same
    ID in two frames is the same body;
  - ``scores``: optional detection scores, one per joint (instead of a score inside each joint); without
    any score every given joint counts as detected with score 1.

Output: JSON lines, one object per prediction (``StreamPrediction.to_dict``; docs/streaming.md)::

    {"window": 0, "t_start": 0.0, "t_end": 1.633, "frames": 50, "bodies": 1, "partial": false,
     "top": [{"class": 3, "name": "waving", "probability": 0.82}, ...], "latency_ms": 6.1, "model_ms": 5.8,
     "fill": 1.0, "streams": {"joint": [...], "motion": [...], "bone": [...]}}

``t_start``/``t_end``: timestamps of the window's first and last frame; ``top``: the fused top-k classes;
``streams``: each stream's top-k; ``fill``: how full the window was (0 to 1); ``latency_ms``: from the
arrival of the window's last frame to the prediction (queue wait, preprocessing, model); ``model_ms``:
preprocessing and model only. With smoothing (``smooth``) also ``smoothed`` (the top-k of the smoothed
probabilities), ``label`` (the class held by the hysteresis) and ``warming_up`` (``Smoother``).

Windows. The window holds the last ``window`` frames (default: the model's frame count) or the frames of the
last ``span`` seconds; the model's own preprocessing (``crossclr_infer.predict.preprocess_ctvm``, as
``crossclr predict``) resamples them to its frames. A window is predicted every ``hop`` frames once it is
full; at the end of the stream, one last window covers the newest frames if any arrived after the last
prediction (``partial`` when the window never filled, e.g. a clip shorter than the window). A partial
window is predicted only when at least ``min_fill`` of it is filled (default ``DEFAULT_MIN_FILL``: half;
fill = frames / window frames, or covered seconds / span); below, it is counted and skipped (warning).

What the stream does with imperfect input (each warning is one line; after 5 of a kind they are counted, not
shown, and the end-of-stream summary gives the counts):

- missing joints (``null``, NaN or a score <= 0): for 2-D models the joint is (0, 0, 0) — a zero score tells
  the model, as ST-GCN does with OpenPose; for 3-D models ``preprocess.fill_missing_joints`` fills it from the
  same body's nearest frame in the window where it was seen (else from its parent joint);
- bodies appearing and disappearing: bodies get slots by their first appearance in the window and keep them;
  a body is zero in the frames where it is absent (or where none of its joints is detected), exactly like a
  (C, T, V, M) array given to ``crossclr predict``; the model's preprocessing then chooses the bodies as it
  does for files (``official``: the first listed per frame; ``energy``: the most active; ``pose2d``: the
  highest summed score). A window in which no body is seen is skipped with a warning;
- gaps in time longer than ``max_gap`` seconds: the window restarts (warning), frames before and after a gap
  are never mixed; shorter gaps just mean fewer frames per second in the window;
- out-of-order or repeated timestamps: the frame is skipped (warning);
- malformed lines (not JSON, JSON nested too deeply, not an object, a missing, non-numeric or out-of-range
  ``t``, non-numeric coordinates, a coordinate or score beyond ±``arrays.MAX_ABS_COORDINATE`` (1e5, the
  bound of every input: ``skeleton.check_coordinates``), a wrong number of scores, a line longer than
  ``MAX_LINE_BYTES`` (8 MiB, skipped without being held in memory)): the line is skipped (warning) and the
  stream goes on; a bad line never ends a stream;
- too many bodies: a stream holds at most ``MAX_STREAM_BODIES`` (32) body IDs in its window. A new ID beyond
  that evicts the ID seen least recently (it is removed from the window's frames, as if it had left), and a
  frame listing more than 32 detected bodies keeps its first 32; both are counted as evicted bodies. A
  window holds at most ``MAX_WINDOW_FRAMES`` (4096) frames (``window`` is refused above it; a ``span``
  window keeps its newest 4096 frames). Memory per stream is so bounded whatever the input;
- a body whose joint count or values per joint do not fit the model (wrong layout, 2-D data for a 3-D model):
  a one-line CrossclrError that ends the stream (the model cannot be meant for this stream).

The end-of-stream summary (one line on stderr) counts each kind: frames, predictions, dropped windows,
malformed lines, out-of-order frames, gaps, windows without bodies, failed windows, evicted bodies.

Lossless unless live. ``StreamPredictor.run`` reads frames on its own thread and hands windows to the
consumer through a bounded queue (``queue_size``, default 2). By default the reader waits for the consumer:
every window is predicted (frames in memory, files). ``live=True`` is for sources that cannot wait (a camera,
a pose tracker's pipe): the reader never waits and, when the consumer (the model, or whoever reads the
predictions) falls behind, the oldest waiting window is dropped (counted, warning), so a prediction is always
about recent frames. ``crossclr predict --stream`` is lossless (a file, a FIFO, stdin) unless ``--live``
marks the source live; a paced ``--replay`` (without ``--no-wait``) stands for a camera and is live. For a
live loop of one's own, ``push(frame)`` / ``predict(window)`` is the API: nothing queues at all.

Replay (``replay_frames``, ``crossclr predict --replay FILE``) turns a ``.skeleton`` or ``.npy`` file into
this stream, frame ``i`` at ``t = i / fps`` and, unless told not to wait, at that pace.
"""

from __future__ import annotations

import json
import logging
import math
import os
import stat
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CrossclrError
from .layouts import Layout, get_layout
from .metrics import ranked_classes
from .predict import check_top_k
from .predictor import Predictor
from .preprocess import MODES, fill_missing_joints
from .results import ClassScore, Prediction
from .session import ModelInfo
from .skeleton import check_coordinates

log = logging.getLogger(__name__)

DEFAULT_MAX_GAP = 1.0  # seconds without frames after which the window restarts
DEFAULT_QUEUE = 2  # windows waiting for the model
DEFAULT_FPS = 30.0  # replay frame rate
HOPS_PER_WINDOW = 5  # default hop: a fifth of the window
WARNINGS_SHOWN = 5  # warnings of one kind shown before they are only counted
TIME_EPS = 1e-6  # seconds: timestamps this close count as equal when a span window is cut
# Bounds that keep a stream's memory fixed whatever its input (module docstring)
MAX_STREAM_BODIES = 32  # body IDs held in a window; a new one evicts the least recently seen
MAX_WINDOW_FRAMES = 4096  # frames held in a window (--window at most this; a --span window keeps the newest)
MAX_LINE_BYTES = 8 * 1024 * 1024  # a longer line is skipped unread (3,000 bodies of 25 joints fit)
MIN_SPAN, MAX_SPAN = 1e-3, 3600.0  # seconds per --span window
MIN_FPS, MAX_FPS = 0.01, 10_000.0  # --replay frame rates
MAX_QUEUE = 64  # windows waiting for the model (--queue)
DEFAULT_MIN_FILL = 0.5  # a window less full than this (fraction of its frames or span) is not predicted
MIN_SMOOTH = 1e-3  # --smooth: the smallest weight of the newest window
DEFAULT_SMOOTH_MARGIN = 0.1  # hysteresis: the lead (smoothed probability) a new label needs ...
DEFAULT_SMOOTH_HOLD = 2  # ... in this many consecutive windows
# what a hostile line can make the JSON parser or numpy raise besides a JSON syntax error: RecursionError
# (nesting), ValueError (an integer of more than 4,300 digits), OverflowError (an integer beyond float64)
_UNREADABLE = (RecursionError, ValueError, TypeError, OverflowError)


class MalformedFrame(CrossclrError):
    """A frame that cannot be read (skipped with a warning), unlike a stream that does not fit the model."""


class _Overlong(str):
    """Stands for a line longer than MAX_LINE_BYTES, which ``open_lines`` skipped without holding it."""


def _int_option(option: str, value: object, low: int, high: int) -> int:
    """An integer option in [low, high], else a one-line CrossclrError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise CrossclrError(f"{option} must be >= {low} and <= {high:,} (an integer), got {value!r:.40}")
    return int(value)


def _float_option(option: str, value: object, low: float, high: float, what: str) -> float:
    """A real option in [low, high] (finite), else a one-line CrossclrError naming it."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.floating, np.integer))
    try:
        x = float(value) if ok else math.nan  # type: ignore[arg-type]
    except OverflowError:
        x = math.inf
    if not low <= x <= high:
        raise CrossclrError(f"{option} must be from {low:g} to {high:g} {what}, got {value!r:.40}")
    return x


@dataclass(frozen=True)
class FrameSpec:
    """What the frames of a model's stream hold: its layout and whether channel 3 is a score (2-D)."""

    layout: Layout
    scored: bool

    @staticmethod
    def for_model(info: ModelInfo) -> FrameSpec:
        if info.num_channels != 3:
            raise CrossclrError(f"{info.path}: the model takes {info.num_channels} channels; streams carry 3 "
                                "((x, y, z), or (x, y, score) for pose2d models)")
        pre = info.preprocess if isinstance(info.preprocess, dict) else {}
        mode = str(pre.get("mode", "official"))
        if mode not in MODES:
            raise CrossclrError(f"{info.path}: the model's preprocessing {mode!r} cannot be applied to raw "
                                f"frames; streams need a model trained on one of {list(MODES)}")
        return FrameSpec(info.layout, MODES[mode].scored)

    @staticmethod
    def for_predictor(predictor: Predictor) -> FrameSpec:
        """The frames a Predictor takes: its model's, in its ``from_layout`` when it maps one."""
        spec = FrameSpec.for_model(predictor.info)
        return spec if predictor.layout_map is None else FrameSpec(predictor.input_layout, spec.scored)

    @staticmethod
    def for_layout(name: str) -> FrameSpec:
        """The frames of a layout without a model (``--emit-frames --layout``): 2-D (scored) for the
        layouts marked ``scored`` (COCO-17, OpenPose BODY_25), else 3-D."""
        try:
            layout = get_layout(name)
        except ValueError as e:
            raise CrossclrError(f"--layout: {e}") from None
        return FrameSpec(layout, layout.scored)

    @property
    def widths(self) -> tuple[int, int]:
        """Values per joint accepted: without and with a score."""
        return (2, 3) if self.scored else (3, 4)


@dataclass(frozen=True)
class Body:
    """One body in one frame: ``values`` (V, 3) float32 — (x, y, z), or (x, y, score) for 2-D — 0 where the
    joint is missing; ``seen`` (V,) the detected joints."""

    id: str
    values: np.ndarray
    seen: np.ndarray


@dataclass(frozen=True)
class Frame:
    t: float
    bodies: tuple[Body, ...]


@dataclass(frozen=True)
class Window:
    """The frames of one prediction: ``clip`` (3, T, V, M) raw coordinates as ``crossclr predict`` takes
    them (missing joints handled), slots in ``ids`` order."""

    index: int
    t_start: float
    t_end: float
    clip: np.ndarray
    ids: tuple[str, ...]
    partial: bool
    received: float  # time.perf_counter() when its last frame arrived
    fill: float = 1.0  # how full: frames / window frames, or covered seconds / span, at most 1
    segment: int = 0  # the stream's restarts (gaps) before this window: smoothing starts over in a new one


@dataclass(frozen=True)
class StreamPrediction:
    """The prediction of one window (``to_dict()``: the JSON line of ``crossclr predict --stream``).

    ``top``: the fused top-k (``prediction.top``); ``prediction``: the whole ``Prediction`` of the window
    (full fused ``probabilities``, each stream's top-k in ``streams``, ``class_names``); ``fill``: how full
    the window was, in [0, 1] (frames / window frames, or covered seconds / span); ``smoothed``: with
    smoothing, the top-k of the smoothed probabilities and ``label`` the class held by the hysteresis
    (``Smoother``); ``warming_up``: the smoothing has seen fewer than 1 / alpha windows."""

    window: int
    t_start: float
    t_end: float
    frames: int
    bodies: int
    partial: bool
    top: tuple[ClassScore, ...]
    latency_ms: float
    model_ms: float
    prediction: Prediction = field(repr=False)
    fill: float = 1.0
    smoothed: tuple[ClassScore, ...] | None = None
    label: ClassScore | None = None
    warming_up: bool = False

    @property
    def streams(self) -> dict[str, tuple[ClassScore, ...]]:
        """Each stream's top-k ({view: top-k})."""
        return self.prediction.streams

    @property
    def probabilities(self) -> np.ndarray:
        """(num_classes,) the fused probabilities of the window (raw, not smoothed)."""
        return self.prediction.probabilities

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "window": self.window, "t_start": self.t_start, "t_end": self.t_end, "frames": self.frames,
            "bodies": self.bodies, "partial": self.partial, "top": [c.to_dict() for c in self.top],
            "latency_ms": round(self.latency_ms, 3), "model_ms": round(self.model_ms, 3),
            "fill": round(self.fill, 4),
            "streams": {v: [c.to_dict() for c in top] for v, top in self.prediction.streams.items()}}
        if self.smoothed is not None and self.label is not None:
            d.update(smoothed=[c.to_dict() for c in self.smoothed], label=self.label.to_dict(),
                     warming_up=self.warming_up)
        return d


@dataclass(frozen=True)
class Smoothed:
    """One step of a ``Smoother``: the smoothed probabilities, the held label and the warm-up flag."""

    probabilities: np.ndarray  # (num_classes,) the EMA after this window
    label: int  # the class held by the hysteresis
    warming_up: bool  # fewer than 1 / alpha windows seen since the (re)start


class Smoother:
    """Exponential moving average of probability vectors with hysteresis on the label (pure numpy).

    ``s_1 = p_1``, ``s_n = alpha * p_n + (1 - alpha) * s_(n-1)``: smoothing starts from the first window;
    windows ``n < 1 / alpha`` are marked ``warming_up`` (the average still leans on fewer windows than its
    memory). The label starts as the first window's top-1 and changes to class ``c`` only when ``s[c]``
    exceeds ``s[label]`` by at least ``margin`` in ``hold`` consecutive windows (the same ``c`` each time),
    so a single-window spike never flips it. ``reset()`` starts over (a stream gap)."""

    def __init__(self, alpha: float, margin: float = DEFAULT_SMOOTH_MARGIN,
                 hold: int = DEFAULT_SMOOTH_HOLD) -> None:
        self.alpha = _float_option("--smooth", alpha, MIN_SMOOTH, 1.0, "(the newest window's weight)")
        self.margin = _float_option("--smooth-margin", margin, 0.0, 1.0, "(a probability)")
        self.hold = _int_option("--smooth-hold", hold, 1, 1000)
        self.reset()

    def reset(self) -> None:
        self._ema: np.ndarray | None = None
        self._label, self._seen = -1, 0
        self._challenger, self._streak = -1, 0

    def update(self, probabilities: np.ndarray) -> Smoothed:
        """Fold in one window's probabilities (num_classes,)."""
        p = np.asarray(probabilities, dtype=np.float64)
        if self._ema is None or self._ema.shape != p.shape:
            self.reset()
            self._ema = p.copy()
            self._label = int(np.argmax(p))
        else:
            self._ema = self.alpha * p + (1.0 - self.alpha) * self._ema
        self._seen += 1
        self._switch(self._ema)
        return Smoothed(self._ema.copy(), self._label, self._seen < 1.0 / self.alpha)

    def _switch(self, s: np.ndarray) -> None:
        """The hysteresis: count the windows in which the best other class leads the label by ``margin``."""
        best = int(np.argmax(s))
        if best == self._label or s[best] - s[self._label] < self.margin:
            self._challenger, self._streak = -1, 0
            return
        self._streak = self._streak + 1 if best == self._challenger else 1
        self._challenger = best
        if self._streak >= self.hold:
            self._label, self._challenger, self._streak = best, -1, 0


def top_scores(probabilities: np.ndarray, names: tuple[str, ...], k: int) -> tuple[ClassScore, ...]:
    """The k most probable classes of a (num_classes,) vector (ties: lower index first)."""
    [order] = ranked_classes(np.asarray(probabilities)[None], min(k, len(probabilities)))  # (1, k)
    return tuple(ClassScore(int(j), names[j], float(probabilities[j])) for j in order)


@dataclass
class StreamStats:
    """Counters of one stream (each written by one thread)."""

    frames: int = 0
    malformed: int = 0
    out_of_order: int = 0
    gaps: int = 0
    empty: int = 0
    windows: int = 0
    dropped: int = 0
    failed: int = 0
    predicted: int = 0
    evicted: int = 0
    trimmed: int = 0  # frames dropped from a span window beyond MAX_WINDOW_FRAMES
    short: int = 0  # end-of-stream windows below --min-fill, not predicted
    shown: Counter = field(default_factory=Counter)

    def warn(self, kind: str, msg: str, *args: Any) -> None:
        """A one-line warning; after WARNINGS_SHOWN of one kind they are only counted."""
        self.shown[kind] += 1
        n = self.shown[kind]
        if n < WARNINGS_SHOWN:
            log.warning(msg, *args)
        elif n == WARNINGS_SHOWN:
            log.warning(msg + " (further %s warnings are counted, not shown)", *args, kind)

    def summary(self) -> str:
        return (f"stream ended: {self.frames} frames, {self.predicted} predictions, {self.dropped} windows "
                f"dropped (model behind), {self.malformed} malformed lines, {self.out_of_order} out-of-order "
                f"frames, {self.gaps} gaps, {self.empty} windows without bodies, {self.failed} windows "
                f"failed, {self.evicted} bodies evicted (more than {MAX_STREAM_BODIES} held)"
                + (f", {self.trimmed} frames beyond {MAX_WINDOW_FRAMES} per window" if self.trimmed else "")
                + (f", {self.short} windows below --min-fill not predicted" if self.short else ""))

    @property
    def troubled(self) -> bool:
        """Whether anything was skipped, dropped or evicted (the summary is then a warning)."""
        return bool(self.dropped or self.malformed or self.out_of_order or self.gaps or self.empty
                    or self.failed or self.evicted or self.trimmed)


# ------------------------------------------------------------------------------------------------ parsing
def _joint_rows(joints: list[Any], spec: FrameSpec, where: str) -> np.ndarray:
    """The ``joints`` list -> (V, D) float64, NaN rows for ``null`` joints."""
    try:
        arr = np.asarray(joints, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        arr = None
    if arr is not None and arr.ndim == 2:
        return arr
    rows: list[np.ndarray | None] = []
    for j in joints:
        if j is None:
            rows.append(None)
            continue
        try:
            row = np.asarray(j, dtype=np.float64)
        except (ValueError, TypeError, OverflowError):
            raise MalformedFrame(f"{where}: joint values {str(j)[:40]} are not numbers in float range") \
                from None
        if row.ndim != 1:
            raise MalformedFrame(f"{where}: a joint is {str(j)[:40]}, expected a list of numbers or null")
        rows.append(row)
    widths = {len(r) for r in rows if r is not None}
    if len(widths) > 1:
        raise MalformedFrame(f"{where}: joints have different numbers of values {sorted(widths)}")
    width = widths.pop() if widths else spec.widths[0]
    return np.stack([np.full(width, np.nan) if r is None else r for r in rows])  # (V, D)


def parse_body(obj: Any, index: int, spec: FrameSpec, where: str) -> Body:
    """One body object of a frame (see the module docstring)."""
    where = f"{where}: body {index}"
    if not isinstance(obj, dict):
        raise MalformedFrame(f"{where} is {type(obj).__name__}, expected an object with 'joints'")
    joints = obj.get("joints")
    if not isinstance(joints, list):
        raise MalformedFrame(f"{where}: 'joints' missing or not a list")
    v = spec.layout.num_joints
    if len(joints) != v:
        raise CrossclrError(f"{where} has {len(joints)} joints, the model's layout {spec.layout.name!r} has "
                            f"{v}; use a model of this skeleton layout")
    arr = _joint_rows(joints, spec, where)  # (V, D)
    plain, with_score = spec.widths
    if arr.shape[1] not in spec.widths:
        kind = "2-D (x, y[, score])" if spec.scored else "3-D (x, y, z[, score])"
        raise CrossclrError(f"{where}: joints have {arr.shape[1]} values, the model takes {kind} joints "
                            f"({plain} or {with_score} values)")
    score = arr[:, plain] if arr.shape[1] == with_score else None
    if obj.get("scores") is not None:
        if score is not None:
            raise MalformedFrame(f"{where}: scores given both in the joints and in 'scores'; give one")
        try:
            score = np.asarray(obj["scores"], dtype=np.float64)
        except (ValueError, TypeError, OverflowError):
            raise MalformedFrame(f"{where}: 'scores' is not a list of numbers in float range") from None
        if score.shape != (v,):
            raise MalformedFrame(f"{where}: 'scores' has shape {score.shape}, expected {v} numbers")
    coords = arr[:, :2] if spec.scored else arr[:, :3]
    if score is None:
        score = np.ones(v)
    seen = np.isfinite(coords).all(axis=1) & (np.nan_to_num(score, nan=0.0) > 0)  # (V,)
    values = np.column_stack([coords, score]) if spec.scored else coords  # (V, 3)
    values = np.where(seen[:, None], values, 0.0)
    try:
        check_coordinates(values, where)  # the bound of every input, before float32 could turn 1e39 into inf
    except CrossclrError as e:
        raise MalformedFrame(str(e)) from None
    values = values.astype(np.float32)
    body_id = obj.get("id", index)
    if isinstance(body_id, bool) or not isinstance(body_id, (int, str)):
        raise MalformedFrame(f"{where}: 'id' is {body_id!r}, expected an integer or a string")
    return Body(str(body_id), values, seen)


def parse_frame(obj: Any, spec: FrameSpec, where: str = "frame") -> Frame:
    """A frame object (see the module docstring) -> Frame; MalformedFrame or CrossclrError."""
    if not isinstance(obj, dict):
        raise MalformedFrame(f"{where}: a JSON {type(obj).__name__}, expected an object with 't' and "
                             "'bodies'")
    t = obj.get("t")
    try:
        ok = not isinstance(t, bool) and isinstance(t, (int, float)) and math.isfinite(t)
    except OverflowError:  # an integer beyond float64 (a 400-digit timestamp)
        ok = False
    if not ok:
        raise MalformedFrame(f"{where}: 't' is {str(t)[:40]}, expected a finite timestamp in seconds")
    bodies = obj.get("bodies")
    if not isinstance(bodies, list):
        raise MalformedFrame(f"{where}: 'bodies' missing or not a list")
    try:
        parsed = tuple(parse_body(b, i, spec, where) for i, b in enumerate(bodies))
    except CrossclrError:
        raise
    except _UNREADABLE as e:  # hostile values numpy or str() cannot take (nesting, huge integers)
        raise MalformedFrame(f"{where}: a body cannot be read ({type(e).__name__})") from None
    if len({b.id for b in parsed}) != len(parsed):
        raise MalformedFrame(f"{where}: two bodies share an id")
    return Frame(float(t), parsed)


def read_frames(lines: Iterable[str], spec: FrameSpec, source: str,
                stats: StreamStats | None = None) -> Iterator[Frame]:
    """Frames of JSON lines; malformed lines are skipped with a warning (counted in ``stats``)."""
    stats = stats if stats is not None else StreamStats()
    for n, line in enumerate(lines, 1):
        where = f"{source}: line {n}"
        if isinstance(line, _Overlong) or len(line) > MAX_LINE_BYTES:
            stats.malformed += 1
            stats.warn("malformed", "%s: longer than %d bytes (MAX_LINE_BYTES); line skipped", where,
                       MAX_LINE_BYTES)
            continue
        if not line.strip():
            continue
        try:
            frame = parse_frame(json.loads(line), spec, where)
        except json.JSONDecodeError as e:
            stats.malformed += 1
            stats.warn("malformed", "%s: not JSON (%s); line skipped", where, e.msg)
        except MalformedFrame as e:
            stats.malformed += 1
            stats.warn("malformed", "%s; line skipped", e)
        except CrossclrError:
            raise  # the stream does not fit the model
        except _UNREADABLE as e:
            stats.malformed += 1
            what = "nested too deeply" if isinstance(e, RecursionError) else f"{type(e).__name__}"
            stats.warn("malformed", "%s: not a readable frame (%s); line skipped", where, what)
        else:
            yield frame


# ----------------------------------------------------------------------------------------- the stream
class _WindowQueue:
    """Bounded hand-over of windows from the reader thread to the consumer: full -> the oldest is dropped
    (``lossless`` -> the reader waits)."""

    def __init__(self, size: int, lossless: bool) -> None:
        self._items: deque[Window] = deque()
        self._size, self._lossless = size, lossless
        self._cond = threading.Condition()
        self.closed = False
        self.error: BaseException | None = None

    def put(self, item: Window) -> Window | None:
        """Add ``item``; returns the window dropped to make room, if any."""
        with self._cond:
            while self._lossless and len(self._items) >= self._size and not self.closed:
                self._cond.wait()
            if self.closed:  # the consumer has stopped: nothing more to hand over
                return None
            dropped = self._items.popleft() if len(self._items) >= self._size else None
            self._items.append(item)
            self._cond.notify_all()
            return dropped

    def get(self) -> Window | None:
        """The oldest window; None once closed and empty (or failed)."""
        with self._cond:
            while not self._items and not self.closed:
                self._cond.wait()
            if self.error is not None or not self._items:
                return None
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def close(self, error: BaseException | None = None) -> None:
        with self._cond:
            self.error = self.error or error
            self.closed = True
            self._cond.notify_all()


class StreamPredictor:
    """A sliding window over incoming frames and a prediction per hop (see the module docstring).

    ``window``: frames per window (default: the model's frames; at most MAX_WINDOW_FRAMES) or ``span``:
    seconds per window (MIN_SPAN to MAX_SPAN; not both); ``hop``: frames between predictions (default: a fifth
    of the window, at least 1); ``max_gap``: seconds without frames after which the window restarts. At most
    MAX_STREAM_BODIES body IDs are held (module docstring).

    ``min_fill``: the least fill of a partial last window that is predicted (0 to 1, default half);
    ``smooth``: the EMA weight of the newest window (``Smoother``; None = no smoothing) with the hysteresis
    ``smooth_margin`` / ``smooth_hold``.

    The live API: ``push(frame)`` returns a Window when one is due (cheap, no inference),
    ``predict(window)`` runs the model, ``flush()`` gives the last window at the end. ``run(frames)`` does all
    of it with the reading on its own thread, lossless unless ``live`` (module docstring).

    Threads: one StreamPredictor per stream; ``push``/``flush`` from one thread and ``predict`` from one
    thread (they may differ, as in ``run``). The ``Predictor`` can be shared by many StreamPredictors.
    """

    def __init__(self, predictor: Predictor, *, window: int | None = None, span: float | None = None,
                 hop: int | None = None, top_k: int = 5, max_gap: float = DEFAULT_MAX_GAP,
                 min_fill: float = DEFAULT_MIN_FILL, smooth: float | None = None,
                 smooth_margin: float = DEFAULT_SMOOTH_MARGIN,
                 smooth_hold: int = DEFAULT_SMOOTH_HOLD) -> None:
        self.predictor = predictor
        self.spec = FrameSpec.for_predictor(predictor)  # the camera's layout with Predictor(from_layout=...)
        if window is not None and span is not None:
            raise CrossclrError("give a window in frames (--window) or in seconds (--span), not both")
        if window is not None:
            window = _int_option("--window", window, 1, MAX_WINDOW_FRAMES)
        if span is not None:
            span = _float_option("--span", span, MIN_SPAN, MAX_SPAN, "seconds")
        if hop is not None:
            hop = _int_option("--hop", hop, 1, 10**9)
        top_k = check_top_k(top_k)
        if isinstance(max_gap, bool) or not isinstance(max_gap, (int, float)) or not max_gap > 0:
            raise CrossclrError(f"--max-gap must be > 0 seconds, got {max_gap!r:.40}")
        self.span = span
        self.window = None if span is not None else min(window or predictor.info.frames, MAX_WINDOW_FRAMES)
        self.hop = hop or max(1, (self.window or predictor.info.frames) // HOPS_PER_WINDOW)
        self.top_k, self.max_gap = top_k, float(max_gap)
        self.min_fill = _float_option("--min-fill", min_fill, 0.0, 1.0, "(a fraction of the window)")
        self.smoother = None if smooth is None else Smoother(smooth, smooth_margin, smooth_hold)
        self._segment, self._smoothed_segment = 0, 0  # restarts seen by push / by the smoother
        self.stats = StreamStats()
        self._frames: deque[Frame] = deque()
        self._held: dict[str, int] = {}  # body id -> frames of the window holding it
        self._recent: dict[str, None] = {}  # the held ids, least recently seen first
        self._since_window = 0  # frames pushed since the last window (or the last restart)
        self._t_last: float | None = None
        self._t_first: float | None = None  # first frame since the last restart
        self._next_index = 0

    # -- the window -------------------------------------------------------------------------------------
    def push(self, frame: Frame | Mapping[str, Any]) -> Window | None:
        """Add one frame (a Frame or a frame object of the JSON format); returns a Window when one is due."""
        if not isinstance(frame, Frame):
            frame = parse_frame(frame, self.spec)
        t = frame.t
        if self._t_last is not None and t <= self._t_last:
            self.stats.out_of_order += 1
            self.stats.warn("out-of-order", "stream: frame at t=%.6g s is not after the previous one "
                            "(t=%.6g s); frame skipped", t, self._t_last)
            return None
        if self._t_last is not None and t - self._t_last > self.max_gap:
            self.stats.gaps += 1
            self.stats.warn("gap", "stream: no frame for %.3g s before t=%.6g s (more than --max-gap %.3g "
                            "s); window restarted", t - self._t_last, t, self.max_gap)
            self._frames.clear()
            self._held.clear()
            self._recent.clear()
            self._since_window, self._t_first = 0, None
            self._segment += 1
        self._t_last = t
        self._t_first = t if self._t_first is None else self._t_first
        self._append(frame)
        self.stats.frames += 1
        self._since_window += 1
        if self.window is not None:
            while len(self._frames) > self.window:
                self._pop_oldest()
            full = len(self._frames) == self.window
        else:
            assert self.span is not None
            while len(self._frames) > 1 and self._frames[0].t <= t - self.span + TIME_EPS:
                self._pop_oldest()
            if len(self._frames) > MAX_WINDOW_FRAMES:
                self._pop_oldest()
                self.stats.trimmed += 1
                self.stats.warn("trimmed", "stream: more than %d frames in --span %.3g s; the window keeps "
                                "the newest %d (MAX_WINDOW_FRAMES)", MAX_WINDOW_FRAMES, self.span,
                                MAX_WINDOW_FRAMES)
            full = t - self._t_first >= self.span - TIME_EPS
        if full and self._since_window >= self.hop:
            return self._make_window(partial=False)
        return None

    def _append(self, frame: Frame) -> None:
        """Hold ``frame`` (its detected bodies, at most MAX_STREAM_BODIES of them), evicting the least
        recently seen body IDs beyond MAX_STREAM_BODIES held."""
        bodies = [b for b in frame.bodies if b.seen.any()]  # undetected bodies add nothing to a window
        if len(bodies) > MAX_STREAM_BODIES:
            over = len(bodies) - MAX_STREAM_BODIES
            self.stats.evicted += over
            self.stats.warn("evicted", "stream: frame at t=%.6g s lists %d detected bodies; keeping the "
                            "first %d (MAX_STREAM_BODIES)", frame.t, len(bodies), MAX_STREAM_BODIES)
            bodies = bodies[:MAX_STREAM_BODIES]
        if len(bodies) != len(frame.bodies):
            frame = Frame(frame.t, tuple(bodies))
        for b in bodies:
            self._held[b.id] = self._held.get(b.id, 0) + 1
            self._recent.pop(b.id, None)
            self._recent[b.id] = None  # now the most recent
        self._frames.append(frame)
        excess = len(self._held) - MAX_STREAM_BODIES
        if excess > 0:  # the oldest ids; never those of this frame (at most MAX_STREAM_BODIES, the newest)
            gone = set(list(self._recent)[:excess])
            for body_id in gone:
                del self._held[body_id], self._recent[body_id]
            self._frames = deque(f if not any(b.id in gone for b in f.bodies)
                                 else Frame(f.t, tuple(b for b in f.bodies if b.id not in gone))
                                 for f in self._frames)
            self.stats.evicted += excess
            self.stats.warn("evicted", "stream: more than %d body IDs in the window at t=%.6g s; evicted the "
                            "%d seen least recently (MAX_STREAM_BODIES)", MAX_STREAM_BODIES, frame.t, excess)

    def _pop_oldest(self) -> None:
        """Drop the window's oldest frame and forget the body IDs no other held frame has."""
        for b in self._frames.popleft().bodies:
            n = self._held[b.id] - 1
            if n:
                self._held[b.id] = n
            else:
                del self._held[b.id], self._recent[b.id]

    def flush(self) -> Window | None:
        """At the end of the stream: the window of the newest frames if any arrived since the last one."""
        if not self._frames or self._since_window == 0:
            return None
        fill = self._fill()
        if fill < self.min_fill:
            self._since_window = 0
            self.stats.short += 1
            self.stats.warn("short", "stream: the last window (t=%.6g..%.6g s) is %.0f%% full, below "
                            "--min-fill %.0f%%; no prediction", self._frames[0].t, self._frames[-1].t,
                            100 * fill, 100 * self.min_fill)
            return None
        return self._make_window(partial=fill < 1.0, fill=fill)

    def _fill(self) -> float:
        """How full the window is: frames / window frames, or covered seconds / span (at most 1)."""
        if self.window is not None:
            return min(1.0, len(self._frames) / self.window)
        assert self.span is not None and self._t_first is not None and self._t_last is not None
        covered = self._t_last - self._t_first
        return 1.0 if covered >= self.span - TIME_EPS else max(0.0, covered / self.span)

    def _make_window(self, partial: bool, fill: float = 1.0) -> Window | None:
        self._since_window = 0
        frames = list(self._frames)
        clip, ids = frames_to_clip(frames, self.spec)
        if not ids:
            self.stats.empty += 1
            self.stats.warn("empty", "stream: no body seen in t=%.6g..%.6g s; no prediction", frames[0].t,
                            frames[-1].t)
            return None
        self.stats.windows += 1
        index, self._next_index = self._next_index, self._next_index + 1
        return Window(index, frames[0].t, frames[-1].t, clip, ids, partial, time.perf_counter(), fill,
                      self._segment)

    # -- the model --------------------------------------------------------------------------------------
    def predict(self, window: Window) -> StreamPrediction | None:
        """The prediction of one window (None, with a warning, when the preprocessing finds no skeleton)."""
        t0 = time.perf_counter()
        name = f"window {window.index} (t={window.t_start:.6g}..{window.t_end:.6g} s)"
        try:
            x = self.predictor.prepare(window.clip, "CTVM", name)
            result = self.predictor.predict_prepared(x, top_k=self.top_k, name=name)
        except CrossclrError as e:  # e.g. no skeleton after preprocessing: this window only
            self.stats.failed += 1
            self.stats.warn("failed", "stream: %s; no prediction", e)
            return None
        done = time.perf_counter()
        self.stats.predicted += 1
        pred = StreamPrediction(window.index, window.t_start, window.t_end, window.clip.shape[1],
                                len(window.ids), window.partial, result.top, (done - window.received) * 1e3,
                                (done - t0) * 1e3, result, window.fill)
        return self._smooth(pred, window.segment)

    def _smooth(self, pred: StreamPrediction, segment: int) -> StreamPrediction:
        """``pred`` with the smoothed top-k and held label (``smooth``); a new segment (a gap) restarts it."""
        if self.smoother is None:
            return pred
        if segment != self._smoothed_segment:
            self.smoother.reset()
            self._smoothed_segment = segment
        step = self.smoother.update(pred.probabilities)
        names = pred.prediction.class_names
        top = top_scores(step.probabilities, names, self.top_k)
        label = ClassScore(step.label, names[step.label], float(step.probabilities[step.label]))
        return replace(pred, smoothed=top, label=label, warming_up=step.warming_up)

    def run(self, frames: Iterable[Frame | Mapping[str, Any]], *, live: bool = False,
            queue_size: int = DEFAULT_QUEUE, lossless: bool | None = None) -> Iterator[StreamPrediction]:
        """Predictions of a stream of frames, read on a thread of its own (it may block, e.g. on a pipe).

        Lossless by default: every window is predicted, the reader waiting for the consumer (frames in
        memory, files). ``live=True`` (a camera, a pose tracker's pipe): the reader never waits; when the
        consumer falls behind, the oldest of ``queue_size`` waiting windows is dropped (counted).
        ``lossless`` is the older spelling (``lossless=False`` is ``live=True``). Errors of the reader (a
        stream that does not fit the model) are raised here."""
        if lossless is not None:
            if live and lossless:
                raise CrossclrError("give live=True (drop late windows) or lossless=True, not both")
            live = not lossless
        queue = _WindowQueue(_int_option("--queue", queue_size, 1, MAX_QUEUE), lossless=not live)
        stop = threading.Event()

        def read() -> None:
            try:
                for frame in frames:
                    if stop.is_set():
                        return
                    try:
                        window = self.push(frame)
                    except MalformedFrame as e:
                        self.stats.malformed += 1
                        self.stats.warn("malformed", "%s; frame skipped", e)
                        continue
                    except CrossclrError:
                        raise  # the stream does not fit the model
                    except _UNREADABLE as e:  # a hostile frame object (nesting, huge integers)
                        self.stats.malformed += 1
                        self.stats.warn("malformed", "frame: not a readable frame (%s); frame skipped",
                                        type(e).__name__)
                        continue
                    if window is not None:
                        self._hand_over(queue, window)
                last = self.flush()
                if last is not None:
                    self._hand_over(queue, last)
                queue.close()
            except BaseException as e:  # handed to the consumer, which raises it
                queue.close(e)

        reader = threading.Thread(target=read, name="crossclr-stream-reader", daemon=True)
        reader.start()
        try:
            while (window := queue.get()) is not None:
                pred = self.predict(window)
                if pred is not None:
                    yield pred
            if queue.error is not None:
                raise queue.error
        finally:
            stop.set()
            queue.close()
            s = self.stats
            log.log(logging.WARNING if s.troubled else logging.INFO, "%s", s.summary())

    def _hand_over(self, queue: _WindowQueue, window: Window) -> None:
        dropped = queue.put(window)
        if dropped is not None:
            self.stats.dropped += 1
            self.stats.warn("dropped", "stream: the model is behind the input; dropped window %d "
                            "(t=%.6g..%.6g s), %d dropped so far", dropped.index, dropped.t_start,
                            dropped.t_end, self.stats.dropped)


def frames_to_clip(frames: list[Frame], spec: FrameSpec) -> tuple[np.ndarray, tuple[str, ...]]:
    """Frames -> (3, T, V, M) raw coordinates for the model's preprocessing and the body ID of each slot.

    Slots follow the bodies' first appearance; a body is absent (0) in frames where none of its joints is
    seen; missing joints: 0 for 2-D data (score 0), ``preprocess.fill_missing_joints`` for 3-D."""
    ids: dict[str, int] = {}
    for f in frames:
        for b in f.bodies:
            if b.id not in ids and b.seen.any():
                ids[b.id] = len(ids)
    t, v = len(frames), spec.layout.num_joints
    x = np.zeros((3, t, v, max(1, len(ids))), np.float32)
    seen = np.zeros((t, v, max(1, len(ids))), bool)
    for i, f in enumerate(frames):
        for b in f.bodies:
            if b.seen.any():
                x[:, i, :, ids[b.id]] = b.values.T  # (V, 3) -> (3, V)
                seen[i, :, ids[b.id]] = b.seen
    if not spec.scored and not seen.all():
        x = fill_missing_joints(x, seen, spec.layout)
    return x, tuple(ids)


# -------------------------------------------------------------------------------------------- sources
def bounded_lines(readline: Callable[[int], str | bytes], source: str) -> Iterator[str]:
    """Lines of a ``readline(limit)`` (text, or UTF-8 bytes decoded with U+FFFD for invalid bytes), never
    holding more than MAX_LINE_BYTES + 1 of one line: a longer one is read through and given as ``_Overlong``
    (``read_frames`` skips it with a warning). A read error is a one-line CrossclrError naming ``source``."""
    while True:
        try:
            line = readline(MAX_LINE_BYTES + 1)
            if not line:
                return
            cut = len(line) > MAX_LINE_BYTES and line[-1:] not in ("\n", b"\n")
            while cut and (rest := readline(MAX_LINE_BYTES)) and rest[-1:] not in ("\n", b"\n"):
                pass  # the rest of an overlong line, read and dropped
        except OSError as e:
            raise CrossclrError(f"{source}: cannot be read ({e.strerror or e}); expected JSON-lines frames") \
                from None
        if cut:
            yield _Overlong()
        else:
            yield line.decode("utf-8", errors="replace") if isinstance(line, bytes) else line


def open_lines(source: str) -> tuple[Iterator[str], bool]:
    """Lines of ``-`` (stdin), a file or a FIFO, and whether the source is a regular file (it can wait).
    Lines are read in binary and decoded leniently (a bad byte spoils its line only), each at most
    MAX_LINE_BYTES (``bounded_lines``)."""
    import sys

    if source == "-":
        stdin = sys.stdin
        if stdin is None or getattr(stdin, "closed", False):
            raise CrossclrError("--stream: stdin is closed; pipe JSON-lines frames into stdin or give a file "
                                "or FIFO as INPUT")
        try:
            regular = stat.S_ISREG(os.fstat(stdin.fileno()).st_mode)
        except (OSError, ValueError, AttributeError):  # stdin replaced (tests) or not a file
            regular = False
        raw = getattr(stdin, "buffer", None)
        return bounded_lines((raw or stdin).readline, "stdin"), regular
    p = Path(source)
    if not p.exists():
        raise CrossclrError(f"{p}: stream source not found; expected a JSON-lines file, a FIFO or - (stdin)")
    if p.is_dir():
        raise CrossclrError(f"{p}: is a folder; expected a JSON-lines file, a FIFO or - (stdin)")
    regular = p.is_file()

    def lines() -> Iterator[str]:
        try:
            f = open(p, "rb")  # noqa: SIM115 - closed below; a FIFO blocks here until a writer opens it
        except OSError as e:
            raise CrossclrError(f"{p}: cannot be opened ({e.strerror or e}); expected a JSON-lines file, a "
                                "FIFO or - (stdin)") from None
        with f:
            yield from bounded_lines(f.readline, str(p))

    return lines(), regular


def _short(v: np.floating) -> float:
    """A float32 as the Python float of its shortest decimal form (reads back to the same float32)."""
    return float(str(v))


def clip_frames(clip: np.ndarray, spec: FrameSpec, fps: float = DEFAULT_FPS) -> Iterator[dict[str, Any]]:
    """A raw clip (3, T, V, M) -> frame objects of the JSON format, frame i at t = i / fps; body m has id m.

    A body is left out of frames where all its values are 0; a joint with a non-finite value (or, for 2-D
    data, a score <= 0) becomes ``null``."""
    c, t, v, m = clip.shape
    if c != 3 or v != spec.layout.num_joints:
        raise CrossclrError(f"clip of shape {clip.shape}, expected (3, T, {spec.layout.num_joints}, M)")
    data = np.asarray(clip, np.float32)
    for i in range(t):
        bodies = []
        for b in range(m):
            xyz = data[:, i, :, b].T  # (3, V) -> (V, 3)
            if not np.any(xyz != 0):
                continue
            ok = np.isfinite(xyz).all(axis=1)  # (V,)
            if spec.scored:
                ok &= np.nan_to_num(xyz[:, 2]) > 0
            joints = [[_short(a) for a in row] if good else None for row, good in zip(xyz, ok, strict=True)]
            bodies.append({"id": b, "joints": joints})
        yield {"t": round(i / fps, 6), "bodies": bodies}


def read_clip(path: str | Path, info: ModelInfo | FrameSpec, axes: str | None = None) -> np.ndarray:
    """A ``.skeleton`` or raw ``.npy`` file -> its raw (3, T, V, M) coordinates (not preprocessed), for a
    model (its ``ModelInfo``) or a ``FrameSpec`` (``--emit-frames`` without a model: a layout)."""
    from .ntu import read_skeleton
    from .predict import detect_axes, load_npy, parse_axes, to_ctvm

    p = Path(path)
    if not p.is_file():
        raise CrossclrError(f"{p}: replay file not found; expected a .skeleton or .npy file")
    spec = info if isinstance(info, FrameSpec) else FrameSpec.for_model(info)
    v = spec.layout.num_joints
    if p.suffix.lower() == ".skeleton":
        if spec.scored:
            raise CrossclrError(f"{p}: a .skeleton file holds 3-D (x, y, z) joints; the model takes 2-D "
                                "(x, y, score)")
        raw = read_skeleton(p, num_joints=v)
        _check_replayed(raw.xyz, p)
        m = max(1, int(raw.bodies_per_frame.max(initial=0)))
        x = np.zeros((3, raw.num_frames, v, m), np.float32)
        # (B_total, V, 3) -> (3, V) per listed body, in its frame's slot
        x[:, raw.frame_index, :, raw.rank_in_frame] = raw.xyz.transpose(0, 2, 1)
        return x
    if p.suffix.lower() != ".npy":
        raise CrossclrError(f"{p}: unsupported replay file {p.suffix or '(no suffix)'!r}; expected .skeleton "
                            "or .npy")
    arr = load_npy(p)
    if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.integer):
        raise CrossclrError(f"{p}: array dtype {arr.dtype}, expected numbers")
    a = parse_axes(axes, arr.ndim, str(p)) if axes else detect_axes(arr.shape, v, 3, str(p))
    _check_replayed(arr, p)
    return np.ascontiguousarray(to_ctvm(arr, a), dtype=np.float32)  # (named axes) -> (C, T, V, M)


def _check_replayed(x: np.ndarray, path: Path) -> None:
    """The bound of every input (``skeleton.check_coordinates``) on a replayed file's values; NaN and Inf are
    missing joints (null in the frames), as in a live stream."""
    finite = np.isfinite(x) if x.dtype.kind == "f" else np.ones(x.shape, bool)
    check_coordinates(np.where(finite, x, 0), str(path))


def replay_frames(path: str | Path, info: ModelInfo | FrameSpec, *, fps: float = DEFAULT_FPS,
                  axes: str | None = None, wait: bool = True) -> Iterator[dict[str, Any]]:
    """The frames of a ``.skeleton``/``.npy`` file as a stream (JSON-format objects), at ``fps`` frames per
    second of timestamps, and in real time when ``wait``; for a model (``ModelInfo``) or a ``FrameSpec``."""
    fps = _float_option("--fps", fps, MIN_FPS, MAX_FPS, "frames per second")
    spec = info if isinstance(info, FrameSpec) else FrameSpec.for_model(info)
    frames = clip_frames(read_clip(path, spec, axes), spec, fps)
    start = time.perf_counter()
    for i, frame in enumerate(frames):
        if wait:
            delay = start + i / fps - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        yield frame
