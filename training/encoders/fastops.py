"""CPU fast paths of the ST-GCN block: the official operations' maps, computed with fewer passes and FLOPs.

``stgcn`` runs :func:`block_forward` for every block when the fast operations are on, the input is on
the CPU, autocast is off and nothing traces the model (ONNX export, TorchScript); otherwise it runs the
official operations one for one. Forward and backward equal the official operations within float rounding
(``tests/training/test_stgcn.py`` checks features, every gradient and the BatchNorm statistics in float64).

* **Temporal convolution of the wide blocks through DFTs** (:func:`temporal_conv_dft`). The last block
  (256 channels, 13 frames, kernel 9) holds ~65 % of the encoder's FLOPs. A circular convolution of length
  L = T + (kernel − 1)/2 equals the zero-padded one on the T output frames, so with real DFT matrices (GEMMs:
  T is small) the convolution becomes L // 2 + 1 complex channel products (four real GEMMs each) instead of
  T · kernel taps: 3.3× fewer multiply-adds at T = 13. Such blocks run in a (T, N·V, C) layout
  (:func:`block_forward_tmc`): the DFTs, the 1×1 convolutions and the graph sum are GEMMs and the batch norms
  see (rows, C) matrices, with no permute copies in between.
* **Channels-last blocks** (:func:`block_forward_nhwc`) elsewhere: the graph sum is a batched GEMM with the
  adjacency on the left (no permute copies around the einsum), batch norms and convolutions run in oneDNN's
  native layout.
* **Dropout mask from random bits** (:func:`keep_mask`): for p = 0.5, 64 entries from one 64-bit random word
  instead of one ``rand`` draw each (``bernoulli_`` was slower still); exactly Bernoulli(1 − p).
* **Dropout scale folded into the batch norm before it**; dropout, residual sum and ReLU in one ``addcmul``
  and an in-place ReLU: relu(BN(x)·m·s + r) = relu(addcmul(r, BN_{γs, βs}(x), m)), exact for p = 0.5 (s = 2).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

# the DFT temporal convolution serves stride-1 blocks with at least this many output channels and at most
# DFT_MAX_FRAMES input frames (64 channels measured no faster; tests lower it to exercise tiny encoders)
DFT_MIN_CHANNELS = 128
DFT_MAX_FRAMES = 64

_BITS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


# ------------------------------------------------------------------------------------------------ elementwise
def keep_mask(p: float, like: torch.Tensor) -> torch.Tensor:
    """Float {0, 1} mask shaped and laid out like ``like``, each entry 1 with probability exactly 1 − p, drawn
    from torch's default generator."""
    n = like.numel()
    if p == 0.5:
        words = torch.empty((n + 63) // 64, dtype=torch.int64, device=like.device).random_(-(2 ** 63), None)
        bits = torch.bitwise_and(words.view(torch.uint8)[:, None], _BITS.to(like.device))  # (n/8, 8)
        flat = bits.view(-1)[:n].bool().to(like.dtype)
    else:
        flat = torch.rand(n, device=like.device).ge_(p).to(like.dtype)
    if _dense(like):
        return flat.as_strided(like.shape, like.stride())
    return flat.view(like.shape)


def _dense(x: torch.Tensor) -> bool:
    """The strides are a permutation of contiguous ones (no gaps, no overlap)."""
    expected = 1
    for size, stride in sorted(zip(x.shape, x.stride(), strict=True), key=lambda d: d[1]):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``bn(x)·scale`` with the scale folded into the affine weights; running statistics and
    ``num_batches_tracked`` are updated as ``_BatchNorm.forward`` does. ``x``: any (N, C, ...) tensor."""
    eaf = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        eaf = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    use_batch = bn.training or (bn.running_mean is None and bn.running_var is None)
    keep_stats = not bn.training or bn.track_running_stats
    w, b = bn.weight, bn.bias
    if scale != 1.0:
        if w is None:
            w = torch.full((x.shape[1],), scale, dtype=x.dtype, device=x.device)
            b = torch.zeros_like(w)
        else:
            w, b = w * scale, b * scale
    return F.batch_norm(x, bn.running_mean if keep_stats else None, bn.running_var if keep_stats else None,
                        w, b, use_batch, eaf, bn.eps)


def _tail(blk: nn.Module, z: torch.Tensor, res: torch.Tensor | None,
          frames_batch_joints: tuple[int, int, int] | None = None) -> torch.Tensor:
    """relu(dropout(BN2(z)) + res) with the dropout scale folded into BN2 and mask·value + res in one addcmul.

    z, res: (N, C, T, V) tensors, or (T·N·V, C) rows when ``frames_batch_joints`` = (T, N, V) is given (the
    mask is then drawn through the (N, C, T, V) view of the same memory, indexed like the official tensor)."""
    bn2, drop = blk.tcn[3], blk.tcn[4]
    p = drop.p if drop.training else 0.0
    if p == 0.0:
        y = batch_norm(bn2, z)
        return torch.relu_(y if res is None else y + res)
    y = batch_norm(bn2, z, 1.0 / (1.0 - p))
    if frames_batch_joints is None:
        m = keep_mask(p, y)
    else:
        t, n, v = frames_batch_joints
        c = y.shape[1]
        m = keep_mask(p, y.view(t, n, v, c).permute(1, 3, 0, 2)).permute(2, 0, 3, 1).reshape(y.shape)
    return torch.relu_(torch.mul(y, m) if res is None else torch.addcmul(res, y, m))


# ------------------------------------------------------------------------------------------------ DFT conv
@functools.lru_cache(maxsize=64)
def _dft_matrices(t: int, k: int, stride: int, dtype: torch.dtype,
                  device: torch.device) -> tuple[torch.Tensor, ...]:
    """Real DFT matrices of the circular length L = t + (k − 1)/2 (no wrap-around reaches the t outputs),
    B = L // 2 + 1 frequency bins.

    forward re, im (B, t): x ↦ Σ_t x[t]·e^{−2πi f t / L};
    inverse re, im (t', B): output frames 0, stride, 2·stride, … of the real inverse transform (1/L, the bins
    other than 0 and L/2 doubled for their mirror images);
    kernel cos, sin (k, B): tap j sits at circular position (k − 1)/2 − j (cross-correlation, as in conv2d).
    """
    p = (k - 1) // 2
    length = t + p
    nb = length // 2 + 1
    f = torch.arange(nb, dtype=torch.float64)
    ang = 2 * math.pi * f[:, None] * torch.arange(t, dtype=torch.float64)[None, :] / length  # (B, t)
    weight = torch.full((nb,), 2.0, dtype=torch.float64)
    weight[0] = 1.0
    if length % 2 == 0:
        weight[-1] = 1.0  # the Nyquist bin has no mirror image
    t_out = torch.arange(0, t, stride, dtype=torch.float64)
    ang_i = 2 * math.pi * t_out[:, None] * f[None, :] / length  # (t', B)
    ang_k = -2 * math.pi * f[None, :] * (p - torch.arange(k, dtype=torch.float64))[:, None] / length  # (k, B)
    mats = (torch.cos(ang), -torch.sin(ang), weight * torch.cos(ang_i) / length,
            -weight * torch.sin(ang_i) / length, torch.cos(ang_k), torch.sin(ang_k))
    return tuple(m.to(dtype=dtype, device=device).contiguous() for m in mats)


class _SpectralProduct(torch.autograd.Function):
    """For every frequency bin, the complex channel product Y = X · Gᵀ as four real batched GEMMs:
    Y_re = X_re·G_reᵀ − X_im·G_imᵀ, Y_im = X_re·G_imᵀ + X_im·G_reᵀ.
    X_re, X_im (B, M, C), G_re, G_im (B, O, C) -> Y_re, Y_im (B, M, O).

    Batched over the bins (one GEMM call each, not one per bin): on a 2-core machine shared with other jobs,
    every GEMM call is a parallel region that can stall for a time slice; a loop of 36 calls per forward
    measured 3× slower than these four there (and 8 % faster on one idle thread)."""

    @staticmethod
    def forward(ctx, x_re: torch.Tensor, x_im: torch.Tensor, g_re: torch.Tensor,
                g_im: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gr, gi = g_re.transpose(1, 2), g_im.transpose(1, 2)
        y_re = torch.bmm(x_re, gr).baddbmm_(x_im, gi, alpha=-1)
        y_im = torch.bmm(x_re, gi).baddbmm_(x_im, gr)
        ctx.save_for_backward(x_re, x_im, g_re, g_im)
        return y_re, y_im

    @staticmethod
    def backward(ctx, gy_re: torch.Tensor, gy_im: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x_re, x_im, g_re, g_im = ctx.saved_tensors
        gx_re = gx_im = gg_re = gg_im = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            gx_re = torch.bmm(gy_re, g_re).baddbmm_(gy_im, g_im)
            gx_im = torch.bmm(gy_im, g_re).baddbmm_(gy_re, g_im, alpha=-1)
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            yr, yi = gy_re.transpose(1, 2), gy_im.transpose(1, 2)
            gg_re = torch.bmm(yr, x_re).baddbmm_(yi, x_im)
            gg_im = torch.bmm(yi, x_re).baddbmm_(yr, x_im, alpha=-1)
        return gx_re, gx_im, gg_re, gg_im


def temporal_conv_dft(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      stride: int = 1) -> torch.Tensor:
    """``conv2d(weight (O, C, k, 1), stride (stride, 1), padding ((k − 1)/2, 0))`` on a (T, M, C) tensor
    (M = batch · joints, channels innermost), through real DFT matrices. Returns (T', M, O)."""
    t, m, c = z.shape
    o, _, k, _ = weight.shape
    fwd_re, fwd_im, inv_re, inv_im, cos_k, sin_k = _dft_matrices(t, k, stride, z.dtype, z.device)
    nb = cos_k.shape[1]
    z2 = z.reshape(t, m * c)
    x_re = torch.mm(fwd_re, z2).view(nb, m, c)  # (B, M, C): spectrum of every (row, channel) series
    x_im = torch.mm(fwd_im, z2).view(nb, m, c)
    w = weight.reshape(o, c, k)
    g_re = torch.einsum("ocj,jf->foc", w, cos_k)  # (B, O, C): the kernel's spectrum
    g_im = torch.einsum("ocj,jf->foc", w, sin_k)
    y_re, y_im = _SpectralProduct.apply(x_re, x_im, g_re, g_im)  # (B, M, O) each
    if bias is None:
        y = torch.mm(inv_re, y_re.view(nb, m * o))
    else:
        y = torch.addmm(bias.view(1, o).expand(m, o).reshape(1, m * o), inv_re, y_re.view(nb, m * o))
    return y.addmm_(inv_im, y_im.view(nb, m * o)).view(-1, m, o)  # (T', M, O)


def use_dft(blk: nn.Module, x: torch.Tensor) -> bool:
    conv = blk.tcn[2]
    return (not blk.gcn.adaptive and conv.stride[0] == 1 and conv.out_channels >= DFT_MIN_CHANNELS
            and x.shape[2] <= DFT_MAX_FRAMES and x.dtype in (torch.float32, torch.float64))


def block_forward_tmc(blk: nn.Module, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """The whole block in a (T, N·V, C) layout: graph sum and 1×1 convolutions as GEMMs, batch norms over 2-D
    (rows, C) views, the temporal convolution through DFTs. x: (N, C, T, V), any strides; returns an
    (N, C_out, T', V)-shaped view of a (T', N, V, C_out) tensor."""
    n, c_in, t, v = x.shape
    gcn = blk.gcn
    k, c_out = gcn.k, gcn.out_channels
    xt = x.permute(2, 0, 3, 1).contiguous()  # (N, C, T, V) -> (T, N, V, C)
    rows = t * n * v
    if c_in < c_out:  # graph sum first (K·C_in < K·C_out channels through the graph)
        awk = a.permute(2, 0, 1).reshape(v * k, v)  # (W·K, V), row (w, k) = A_k[:, w]
        xa = torch.bmm(awk.expand(t * n, v * k, v), xt.view(t * n, v, c_in))  # (T·N, W·K, C)
        wkc = gcn.conv.weight.view(k, c_out, c_in).permute(0, 2, 1).reshape(k * c_in, c_out)  # ((k, c), O)
        y = torch.mm(xa.view(rows, k * c_in), wkc).view(t * n, v, c_out)
        if gcn.conv.bias is not None:
            y = y + torch.einsum("ko,kw->wo", gcn.conv.bias.view(k, c_out), a.sum(dim=1))  # (W, O)
    else:
        z = F.linear(xt.view(rows, c_in), gcn.conv.weight.view(k * c_out, c_in), gcn.conv.bias)
        avk = a.permute(2, 1, 0).reshape(v, v * k)  # (W, V·K), column (v, k) = A_k[v, w]
        y = torch.bmm(avk.expand(t * n, v, v * k), z.view(t * n, v * k, c_out))  # (T·N, W, O)
    y = torch.relu_(batch_norm(blk.tcn[0], y.view(rows, c_out)))
    conv = blk.tcn[2]
    stride = conv.stride[0]
    y = temporal_conv_dft(y.view(t, n * v, c_out), conv.weight, conv.bias, stride)  # (T', N·V, O)
    t_out = y.shape[0]
    res = None
    if blk.residual_kind == 1:
        res = xt.view(rows, c_in)
    elif blk.residual_kind == 2:
        rc = blk.residual[0]
        xs = xt[::stride].reshape(t_out * n * v, c_in)
        res = batch_norm(blk.residual[1], F.linear(xs, rc.weight.view(c_out, c_in), rc.bias))
    out = _tail(blk, y.view(t_out * n * v, c_out), res, (t_out, n, v))
    return out.view(t_out, n, v, c_out).permute(1, 3, 0, 2)  # (N, O, T', V) view


def mean_frames_joints(x: torch.Tensor) -> torch.Tensor:
    """(N, C, T, V) -> (N, C) mean over frames and joints, reduced in memory order for the layouts of the fast
    blocks (a strided mean over a permuted view measured 15× slower)."""
    n, c, t, v = x.shape
    if x.permute(2, 0, 3, 1).is_contiguous():  # (T, N, V, C) memory
        return x.permute(2, 0, 3, 1).sum(dim=0).sum(dim=1) / (t * v)
    if x.permute(0, 2, 3, 1).is_contiguous():  # channels last
        return x.permute(0, 2, 3, 1).reshape(n, t * v, c).sum(dim=1) / (t * v)
    return x.mean(dim=(2, 3))


# ------------------------------------------------------------------------------------------------ NHWC block
def _graph_conv_nhwc(gcn: nn.Module, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """GraphConv on a channels-last (N, C, T, V) tensor (memory (N, T, V, C)); returns channels-last."""
    n, c_in, t, v = x.shape
    k, c_out = gcn.k, gcn.out_channels
    xp = x.permute(0, 2, 3, 1)  # (N, T, V, C) contiguous
    if c_in < c_out:
        # graph sum first: xa[n, t, w, k, c] = Σ_v A[k, v, w] x[n, t, v, c], then the 1×1 conv over (k, c)
        awk = a.permute(2, 0, 1).reshape(v * k, v)  # (W·K, V), row (w, k) = A_k[:, w]
        xa = torch.bmm(awk.expand(n * t, v * k, v), xp.reshape(n * t, v, c_in))  # (N·T, W·K, C)
        w = gcn.conv.weight.view(k, c_out, c_in).permute(0, 2, 1).reshape(k * c_in, c_out)  # ((k, c), O)
        y = torch.mm(xa.view(n * t * v, k * c_in), w).view(n * t, v, c_out)
        if gcn.conv.bias is not None:
            bias = torch.einsum("ko,kw->wo", gcn.conv.bias.view(k, c_out), a.sum(dim=1))  # (W, O)
            y = y + bias
    else:
        z = gcn.conv(x)  # channels-last (N, K·O, T, V): memory (N, T, V, K, O)
        avk = a.permute(2, 1, 0).reshape(v, v * k)  # (W, V·K), column (v, k) = A_k[v, w]
        zp = z.permute(0, 2, 3, 1).reshape(n * t, v * k, c_out)  # (N·T, V·K, O), no copy
        y = torch.bmm(avk.expand(n * t, v, v * k), zp)  # (N·T, W, O)
    return y.view(n, t, v, c_out).permute(0, 3, 1, 2)  # channels-last (N, O, T, W)


def block_forward_nhwc(blk: nn.Module, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """The block on channels-last tensors: no permute copies around the graph product, batch norms and
    convolutions in oneDNN's native layout. Returns channels-last (N, C_out, T', V)."""
    x = x.contiguous(memory_format=torch.channels_last)
    y = blk.gcn(x, a) if blk.gcn.adaptive else _graph_conv_nhwc(blk.gcn, x, a)
    y = torch.relu_(batch_norm(blk.tcn[0], y))
    y = blk.tcn[2](y)
    res = None
    if blk.residual_kind == 1:
        res = x
    elif blk.residual_kind == 2:
        res = _residual_nhwc(blk.residual, x)
    return _tail(blk, y, res)


def _residual_nhwc(residual: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The conv residual (1×1 convolution with temporal stride, then BN) of a channels-last x, as a GEMM over
    the kept frames: the same map. oneDNN's own strided 1×1 channels-last convolution corrupts the heap in
    its backward pass under AVX2 kernels with few channels (torch 2.13, 4 → 8 channels, reproduced with
    ``ONEDNN_MAX_CPU_ISA=AVX2``; 64 → 128 was fine), which AVX2-only CPUs would run natively."""
    conv, bn = residual[0], residual[1]
    xs = x.permute(0, 2, 3, 1)[:, ::conv.stride[0]]  # (N, T', V, C_in) view of the channels-last memory
    y = F.linear(xs, conv.weight.view(conv.out_channels, conv.in_channels), conv.bias)  # (N, T', V, C_out)
    return batch_norm(bn, y.permute(0, 3, 1, 2))  # channels-last (N, C_out, T', V)


def block_forward(blk: nn.Module, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    if use_dft(blk, x):
        return block_forward_tmc(blk, x, a)
    return block_forward_nhwc(blk, x, a)
