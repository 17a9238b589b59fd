"""Converters for the three small real skeleton data sets in ``../shared/data``, and their standard protocols.

Each loader reads the raw files (never copies them) into a :class:`RealDataset`: one :class:`Sample` per
action instance holding the raw, un-normalised joint positions ``(3, T, V, M)`` float32 in metres, in the
joint order of the data set's layout. Preprocessing (centering on ``layout.center``, rotation from
``layout.shoulders``, resizing to the configured frames) is NOT done here: it is the project's one
preprocessing function, applied by ``crossclr prepare arrays`` to the ``.npz`` this module writes.

- **MSR Action3D** (20 actions, 10 subjects, 20 joints, layout ``benchmarks/layouts/msr-action3d.toml``):
  ``aAA_sSS_eEE_skeleton3D.txt``, 20 lines ``x y z confidence`` per frame. By default only the files named
  in ``msr_action3d_files_used_in_cvpr12_paper.txt`` (557 names) are used; files whose coordinates are all
  zero (``a13_s09_e02``, not in that list) are skipped and counted. Frames whose 20 joints are all zero (the
  tracker lost the body: 252 frames in 13 "bend" and "pick up & throw" files, mid-sequence) are removed and
  counted, so that ``length`` and resizing see only tracked frames. Cross-subject: odd subjects train.
- **UTKinect-Action3D** (10 actions, 10 subjects, built-in ``kinect-v1`` layout): ``joints_sSS_eEE.txt``
  rows of ``frame_id`` then 20 x (x, y, z); one segment per line of ``actionLabel.txt`` = the rows with
  ``start <= frame_id <= end`` (some frame ids occur on two consecutive rows: both are kept, in file order).
  The NaN segment (``s10_e02`` carry) is skipped and counted. Protocols: ``cross-subject`` (odd subjects
  train, even test, as for MSR: a fixed half/half split by subject) or ``loso`` (leave one subject out).
- **SBU Kinect Interaction** (8 interactions, 21 subject pairs, 15 joints, two persons: M = 2, layout
  ``benchmarks/layouts/sbu-kinect.toml``): ``sXXsYY/CC/NNN/skeleton_pos.txt``, each line the frame index
  then 2 x 15 x (x, y, z) in SBU's normalised coordinates. They are de-normalised as the SBU readme says
  (x = 1280 - 2560 x, y = 960 - 1920 y, z = 10000 z / 7.8125, in millimetres; y then points up) and divided
  by 1000 to give metres like the other sets. Protocol: the 5-fold cross-validation over subject pairs of
  the SBU paper (:data:`SBU_FOLDS`).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crossclr_infer.errors import CrossclrError
from crossclr_infer.layouts import Layout, get_layout

log = logging.getLogger(__name__)

LAYOUT_DIR = Path(__file__).resolve().parent / "layouts"
MSR_LAYOUT = LAYOUT_DIR / "msr-action3d.toml"
SBU_LAYOUT = LAYOUT_DIR / "sbu-kinect.toml"
UTK_LAYOUT = "kinect-v1"

MSR_ACTIONS: tuple[str, ...] = (
    "high arm wave", "horizontal arm wave", "hammer", "hand catch", "forward punch", "high throw",
    "draw x", "draw tick", "draw circle", "hand clap", "two hand wave", "side-boxing", "bend",
    "forward kick", "side kick", "jogging", "tennis swing", "tennis serve", "golf swing", "pick up & throw",
)
MSR_FILE_LIST = "msr_action3d_files_used_in_cvpr12_paper.txt"

UTK_ACTIONS: tuple[str, ...] = (
    "walk", "sitDown", "standUp", "pickUp", "carry", "throw", "push", "pull", "waveHands", "clapHands",
)

SBU_ACTIONS: tuple[str, ...] = (
    "approaching", "departing", "kicking", "pushing", "shaking hands", "hugging", "exchanging object",
    "punching",
)
# The 5 folds of subject pairs of the SBU Kinect Interaction paper (Yun et al. 2012), used by later work.
SBU_FOLDS: tuple[tuple[str, ...], ...] = (
    ("s01s02", "s03s04", "s05s02", "s06s04"),
    ("s02s03", "s02s07", "s03s05", "s05s03"),
    ("s01s03", "s01s07", "s07s01", "s07s03"),
    ("s02s01", "s02s06", "s03s02", "s03s06"),
    ("s04s02", "s04s03", "s04s06", "s06s02", "s06s03"),
)

DATASETS = ("msr", "utkinect", "sbu")


@dataclass(frozen=True)
class Sample:
    """One action instance: raw joint positions ``data`` (3, T, V, M) float32, metres, layout joint order."""

    name: str
    label: int
    subject: str  # the person (MSR, UTKinect: "s01") or the subject pair (SBU: "s01s02")
    data: np.ndarray


@dataclass(frozen=True)
class RealDataset:
    """A whole data set: samples in a fixed order (sorted by name), its layout, what was skipped and why."""

    name: str
    layout: Layout
    class_names: tuple[str, ...]
    samples: tuple[Sample, ...]
    skipped: dict[str, int] = field(default_factory=dict)  # samples left out, by reason
    dropped_frames: int = 0  # untracked (all-zero) frames removed from kept samples

    @property
    def num_person(self) -> int:
        return int(self.samples[0].data.shape[3])

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)

    @property
    def subjects(self) -> list[str]:
        return [s.subject for s in self.samples]


@dataclass(frozen=True)
class Split:
    """A train/test split: indices into ``RealDataset.samples``."""

    name: str
    train: tuple[int, ...]
    test: tuple[int, ...]


# ----------------------------------------------------------------------------------------------------
# parsing helpers


def _read_rows(path: Path, expected: int | tuple[int, ...], what: str) -> np.ndarray:
    """The whitespace/comma separated numeric rows of a text file as float64 (rows, cols).

    Every non-empty line must have ``expected`` values (one of them, when a tuple, the same for every line);
    otherwise a CrossclrError names the file, the line and what was expected.
    """
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as e:
        raise CrossclrError(f"{path}: cannot read ({e})") from None
    allowed = (expected,) if isinstance(expected, int) else expected
    rows: list[list[str]] = []
    width = None
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.replace(",", " ").split()
        if not parts:
            continue
        if len(parts) not in allowed or (width is not None and len(parts) != width):
            want = width if width is not None else " or ".join(map(str, allowed))
            raise CrossclrError(f"{path}: line {n}: expected {want} values ({what}), got {len(parts)}")
        width = len(parts)
        rows.append(parts)
    if not rows:
        raise CrossclrError(f"{path}: empty file, expected {what}")
    try:
        return np.array(rows, dtype=np.float64)
    except ValueError:
        for n, parts in enumerate(rows, 1):
            for p in parts:
                try:
                    float(p)
                except ValueError:
                    raise CrossclrError(f"{path}: data row {n}: {p!r} is not a number ({what})") from None
        raise


_MSR_NAME = re.compile(r"^a(\d\d)_s(\d\d)_e(\d\d)$")


def read_msr_file(path: str | os.PathLike) -> np.ndarray:
    """One MSR Action3D ``*_skeleton3D.txt`` -> (T, 20, 3) float32 (x, y, z; the confidence is dropped)."""
    path = Path(path)
    rows = _read_rows(path, 4, "x y z confidence")
    if len(rows) % 20:
        raise CrossclrError(f"{path}: {len(rows)} lines, expected a multiple of 20 (20 joints per frame)")
    return rows[:, :3].reshape(-1, 20, 3).astype(np.float32)  # (T*20, 3) -> (T, 20, 3)


def load_msr_action3d(root: str | os.PathLike, *, file_list: str | None = MSR_FILE_LIST) -> RealDataset:
    """MSR Action3D from its folder. ``file_list``: a file in ``root`` naming the samples to use, one per line
    (default: the 557-name list of the CVPR 2012 paper), or None for every ``*_skeleton3D.txt`` file."""
    root = Path(root)
    files = {p.name[: -len("_skeleton3D.txt")]: p for p in root.glob("a*_s*_e*_skeleton3D.txt")}
    if not files:
        raise CrossclrError(f"{root}: no aAA_sSS_eEE_skeleton3D.txt files, expected the MSR Action3D folder")
    if file_list is None:
        names = sorted(files)
    else:
        list_path = root / file_list
        try:
            names = sorted(set(list_path.read_text(encoding="ascii").split()))
        except OSError as e:
            raise CrossclrError(f"{list_path}: cannot read the MSR file list ({e})") from None
        missing = [n for n in names if n not in files]
        if missing:
            raise CrossclrError(f"{list_path}: names {missing[:3]} have no _skeleton3D.txt file in {root}")
    skipped: Counter[str] = Counter()
    dropped = 0
    samples = []
    for name in names:
        m = _MSR_NAME.match(name)
        if m is None:
            raise CrossclrError(f"{root}: {name!r} is not an aAA_sSS_eEE MSR Action3D name")
        action, subject = int(m.group(1)), int(m.group(2))
        if not 1 <= action <= len(MSR_ACTIONS):
            raise CrossclrError(f"{files[name]}: action {action} outside 1..{len(MSR_ACTIONS)}")
        xyz = read_msr_file(files[name])
        if not np.any(xyz):
            log.info("MSR %s: all coordinates are zero, skipped", name)
            skipped["all_zero"] += 1
            continue
        tracked = np.any(xyz != 0, axis=(1, 2))
        dropped += int((~tracked).sum())
        data = xyz[tracked].transpose(2, 0, 1)[..., None]  # (T, V, 3) -> (3, T, V, 1)
        samples.append(Sample(name, action - 1, f"s{subject:02d}", np.ascontiguousarray(data)))
    return RealDataset("msr-action3d", get_layout(MSR_LAYOUT), MSR_ACTIONS, tuple(samples), dict(skipped),
                       dropped)


def read_utkinect_joints(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One UTKinect ``joints_sSS_eEE.txt`` -> (frame_ids (F,) int64, xyz (F, 20, 3) float32), file order."""
    path = Path(path)
    rows = _read_rows(path, 61, "frame id then 20 joints x y z")
    ids = rows[:, 0]
    if np.any(ids != np.round(ids)) or np.any(np.diff(ids) < 0):
        raise CrossclrError(f"{path}: frame ids must be integers in non-decreasing order")
    return ids.astype(np.int64), rows[:, 1:].reshape(-1, 20, 3).astype(np.float32)  # (F, 60) -> (F, 20, 3)


