"""ST-GCN encoder (Yan et al. 2018) at the width CrosSCLR uses, with spatial / flow / adaptive graphs.

Submodule names follow the official code (``data_bn``, ``st_gcn_networks.i.gcn.conv``,
``st_gcn_networks.i.tcn.*``, ``st_gcn_networks.i.residual.*``, ``edge_importance.i``, ``fc``) so that
official checkpoints map onto this module without renaming (see ``training.importers.crossclr``).

Einsum letters: n batch (·bodies), k spatial partition, c channels, t frames, v/w joints.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import training.encoders.fastops as fastops
from crossclr_infer.graph import partition
from crossclr_infer.layouts import Layout
from training.encoders.config import EncoderConfig
from training.encoders.heads import ProjectedEncoder, projector_head  # projector_head: re-exported, old path
from training.encoders.registry import EncoderKind, register_encoder

_FAST_OPS = True


def set_fast_ops(enabled: bool) -> None:
    """Switch the CPU fast paths on or off (``training.encoders.fastops``: channels-last blocks, DFT temporal
    convolution of the wide blocks, graph sum before the 1×1 conv when C_in < C_out, dropout mask from random
    bits with its scale folded into the batch norm). Off runs the official operations one for one; the
    results are equal either way within float rounding (tested, forward and backward), and
    ``benchmarks/bench_train.py`` uses the switch to measure the official step as its baseline."""
    global _FAST_OPS
    _FAST_OPS = enabled


def _fast_block_path(x: torch.Tensor) -> bool:
    """The fused CPU block (``fastops.block_forward``) applies: fast ops on, CPU, no autocast, not traced."""
    return (_FAST_OPS and x.device.type == "cpu" and not torch.is_autocast_enabled("cpu")
            and not torch.jit.is_scripting() and not torch.jit.is_tracing()
            and not torch.onnx.is_in_onnx_export())


class GraphConv(nn.Module):
    """1×1 conv to K·C channels, then ``einsum('nkctv,kvw->nctw')`` with the (K, V, V) adjacency.

    Adaptive graphs add a learnable ``B`` (zeros) and a per-sample ``C_k = softmax_v(θ_k(x)ᵀ φ_k(x))``.
    """

    def __init__(self, in_channels: int, out_channels: int, num_subsets: int, num_joints: int,
                 adaptive: bool, embed_channels: int) -> None:
        super().__init__()
        self.k = num_subsets
        self.out_channels = out_channels
        self.adaptive = adaptive
        self.conv = nn.Conv2d(in_channels, out_channels * num_subsets, kernel_size=1)
        if adaptive:
            self.embed_channels = embed_channels
            self.B = nn.Parameter(torch.zeros(num_subsets, num_joints, num_joints))
            self.theta = nn.Conv2d(in_channels, embed_channels * num_subsets, kernel_size=1)
            self.phi = nn.Conv2d(in_channels, embed_channels * num_subsets, kernel_size=1)

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        n, c_in, t, v = x.shape
        if _FAST_OPS and not self.adaptive and c_in < self.out_channels:
            return self._aggregate_first(x, a)
        y = self.conv(x).view(n, self.k, self.out_channels, t, v)  # (N, K·C, T, V) -> (N, K, C, T, V)
        if not self.adaptive:
            return torch.einsum("nkctv,kvw->nctw", y, a)
        e = self.embed_channels
        th = self.theta(x).view(n, self.k, e, t, v)  # (N, K·E, T, V) -> (N, K, E, T, V)
        ph = self.phi(x).view(n, self.k, e, t, v)
        scores = torch.einsum("nketv,nketw->nkvw", th, ph) / (e * t)  # scaled by E·T as in 2s-AGCN
        c = torch.softmax(scores, dim=-2)  # normalized over the joint that sends (v), like A·D⁻¹
        adj = (a + self.B).unsqueeze(0) + c  # (N, K, V, V)
        return torch.einsum("nkctv,nkvw->nctw", y, adj)


    def _aggregate_first(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """The same linear map with the graph sum before the 1×1 conv: cheaper when C_in < C_out (the graph
        product then runs on K·C_in instead of K·C_out channels). Weights keep the official layout:
        out = Σ_k W_k (x A_k) + Σ_k b_k (1ᵀA_k)."""
        n, c_in, t, v = x.shape
        k, c_out = self.k, self.out_channels
        # (N, Cin, T, V) @ (V, K·W) -> (N, Cin, T, K·W)
        xa = torch.matmul(x, a.permute(1, 0, 2).reshape(v, k * v))
        # (N, Cin, T, K, W) -> (N, K, Cin, T, W) -> (N, K·Cin, T, W)
        xa = xa.view(n, c_in, t, k, v).permute(0, 3, 1, 2, 4).reshape(n, k * c_in, t, v)
        w = self.conv.weight.view(k, c_out, c_in).permute(1, 0, 2).reshape(c_out, k * c_in)
        y = torch.matmul(w, xa.view(n, k * c_in, t * v)).view(n, c_out, t, v)  # the 1×1 conv: (N, Cout, T, W)
        if self.conv.bias is not None:
            bias = torch.einsum("kc,kw->cw", self.conv.bias.view(k, c_out), a.sum(dim=1))  # (Cout, W)
            y = y + bias[:, None, :]
        return y


class Dropout(nn.Module):
    """Inverted dropout, same distribution as ``nn.Dropout``; on CPU the mask comes from random bits or
    ``rand`` (``fastops.keep_mask``): ``bernoulli_`` measured 3–5× slower there (8 % of a CPU training step).
    The fast blocks (``fastops``) read ``p`` from this module and fuse the dropout into the residual sum."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu" or not _FAST_OPS:
            return F.dropout(x, self.p, training=True)
        return x * fastops.keep_mask(self.p, x) * (1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class STGCNBlock(nn.Module):
    """gcn -> BN-ReLU-conv(kt×1, stride)-BN-Dropout, plus residual, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, num_subsets: int, num_joints: int, *,
                 temporal_kernel: int, stride: int, dropout: float, residual: bool, adaptive: bool,
                 embed_ratio: int) -> None:
        super().__init__()
        self.gcn = GraphConv(in_channels, out_channels, num_subsets, num_joints, adaptive,
                             max(1, out_channels // embed_ratio))
        pad = (temporal_kernel - 1) // 2
        self.tcn = nn.Sequential(
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, (temporal_kernel, 1), (stride, 1), (pad, 0)),
            nn.BatchNorm2d(out_channels),
            Dropout(dropout),
        )
        self.residual_kind = 0 if not residual else (1 if in_channels == out_channels and stride == 1 else 2)
        if self.residual_kind == 2:
            self.residual = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=(stride, 1)),
                nn.BatchNorm2d(out_channels),
            )
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        if _fast_block_path(x):
            return fastops.block_forward(self, x, a)
        y = self.tcn(self.gcn(x, a))
        if self.residual_kind == 1:
            y = y + x
        elif self.residual_kind == 2:
            y = y + self.residual(x)
        return self.relu(y)


class STGCN(ProjectedEncoder, nn.Module):
    """ST-GCN encoder over (N, C, T, V, M) skeletons.

    ``forward_features`` -> (N, hidden_dim) (mean over frames, joints, then bodies);
    ``forward_head`` -> the projector output (N, feature_dim) (identity when ``projector="none"``).
    """

    kind = "stgcn"  # the registered encoder kind (training.encoders)

    def __init__(self, layout: Layout, cfg: EncoderConfig | None = None, num_person: int = 2,
                 in_channels: int = 3) -> None:
        super().__init__()
        cfg = cfg or EncoderConfig()
        self.cfg = cfg
        self.layout = layout
        self.num_person = num_person
        self.in_channels = in_channels
        strategy = "spatial" if cfg.graph == "adaptive" else cfg.graph
        a = torch.from_numpy(partition(layout, strategy, cfg.max_hop))  # (K, V, V)
        self.register_buffer("A", a)
        k, v = a.shape[0], a.shape[1]
        self.data_bn = nn.BatchNorm1d(in_channels * v)  # channel index v·C + c, shared by all bodies
        blocks = []
        c_in = in_channels
        for i, (c_out, stride) in enumerate(cfg.block_plan()):
            blocks.append(STGCNBlock(c_in, c_out, k, v, temporal_kernel=cfg.temporal_kernel, stride=stride,
                                     dropout=0.0 if i == 0 else cfg.dropout, residual=i > 0,
                                     adaptive=cfg.graph == "adaptive", embed_ratio=cfg.embed_ratio))
            c_in = c_out
        self.st_gcn_networks = nn.ModuleList(blocks)
        if cfg.edge_importance:
            self.edge_importance = nn.ParameterList([nn.Parameter(torch.ones(k, v, v)) for _ in blocks])
        else:
            self.edge_importance = None
        self.fc = projector_head(cfg)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        n, c, t, v, m = x.shape
        x = x.permute(0, 4, 3, 1, 2).reshape(n * m, v * c, t)  # (N, C, T, V, M) -> (N·M, V·C, T)
        x = self.data_bn(x)
        if _fast_block_path(x):  # channels last, the layout of the fast blocks: memory (N·M, T, V, C)
            x = x.view(n, m, v, c, t).permute(0, 1, 4, 2, 3).reshape(n * m, t, v, c).permute(0, 3, 1, 2)
        else:
            x = x.view(n, m, v, c, t).permute(0, 1, 3, 4, 2).reshape(n * m, c, t, v)  # -> (N·M, C, T, V)
        for i, block in enumerate(self.st_gcn_networks):
            a = self.A if self.edge_importance is None else self.A * self.edge_importance[i]
            x = block(x, a)
        x = fastops.mean_frames_joints(x)  # (N·M, hidden, T', V) -> (N·M, hidden)
        return x.view(n, m, -1).mean(dim=1)  # (N·M, hidden) -> (N, hidden)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_stgcn(layout: Layout, cfg: EncoderConfig, *, num_person: int, in_channels: int,
                frames: int) -> STGCN:
    """The registry's constructor; the ST-GCN pools over time, so it does not depend on ``frames``."""
    return STGCN(layout, cfg, num_person=num_person, in_channels=in_channels)


register_encoder(EncoderKind(name=STGCN.kind, graphs=("spatial", "flow", "adaptive"), build=build_stgcn))

__all__ = ["STGCN", "build_stgcn", "count_parameters", "projector_head", "set_fast_ops"]
