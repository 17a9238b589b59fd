"""What a pretraining objective is, and the registry the trainer and checkpoints look objectives up in.

An objective is one class that owns everything a method adds to the loop (compare MoCo's builder, where the
method is one module that owns its queue, momentum encoder and logits): it builds its model from the
configuration, makes the views of a batch (its augmentation), computes the outputs of a step (``loss`` and
any metrics), names the stage of an epoch, and says under which state-dict prefixes its per-view encoders
live, so that a checkpoint's encoders can be read without knowing the method. The trainer runs the loop
(devices, DDP, bf16, resume, metrics) and asks the objective for the rest; it never compares objective names.

Adding an objective: one module with a subclass of ``Objective`` and a ``register_objective`` call, imported
by ``training/objectives/__init__.py`` (or by the caller, as the tests do with a toy objective).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, fields
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from crossclr_infer.errors import CrossclrError
from training.augment import AUGMENTATIONS

if TYPE_CHECKING:
    from crossclr_infer.layouts import Layout

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
# a ``training.config.TrainConfig``; not imported, because the configuration looks objectives up in this
# registry (validating ``objective`` and calling ``check_config``), and an import back would be a circle
TrainConfig = Any


class ObjectiveTable:
    """``to_dict``/``from_dict`` of an objective's own frozen dataclass table (``[ssl]``, ``[mamp]``); a
    subclass sets ``_LABEL``, the name its errors start with (``"ssl config"``)."""

    _LABEL = "config"

    def to_dict(self) -> dict:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: dict) -> Any:
        """The table from a plain dict; unknown keys refused in one line."""
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - known)
        if unknown:
            raise CrossclrError(f"{cls._LABEL}: unknown keys {unknown}; expected some of {sorted(known)}")
        return cls(**d)


class Objective(ABC):
    """One pretraining method. Class attributes describe it; an instance holds one run's configuration."""

    name: ClassVar[str]  # the value of ``objective`` in a config that selects it
    augmentation: ClassVar[str]  # the augmentation ``augment = "auto"`` resolves to: a key of
    # training.augment.AUGMENTATIONS
    # state-dict prefixes of the per-view encoder ModuleDicts: the first holds the encoders that evaluation
    # and export use (query encoders), a second (if any) the momentum/key encoders
    encoder_groups: ClassVar[tuple[str, ...]] = ("encoders",)

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg

    @classmethod
    def check_config(cls, cfg: TrainConfig) -> None:  # noqa: B027 - optional hook
        """Refuse (``CrossclrError``, one line naming the key) settings this objective cannot train with;
        nothing by default."""
        return None

    @abstractmethod
    def build_model(self, layout: Layout, *, num_person: int, in_channels: int, frames: int) -> nn.Module:
        """The model that trains (encoders per view in ``encoder_groups`` ModuleDicts, heads, queues)."""

    def stage(self, epoch: int) -> str:
        """The name of the stage an epoch (0-based) belongs to, logged with every record and passed to
        ``step``; the objective's name by default (one stage)."""
        return self.name

    @abstractmethod
    def step(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor, *, stage: str, augment: Augment,
             generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One training step's outputs on the joint batch ``x`` (N, C, T, V, M): ``loss`` (backpropagated)
        and scalar metrics. ``y`` (labels) may only be used for metrics, never for the loss. ``augment(x,
        generator)`` makes one view (the run's augmentation); every random draw comes from ``generator``,
        whose state a checkpoint keeps, so that a resumed run continues exactly. ``net`` is the model,
        DDP-wrapped when distributed (call it, don't reach into it for the forward)."""

    def encoders(self, model: nn.Module, group: int = 0) -> nn.ModuleDict:
        """The per-view encoders of ``model`` in ``encoder_groups[group]``."""
        return getattr(model, self.encoder_groups[group])

    def warnings(self) -> list[str]:
        """Advice about the configuration worth a log line at the start of a run (nothing by default)."""
        return []


_OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(cls: type[Objective]) -> type[Objective]:
    """Make ``cls`` selectable by ``objective = cls.name``; usable as a class decorator."""
    name = getattr(cls, "name", "")
    if not name or not isinstance(name, str):
        raise ValueError(f"objective class {cls.__name__} has no name")
    augmentation = getattr(cls, "augmentation", None)
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"objective class {cls.__name__}: augmentation {augmentation!r} is not one of "
                         f"training.augment.AUGMENTATIONS ({', '.join(AUGMENTATIONS)})")
    if name in _OBJECTIVES and _OBJECTIVES[name] is not cls:
        raise ValueError(f"objective {name!r} is already registered by {_OBJECTIVES[name].__name__}")
    _OBJECTIVES[name] = cls
    return cls


def unregister_objective(name: str) -> None:
    """Remove an objective (tests that register a toy one clean up with this)."""
    _OBJECTIVES.pop(name, None)


def objective_names() -> tuple[str, ...]:
    return tuple(_OBJECTIVES)


def objective_class(name: str) -> type[Objective]:
    """The registered objective ``name``; one line listing the known ones otherwise."""
    try:
        return _OBJECTIVES[name]
    except KeyError:
        known = ", ".join(_OBJECTIVES)
        raise CrossclrError(f"objective {name!r} is unknown; expected one of {known}") from None


def objective_for(cfg: TrainConfig) -> Objective:
    """The objective ``cfg.objective`` names, set up for the run ``cfg`` describes."""
    return objective_class(cfg.objective)(cfg)


def state_of(obj: Any) -> Any:
    """``obj`` without a DDP wrapper (the module whose state a checkpoint keeps)."""
    return getattr(obj, "module", obj)