_UTK_SEQ = re.compile(r"^s(\d\d)_e(\d\d)$")
_UTK_SEGMENT = re.compile(r"^(\w+):\s+(\S+)\s+(\S+)$")


def parse_utkinect_labels(path: str | os.PathLike) -> dict[str, list[tuple[str, float, float]]]:
    """``actionLabel.txt`` -> {sequence "s01_e01": [(action, start, end), ...]}; NaN bounds stay NaN."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise CrossclrError(f"{path}: cannot read ({e})") from None
    out: dict[str, list[tuple[str, float, float]]] = {}
    current = None
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line:
            continue
        if _UTK_SEQ.match(line):
            current = line
            out[current] = []
            continue
        m = _UTK_SEGMENT.match(line)
        if m is None or current is None:
            raise CrossclrError(f"{path}: line {n}: expected 'sSS_eEE' or 'action: start end', got {line!r}")
        action = m.group(1)
        if action not in UTK_ACTIONS:
            raise CrossclrError(f"{path}: line {n}: unknown action {action!r}, expected one of {UTK_ACTIONS}")
        try:
            start, end = float(m.group(2)), float(m.group(3))
        except ValueError:
            raise CrossclrError(f"{path}: line {n}: frame bounds must be numbers or NaN, got {line!r}") \
                from None
        out[current].append((action, start, end))
    return out


def load_utkinect(root: str | os.PathLike, *, label_file: str = "actionLabel.txt",
                  min_frames: int = 2) -> RealDataset:
    """UTKinect-Action3D segments from ``root`` (``label_file`` in it; ``actionLabel_modified.txt`` also
    exists there: the same list with 7 corrected bounds). Segments with NaN bounds or fewer than
    ``min_frames`` rows are skipped and counted."""
    root = Path(root)
    labels = parse_utkinect_labels(root / label_file)
    skipped: Counter[str] = Counter()
    samples = []
    for seq in sorted(labels):
        subject = int(_UTK_SEQ.match(seq).group(1))  # type: ignore[union-attr]
        ids, xyz = read_utkinect_joints(root / f"joints_{seq}.txt")
        for action, start, end in labels[seq]:
            name = f"{seq}_{action}"
            if math.isnan(start) or math.isnan(end):
                log.info("UTKinect %s: bounds are NaN, skipped", name)
                skipped["nan_bounds"] += 1
                continue
            keep = (ids >= start) & (ids <= end)
            if keep.sum() < min_frames:
                log.info("UTKinect %s: %d rows in [%g, %g], skipped", name, keep.sum(), start, end)
                skipped["too_short"] += 1
                continue
            data = xyz[keep].transpose(2, 0, 1)[..., None]  # (T, V, 3) -> (3, T, V, 1)
            label = UTK_ACTIONS.index(action)
            samples.append(Sample(name, label, f"s{subject:02d}", np.ascontiguousarray(data)))
    if not samples:
        raise CrossclrError(f"{root / label_file}: no usable segments")
    return RealDataset("utkinect", get_layout(UTK_LAYOUT), UTK_ACTIONS, tuple(samples), dict(skipped))


def sbu_denormalize(xyz: np.ndarray) -> np.ndarray:
    """SBU normalised (..., 3) -> metres: the readme's formulas (millimetres) divided by 1000."""
    out = np.empty_like(xyz)
    out[..., 0] = (1280.0 - 2560.0 * xyz[..., 0]) / 1000.0
    out[..., 1] = (960.0 - 1920.0 * xyz[..., 1]) / 1000.0
    out[..., 2] = (10000.0 / 7.8125) * xyz[..., 2] / 1000.0
    return out


