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
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from crossclr_infer.errors import CrossclrError

if TYPE_CHECKING:
    from crossclr_infer.layouts import Layout
    from training.config import TrainConfig

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class Objective(ABC):
    """One pretraining method. Class attributes describe it; an instance holds one run's configuration."""

    name: ClassVar[str]  # the value of ``objective`` in a config that selects it
    augmentation: ClassVar[str]  # the augmentation ``augment = "auto"`` resolves to (training.augment)
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
        """The name of the stage an epoch (0-based) belongs to, logged with every record."""
        return self.name

    @abstractmethod
    def step(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor, *, stage: str, augment: Augment,
             generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One training step's outputs on the joint batch ``x`` (N, C, T, V, M): ``loss`` (backpropagated)
        and scalar metrics. ``y`` (labels) may only be used for metrics, never for the loss."""

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


def state_of(obj: Any) -> Any:
    """``obj`` without a DDP wrapper (the module whose state a checkpoint keeps)."""
    return getattr(obj, "module", obj)
