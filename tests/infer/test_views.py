"""Numpy views (docs/design.md §2) against hand-computed values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crossclr_infer.layouts import get_layout
from crossclr_infer.views import VIEWS, accel, bone, compute_view, motion

NTU = get_layout("ntu-rgb+d")


def _quadratic_in_time(t: int = 5) -> np.ndarray:
    """(N=2, C=3, T, V=25, M=2) with x[..., t, v, m] = t² + 10·v + 100·m + 1000·c + 5000·n."""
    n, c, tt, v, m = np.meshgrid(np.arange(2), np.arange(3), np.arange(t), np.arange(25), np.arange(2),
                                 indexing="ij")
    return (tt ** 2 + 10 * v + 100 * m + 1000 * c + 5000 * n).astype(np.float32)


def test_motion_hand_computed() -> None:
    x = _quadratic_in_time()
    m = motion(x)
    assert m.shape == x.shape and m.dtype == x.dtype
    # (t + 1)² − t² = 2t + 1 for t < T − 1, and the last frame is 0
    np.testing.assert_array_equal(m[0, 0, :, 3, 1], [1, 3, 5, 7, 0])
    assert not m[..., -1, :, :].any()


def test_accel_hand_computed() -> None:
    x = _quadratic_in_time()
    a = accel(x)
    np.testing.assert_array_equal(a[1, 2, :, 7, 0], [2, 2, 2, 0, 0])


def test_bone_hand_computed() -> None:
    x = _quadratic_in_time()
    b = bone(x, NTU)
    # joint values differ by 10 per joint index: bone(v) = 10·(v − parent(v)), 1-based NTU pairs
    # (docs/design.md §2)
    assert b[0, 0, 0, 2 - 1, 0] == 10 * (2 - 21)  # (2, 21)
    assert b[0, 0, 0, 22 - 1, 0] == 10 * (22 - 23)  # (22, 23)
    assert b[0, 0, 0, 23 - 1, 0] == 10 * (23 - 8)  # (23, 8)
    assert b[0, 0, 0, 13 - 1, 0] == 10 * (13 - 1)  # (13, 1)
    assert not b[..., 20, :].any()  # (21, 21): the center's bone is zero
    # only the joint axis mixes: time, bodies and channels stay put
    np.testing.assert_array_equal(b[1, 2, 4, 5], b[0, 0, 0, 5])


def test_compute_view_dispatch_and_errors() -> None:
    x = _quadratic_in_time()[0]  # (C, T, V, M) without a batch axis
    assert VIEWS == ("joint", "motion", "bone", "accel")
    assert compute_view(x, "joint", NTU) is x
    np.testing.assert_array_equal(compute_view(x, "motion", NTU), motion(x))
    np.testing.assert_array_equal(compute_view(x, "bone", NTU), bone(x, NTU))
    np.testing.assert_array_equal(compute_view(x, "accel", NTU), accel(x))
    with pytest.raises(ValueError, match="unknown view 'speed'"):
        compute_view(x, "speed", NTU)
    with pytest.raises(ValueError, match="array has 20 joints, layout 'ntu-rgb\\+d' has 25"):
        bone(x[:, :, :20], NTU)


def test_parse_streams_is_the_one_stream_list_parser() -> None:
    from crossclr_infer.errors import CrossclrError
    from crossclr_infer.views import parse_streams

    assert parse_streams(" joint, bone ,") == ["joint", "bone"]
    assert parse_streams(None) is None and parse_streams("  ") is None
    for text, part in ((",", "comma-separated"), ("joint,legs", "'legs'"), ("joint,joint", "twice")):
        with pytest.raises(CrossclrError, match=part) as e:
            parse_streams(text, "--views")
        assert str(e.value).startswith("--views:")
    # over the source: no other function of crossclr_infer/, training/, export/ or cli.py splits a stream list
    # or checks names against VIEWS by hand (they call parse_streams / check_streams / check_view_name)
    assert _hand_made_stream_checks(Path(__file__).resolve().parents[2]) == []


def _hand_made_stream_checks(root: Path) -> list[str]:
    """Functions outside ``crossclr_infer/views.py`` that test membership in ``VIEWS`` (``v in VIEWS``,
    ``v not in VIEWS``), or split a string on commas while handling streams or views (an identifier of the
    function names a stream or a view)."""
    import ast

    files = [p for d in ("crossclr_infer", "training", "export") for p in sorted((root / d).rglob("*.py"))]
    found = []
    for path in [*files, root / "cli.py"]:
        if path == root / "crossclr_infer" / "views.py":
            continue
        for fn in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            nodes = list(ast.walk(fn))
            names = {n.id.lower() for n in nodes if isinstance(n, ast.Name)} | {fn.name.lower()} | {
                a.arg.lower() for a in fn.args.args + fn.args.kwonlyargs}
            about_streams = any("stream" in n or "view" in n for n in names)
            for n in nodes:
                in_views = isinstance(n, ast.Compare) and any(
                    isinstance(op, (ast.In, ast.NotIn)) and _names_views(c)
                    for op, c in zip(n.ops, n.comparators, strict=True))
                comma_split = (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                               and n.func.attr == "split" and len(n.args) == 1
                               and isinstance(n.args[0], ast.Constant) and n.args[0].value == ",")
                if in_views or (comma_split and about_streams):
                    found.append(f"{path.relative_to(root)}:{n.lineno} {fn.name}")
    return found


def _names_views(node: object) -> bool:
    return "VIEWS" in (getattr(node, "id", ""), getattr(node, "attr", ""))


def test_the_stream_check_scan_finds_a_hand_made_check(tmp_path: Path) -> None:
    """The source scan of the test above catches both forms (so its empty result means something), and
    leaves views.py and comma splits that do not handle streams alone."""
    code = "def parse(text, views):\n    return [v for v in text.split(',') if v in VIEWS]\n"
    for d in ("crossclr_infer", "training", "export"):
        (tmp_path / d).mkdir()
    (tmp_path / "training" / "bad.py").write_text(code)
    ints = "def ints(text):\n    return [int(v) for v in text.split(',')]\n"  # not about streams
    (tmp_path / "export" / "ok.py").write_text(ints)
    (tmp_path / "crossclr_infer" / "views.py").write_text(code)  # the one allowed place
    (tmp_path / "cli.py").write_text("def main(args):\n    return 'joint' in views.VIEWS\n")
    assert _hand_made_stream_checks(tmp_path) == ["training/bad.py:2 parse", "training/bad.py:2 parse",
                                                  "cli.py:2 main"]