def read_sbu_file(path: str | os.PathLike, *, denormalize: bool = True) -> np.ndarray:
    """One SBU ``skeleton_pos.txt`` -> (T, 2, 15, 3) float32 (person, joint, xyz), in metres."""
    path = Path(path)
    rows = _read_rows(path, 91, "frame index then 2 persons x 15 joints x y z")
    xyz = rows[:, 1:].reshape(-1, 2, 15, 3)  # (T, 90) -> (T, M, V, 3)
    if denormalize:
        xyz = sbu_denormalize(xyz)
    return xyz.astype(np.float32)


def load_sbu(root: str | os.PathLike, *, denormalize: bool = True) -> RealDataset:
    """SBU Kinect Interaction from ``root`` (folders ``sXXsYY/CC/NNN/skeleton_pos.txt``)."""
    root = Path(root)
    files = sorted(root.glob("s[0-9][0-9]s[0-9][0-9]/[0-9][0-9]/[0-9][0-9][0-9]/skeleton_pos.txt"))
    if not files:
        raise CrossclrError(f"{root}: no sXXsYY/CC/NNN/skeleton_pos.txt files, expected the SBU folder")
    known = {p for fold in SBU_FOLDS for p in fold}
    samples = []
    for f in files:
        pair, cls, take = f.parts[-4], int(f.parts[-3]), f.parts[-2]
        if not 1 <= cls <= len(SBU_ACTIONS):
            raise CrossclrError(f"{f}: class folder {cls:02d} outside 01..{len(SBU_ACTIONS):02d}")
        if pair not in known:
            raise CrossclrError(f"{f}: subject pair {pair} is not in the SBU 5-fold protocol")
        xyz = read_sbu_file(f, denormalize=denormalize)
        data = xyz.transpose(3, 0, 2, 1)  # (T, M, V, 3) -> (3, T, V, M)
        samples.append(Sample(f"{pair}_{cls:02d}_{take}", cls - 1, pair, np.ascontiguousarray(data)))
    return RealDataset("sbu-kinect", get_layout(SBU_LAYOUT), SBU_ACTIONS, tuple(samples), {})


