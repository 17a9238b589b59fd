"""Types of the lazily exported public names of ``crossclr_infer/__init__.py`` (keep the two in step)."""

from .errors import CrossclrError as CrossclrError
from .predictor import Predictor as Predictor
from .results import ClassScore as ClassScore
from .results import Prediction as Prediction
from .session import ModelInfo as ModelInfo
from .stream import Frame as Frame
from .stream import StreamPrediction as StreamPrediction
from .stream import StreamPredictor as StreamPredictor

__version__: str
__all__: list[str]
