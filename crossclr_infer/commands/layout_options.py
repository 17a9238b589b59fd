"""The ``--fill`` / ``--fill-missing`` options of layout mapping (``prepare arrays --to-layout``, ``predict
--from-layout``; ``crossclr_infer.layout_map``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from ..errors import CrossclrError
from ..layout_map import LayoutMap, input_mapping, parse_fill
from ..layouts import Layout

F = TypeVar("F", bound=Callable[..., Any])

_FILL = click.option(
    "--fill", "fill", multiple=True, metavar="JOINT=SOURCE[+SOURCE]",
    help="Layout mapping: fill the target joint JOINT from the source joint SOURCE, or the mean of several "
         "(e.g. spine_base=hip_left+hip_right); repeatable.")
_FILL_MISSING = click.option(
    "--fill-missing", is_flag=True,
    help="Layout mapping: fill each target joint the source lacks (and no --fill names) from its nearest "
         "mapped parent joint (off by default: such a mapping is refused).")


def fill_options(f: F) -> F:
    """--fill and --fill-missing, in one decorator."""
    return _FILL(_FILL_MISSING(f))


def input_layout_map(model_layout: Layout, from_layout: str | None, fill: tuple[str, ...], fill_missing: bool,
                     preprocessed: bool) -> LayoutMap | None:
    """``predict --from-layout``: the map from the inputs' layout to the model's
    (``layout_map.input_mapping``; None without it, or when they are the same); --preprocessed arrays cannot
    be mapped."""
    if from_layout is not None and preprocessed:
        raise CrossclrError("--from-layout maps raw inputs; --preprocessed arrays are in the model's layout "
                            "already")
    return input_mapping(from_layout, model_layout, fill=parse_fill(fill), fill_missing=fill_missing,
                         cli=True)
