"""Small self-supervised units: memory queue, momentum update, InfoNCE, top-k mining, cross-view loss.

Shapes: N batch, D embedding size, K queue size. Similarities are plain dot products of L2-normalised
vectors; every loss is computed in fp32 whatever the autocast state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from crossclr_infer.errors import CrossclrError

CROSS_LOSSES = ("official", "seed")
MINING_SOURCES = ("other", "fused")  # mine on the partner view's similarities, or on the mean over all views


def _distributed_world() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


@torch.no_grad()
def gather_across_processes(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` from every process along axis 0 (rank order); identity for a single process.

    All-gather carries no gradient: use it for keys only.
    """
    world = _distributed_world()
    if world == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(world)]
    torch.distributed.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=0)


class MemoryQueue(nn.Module):
    """Index-aligned FIFO queues of keys, one per view, with one shared pointer and an optional label queue.

    Buffers: ``keys_<view>`` (K, D) fp32 (random unit vectors at start), ``labels`` (K,) int64
    (−1 = unknown), ``ptr`` () int64. ``enqueue`` writes a batch at the pointer with wraparound
    (any batch size; a batch larger than K keeps its last K rows) and advances the pointer by the batch.
    """

    def __init__(self, views: tuple[str, ...] | list[str], dim: int, size: int) -> None:
        super().__init__()
        if size < 1:
            raise CrossclrError(f"memory queue: size must be ≥ 1, got {size}")
        self.views = tuple(views)
        self.size = size
        self.dim = dim
        for v in self.views:
            self.register_buffer(f"keys_{v}", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    def keys(self, view: str) -> torch.Tensor:
        return getattr(self, f"keys_{view}")

    @torch.no_grad()
    def enqueue(self, keys: dict[str, torch.Tensor], labels: torch.Tensor | None = None,
                gather: bool = True) -> None:
        """Write ``keys[view]`` (N, D) for every view (and ``labels`` (N,), −1 when None) at the pointer."""
        if set(keys) != set(self.views):
            raise CrossclrError(f"memory queue: got keys for {sorted(keys)}, expected {sorted(self.views)}")
        n = next(iter(keys.values())).shape[0]
        if labels is None:
            labels = torch.full((n,), -1, dtype=torch.long, device=self.labels.device)
        batch = {v: keys[v].detach().to(self.keys(v).dtype) for v in self.views}
        labels = labels.detach().to(device=self.labels.device, dtype=torch.long)
        if gather:
            batch = {v: gather_across_processes(b) for v, b in batch.items()}
            labels = gather_across_processes(labels)
        n = labels.shape[0]
        ptr = self.ptr
        if n > self.size:  # only the last K rows survive; they land where a sequential write would put them
            ptr = (ptr + (n - self.size)) % self.size
            batch = {v: b[n - self.size:] for v, b in batch.items()}
            labels = labels[n - self.size:]
            n_kept = self.size
        else:
            n_kept = n
        idx = (ptr + torch.arange(n_kept, device=self.labels.device)) % self.size
        for v in self.views:
            self.keys(v).index_copy_(0, idx, batch[v])
        self.labels.index_copy_(0, idx, labels)
        self.ptr.copy_((ptr + n_kept) % self.size)


@torch.no_grad()
def momentum_update(target: nn.Module, source: nn.Module, momentum: float) -> None:
    """EMA of parameters: θ_target ← m·θ_target + (1 − m)·θ_source (buffers untouched, as in MoCo)."""
    tp = list(target.parameters())
    sp = list(source.parameters())
    if len(tp) != len(sp):
        raise CrossclrError(f"momentum update: {len(tp)} target parameters vs {len(sp)} source parameters")
    for t, s in zip(tp, sp, strict=True):
        t.mul_(momentum).add_(s.detach().to(t.dtype), alpha=1.0 - momentum)


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo InfoNCE: logits [q·k, q·queueᵀ] / T (N, 1 + K), the key is the positive; mean over N."""
    q, k, queue = q.float(), k.float(), queue.float()
    l_pos = (q * k).sum(dim=1, keepdim=True)  # (N, 1)
    l_neg = q @ queue.t()  # (N, K)
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature  # (N, 1 + K)
    return -F.log_softmax(logits, dim=1)[:, 0].mean()


def topk_positive_mask(similarity: torch.Tensor, k: int, threshold: float = -1.0) -> torch.Tensor:
    """(N, K) float mask with 1 at the ``k`` largest similarities of each row that are also ≥ ``threshold``
    (the default −1 keeps all k: cosine similarities are ≥ −1)."""
    if not 1 <= k <= similarity.shape[1]:
        raise CrossclrError(f"top-k mining: k = {k} must be in 1..{similarity.shape[1]} (the queue size)")
    sim = similarity.detach()
    idx = sim.topk(k, dim=1).indices
    mask = torch.zeros_like(similarity, dtype=torch.float32).scatter_(1, idx, 1.0)
    if threshold > -1.0:
        mask = mask * (sim >= threshold).float()
    return mask


def cross_view_loss(l_pos: torch.Tensor, l_neg: torch.Tensor, l_neg_other: torch.Tensor, *,
                    temperature: float, topk: int = 1, form: str = "official",
                    context: bool = True, threshold: float = -1.0,
                    mining_similarity: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-view consistency loss of view u guided by view v (CrosSCLR CVC-KM).

    Args:
        l_pos: (N,) q_u·k_u.  l_neg: (N, K) q_u·queue_uᵀ.  l_neg_other: (N, K) q_v·queue_vᵀ (not detached:
            the context block carries gradient into view v, as in the official code).
    Logits (N, 1 + 2K) = [l_pos, l_neg, l_neg ⊙ l_neg_other] / T (without the context block when
    ``context=False``); positives = column 0 plus the top-k queue entries by ``l_neg_other`` (or by
    ``mining_similarity`` (N, K) when given, e.g. the mean over all views) whose similarity is
    ≥ ``threshold``, marked in both blocks. ``form="official"``: mean over samples of the mean of −log p
    over the positive columns;
    ``form="seed"``: mean over samples of −log of the summed positive probability.
    """
    if form not in CROSS_LOSSES:
        raise CrossclrError(f"cross-view loss: form {form!r} is unknown; expected one of {CROSS_LOSSES}")
    l_pos, l_neg, l_neg_other = l_pos.float(), l_neg.float(), l_neg_other.float()
    mine_on = l_neg_other if mining_similarity is None else mining_similarity.float()
    mined = topk_positive_mask(mine_on, topk, threshold)  # (N, K)
    ones = torch.ones_like(l_pos).unsqueeze(1)  # (N, 1)
    if context:
        logits = torch.cat([l_pos.unsqueeze(1), l_neg, l_neg * l_neg_other], dim=1) / temperature
        mask = torch.cat([ones, mined, mined], dim=1)  # (N, 1 + 2K)
    else:
        logits = torch.cat([l_pos.unsqueeze(1), l_neg], dim=1) / temperature
        mask = torch.cat([ones, mined], dim=1)  # (N, 1 + K)
    log_p = F.log_softmax(logits, dim=1)
    if form == "official":
        return (-(log_p * mask).sum(dim=1) / mask.sum(dim=1)).mean()
    pos_log_mass = torch.logsumexp(log_p.masked_fill(mask == 0, float("-inf")), dim=1)
    return (-pos_log_mass).mean()


def mining_precision(similarity: torch.Tensor, queue_labels: torch.Tensor, labels: torch.Tensor,
                     k: int, threshold: float = -1.0) -> torch.Tensor:
    """Share of the mined queue entries (top-k by ``similarity`` (N, K), ≥ ``threshold``) whose label equals
    the anchor's.

    Queue entries with an unknown label (−1) are not counted; NaN when none is known.
    """
    mined = topk_positive_mask(similarity, k, threshold).bool()  # (N, K)
    known = mined & (queue_labels >= 0).view(1, -1)
    hits = known & (queue_labels.view(1, -1) == labels.view(-1, 1))
    total = known.sum().float()
    nan = torch.full_like(total, float("nan"))
    return torch.where(total > 0, hits.sum().float() / total.clamp(min=1.0), nan)