def load_dataset(name: str, data_root: str | os.PathLike) -> RealDataset:
    """``name`` in :data:`DATASETS`, read from its folder under ``data_root`` (``../shared/data``)."""
    root = Path(data_root)
    if name == "msr":
        return load_msr_action3d(root / "msr_action3d")
    if name == "utkinect":
        return load_utkinect(root / "utkinect")
    if name == "sbu":
        return load_sbu(root / "sbu_kinect")
    raise CrossclrError(f"unknown data set {name!r}, expected one of {DATASETS}")


# ----------------------------------------------------------------------------------------------------
# protocols


def _by_subject(ds: RealDataset, train_subjects: set[str], name: str) -> Split:
    train = tuple(i for i, s in enumerate(ds.samples) if s.subject in train_subjects)
    test = tuple(i for i, s in enumerate(ds.samples) if s.subject not in train_subjects)
    return Split(name, train, test)


def cross_subject_odd_even(ds: RealDataset) -> Split:
    """Odd-numbered subjects train, even-numbered test (MSR's standard cross-subject protocol; UTKinect's
    fixed half/half split by subject)."""
    odd = {s for s in ds.subjects if int(s[1:3]) % 2 == 1}
    return _by_subject(ds, odd, "xsub")


def leave_one_subject_out(ds: RealDataset) -> list[Split]:
    """One split per subject: that subject tests, all others train."""
    subjects = sorted(set(ds.subjects))
    return [_by_subject(ds, set(subjects) - {s}, f"loso-{s}") for s in subjects]


