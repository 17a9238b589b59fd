"""Pretraining objectives: the interface and registry (``base``) and the registered objectives. Importing this
package registers ``crossclr`` (``crossclr.CrosSCLRObjective``) and ``mamp`` (``mamp.MAMPObjective``)."""

from training.objectives import crossclr, mamp  # noqa: F401 - registers the objectives
from training.objectives.base import (
    Augment,
    Objective,
    objective_class,
    objective_for,
    objective_names,
    register_objective,
    unregister_objective,
)

__all__ = ["Augment", "Objective", "objective_class", "objective_for", "objective_names",
           "register_objective", "unregister_objective"]
