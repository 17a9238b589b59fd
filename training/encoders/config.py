"""The ``[model]`` table of a configuration: one frozen ``EncoderConfig`` for every encoder kind.

``graph`` selects the kind through the encoder registry (``training.encoders.registry``; built in:
``spatial``/``flow``/``adaptive``: the ST-GCN, ``transformer``: MAMP's encoder); the kind's own fields are
documented beside them, and its own checks run from the registry (``EncoderKind.check``). The table stays one
dataclass so that configuration files and checkpoints keep their format.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from crossclr_infer.errors import CrossclrError
from training.encoders.registry import encoder_kind

PROJECTORS = ("mlp", "linear", "none")


@dataclass(frozen=True)
class EncoderConfig:
    """Encoder (the kind its ``graph`` selects) and projector. The defaults are the official CrosSCLR
    quarter-width ST-GCN."""

    graph: str = "spatial"  # a registered graph name: "spatial" (ST-GCN), "flow" (A*), "adaptive" (spatial
    # A + B + C, 2s-AGCN), "transformer" (MAMP); training.encoders.graph_names() lists them all
    base_channels: int = 16  # first-stage channels (official "hidden_channels"; ST-GCN full width = 64)
    hidden_dim: int = 256  # output channels of the last block = feature size of forward_features
    feature_dim: int = 128  # projector output size (the contrastive embedding)
    projector: str = "mlp"  # "mlp": Linear(h,h)-ReLU-Linear(h,f); "linear": Linear(h,f); "none": identity
    temporal_kernel: int = 9  # temporal convolution kernel (odd)
    dropout: float = 0.5  # dropout in blocks 1.. (block 0 never has dropout)
    stage_blocks: tuple[int, int, int] = (4, 3, 3)  # blocks per stage; stages 2 and 3 start with stride 2
    edge_importance: bool = True  # learnable (K, V, V) edge weights per block, initialised to ones
    max_hop: int = 1  # graph neighbourhood of the spatial partition
    embed_ratio: int = 4  # adaptive graph: theta/phi embeddings have out_channels // embed_ratio channels
    # transformer (graph = "transformer", MAMP encoder); hidden_dim is its width
    depth: int = 8  # encoder blocks
    num_heads: int = 8  # attention heads (hidden_dim must be divisible by it)
    mlp_ratio: float = 4.0  # MLP hidden size = mlp_ratio · hidden_dim
    t_patch: int = 4  # frames per token (the frame count must be divisible by it)
    drop_path: float = 0.0  # stochastic depth rate of the last block (linear in depth; MAMP pretraining: 0)

    def __post_init__(self) -> None:
        kind = encoder_kind(self)  # CrossclrError listing the registered graph names
        if self.projector not in PROJECTORS:
            raise CrossclrError(f"encoder config: projector {self.projector!r} is unknown; expected one of "
                                f"{PROJECTORS}")
        for name in ("base_channels", "hidden_dim", "feature_dim", "embed_ratio", "max_hop", "depth",
                     "num_heads", "t_patch"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise CrossclrError(f"encoder config: {name} must be a positive integer, got {v!r}")
        tk = self.temporal_kernel
        if not isinstance(tk, int) or tk < 1 or tk % 2 == 0:
            raise CrossclrError(f"encoder config: temporal_kernel must be an odd positive integer, got "
                                f"{self.temporal_kernel!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise CrossclrError(f"encoder config: dropout must be in [0, 1), got {self.dropout!r}")
        if not float(self.mlp_ratio) > 0 or not 0.0 <= float(self.drop_path) < 1.0:
            raise CrossclrError(f"encoder config: expected mlp_ratio > 0 and drop_path in [0, 1), got "
                                f"{self.mlp_ratio!r}, {self.drop_path!r}")
        sb = tuple(self.stage_blocks)
        if len(sb) != 3 or not all(isinstance(b, int) and b >= 1 for b in sb):
            raise CrossclrError(f"encoder config: stage_blocks must be three positive integers, got "
                                f"{self.stage_blocks!r}")
        object.__setattr__(self, "stage_blocks", sb)
        if kind.check is not None:
            kind.check(self)

    @property
    def kind(self) -> str:
        """The registered encoder kind its ``graph`` selects (``stgcn``, ``transformer``, ...)."""
        return encoder_kind(self).name

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stage_blocks"] = list(self.stage_blocks)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> EncoderConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise CrossclrError(f"encoder config: unknown keys {unknown}; expected some of {sorted(known)}")
        d = dict(d)
        if "stage_blocks" in d:
            d["stage_blocks"] = tuple(d["stage_blocks"])
        return cls(**d)

    def block_plan(self) -> list[tuple[int, int, int]]:
        """(out_channels, stride, residual_kind) per block; residual 0 none, 1 identity, 2 conv."""
        c = self.base_channels
        outs, strides = [], []
        for stage, n in enumerate(self.stage_blocks):
            for i in range(n):
                outs.append(c * 2 ** stage)
                strides.append(2 if (stage > 0 and i == 0) else 1)
        outs[-1] = self.hidden_dim
        return list(zip(outs, strides, strict=True))