def sbu_folds(ds: RealDataset) -> list[Split]:
    """The 5 SBU folds: fold k's subject pairs test, the other four folds' train."""
    out = []
    for k, fold in enumerate(SBU_FOLDS, 1):
        out.append(_by_subject(ds, {p for p in ds.subjects if p not in fold}, f"fold{k}"))
    return out


def standard_splits(ds: RealDataset, *, utkinect_protocol: str = "cross-subject") -> list[Split]:
    """The splits a benchmark reports on: MSR 1 (xsub), UTKinect 1 (``cross-subject``) or 10 (``loso``),
    SBU 5 (folds; report the mean)."""
    if ds.name == "msr-action3d":
        return [cross_subject_odd_even(ds)]
    if ds.name == "utkinect":
        if utkinect_protocol == "cross-subject":
            return [cross_subject_odd_even(ds)]
        if utkinect_protocol == "loso":
            return leave_one_subject_out(ds)
        raise CrossclrError(f"unknown UTKinect protocol {utkinect_protocol!r}, "
                            "expected 'cross-subject' or 'loso'")
    if ds.name == "sbu-kinect":
        return sbu_folds(ds)
    raise CrossclrError(f"no standard protocol for data set {ds.name!r}")


# ----------------------------------------------------------------------------------------------------
# output: the generic arrays format of ``crossclr prepare arrays`` (crossclr_infer/arrays.py)


def write_arrays_npz(ds: RealDataset, split: Split, out: str | os.PathLike) -> Path:
    """Write ``split`` as one ``.npz`` in the *concatenated* layout of ``crossclr prepare arrays``:
    ``data`` (3, F, V, M) float32 (all samples' frames one after another), ``lengths`` (N,), ``label`` (N,),
    ``name`` (N,), ``split`` (N,) "train"/"val" (the test part of a protocol is the cache's "val" split),
    ``class_names`` (K,). Written to a temporary name in the same folder, then renamed."""
    out = Path(out)
    order = [*split.train, *split.test]
    if len(set(order)) != len(order):
        raise CrossclrError(f"split {split.name!r}: a sample is in both train and test")
    samples = [ds.samples[i] for i in order]
    data = np.concatenate([s.data for s in samples], axis=1)  # N x (3, T_i, V, M) -> (3, F, V, M)
    arrays = {
        "data": data.astype(np.float32),
        "lengths": np.array([s.data.shape[1] for s in samples], dtype=np.int64),
        "label": np.array([s.label for s in samples], dtype=np.int64),
        "name": np.array([s.name for s in samples]),
        "split": np.array(["train"] * len(split.train) + ["val"] * len(split.test)),
        "class_names": np.array(ds.class_names),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.npz")
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def layout_argument(ds: RealDataset) -> str:
    """The ``crossclr prepare arrays --layout`` value for this data set (built-in name or TOML path)."""
    return {"msr-action3d": str(MSR_LAYOUT), "sbu-kinect": str(SBU_LAYOUT)}.get(ds.name, ds.layout.name)
