"""Speed machinery of the training steps: row-sparse gathers, a fused Adagrad-with-momentum update, and
a full-catalogue cross-entropy computed in row chunks.

None changes the arithmetic of the models; the first two make a GRU4Rec step touch only the item rows
it uses (the batch's inputs, targets and shared samples) instead of the whole catalogue, the third keeps
SASRec's (N, V) logits from being allocated, soft-maxed and freed whole every step.
"""

from __future__ import annotations

import threading

import torch


class RowGather(torch.autograd.Function):
    """weight[rows] for distinct sorted rows; backward writes a coalesced row-sparse gradient into weight.grad.

    Autograd's own accumulation would drop the "coalesced" flag and make the optimiser re-sort
    the rows every step, so the gradient is accumulated here (added when one already exists).
    """

    @staticmethod
    def forward(ctx, weight: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(rows)
        ctx.weight = weight
        return weight.index_select(0, rows)  # (R, D)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (rows,) = ctx.saved_tensors
        w = ctx.weight
        g = torch.sparse_coo_tensor(rows[None], grad.to(w.dtype), w.shape, is_coalesced=True, check_invariants=False)
        w.grad = g if w.grad is None else w.grad + g
        return None, None


def distinct_rows(items: torch.Tensor, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (sorted distinct items (R,), position of each item among them (N,)), like torch.unique."""
    if n_rows > 64 * len(items):  # large catalogue: sorting the few items is cheaper than a bitmap
        return torch.unique(items, return_inverse=True)
    seen = torch.zeros(n_rows, dtype=torch.bool, device=items.device).index_fill_(0, items, True)  # (V,)
    rows = seen.nonzero()[:, 0]  # (R,) sorted
    lookup = torch.empty(n_rows, dtype=torch.int64, device=items.device)
    lookup.index_copy_(0, rows, torch.arange(len(rows), device=items.device))  # (V,) row -> position
    return rows, lookup.index_select(0, items)


def gather_rows(weight: torch.Tensor, items: torch.Tensor, sparse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (rows (R, D), positions (N,)) with rows[positions] == weight[items]; row-sparse gradient with ``sparse``."""
    rows, inverse = distinct_rows(items, weight.shape[0])  # sorted distinct rows, (N,) positions
    return (RowGather.apply(weight, rows) if sparse else weight.index_select(0, rows)), inverse


class AdagradMomentum(torch.optim.Optimizer):
    """Adagrad whose scaled step feeds a momentum buffer (GRU4Rec's optimiser).

    acc += g²;  v = momentum·v + lr·g / sqrt(acc + eps);  p -= v.
    Sparse gradients (``F.embedding(..., sparse=True)``) update only the rows they touch:
    untouched rows keep their accumulator and velocity and do not move.
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, eps: float = 1e-6, weight_decay: float = 0.0):
        if lr <= 0 or momentum < 0 or eps <= 0 or weight_decay < 0:
            raise ValueError(f"AdagradMomentum: bad lr={lr}, momentum={momentum}, eps={eps}, weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, momentum=momentum, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        """Apply one update to every parameter with a gradient; return the closure's loss."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            dense = []
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if p.grad.is_sparse:  # accumulator and velocity side by side: one gather and one scatter per step
                    if "acc_vel" not in state:
                        state["acc_vel"] = torch.zeros((p.shape[0], 2, *p.shape[1:]), dtype=p.dtype, device=p.device)
                    sparse_update(p, p.grad, state["acc_vel"], group)
                else:
                    if "acc" not in state:
                        state["acc"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                        state["vel"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    dense.append(p)
            if dense:
                dense_update(dense, [p.grad for p in dense], [self.state[p]["acc"] for p in dense],
                             [self.state[p]["vel"] for p in dense], group)
        return loss


def dense_update(ps: list, grads: list, accs: list, vels: list, group: dict) -> None:
    """Update whole parameters in place, all at once (Adagrad step into momentum); returns nothing."""
    if group["weight_decay"]:
        grads = torch._foreach_add(grads, ps, alpha=group["weight_decay"])
    torch._foreach_addcmul_(accs, grads, grads)
    denoms = torch._foreach_add(accs, group["eps"])
    torch._foreach_sqrt_(denoms)
    if group["momentum"]:
        torch._foreach_mul_(vels, group["momentum"])
        torch._foreach_addcdiv_(vels, grads, denoms, value=group["lr"])
        torch._foreach_sub_(ps, vels)
    else:
        torch._foreach_addcdiv_(ps, grads, denoms, value=-group["lr"])


def sparse_update(p: torch.Tensor, g: torch.Tensor, acc_vel: torch.Tensor, group: dict) -> None:
    """Update only the rows of ``p`` named by a sparse gradient (duplicates summed); ``acc_vel`` is (V, 2, ...)."""
    g = g.coalesce()
    rows, values = g.indices()[0], g.values()  # (R,), (R, ...)
    if group["weight_decay"]:
        values = values.add(p.index_select(0, rows), alpha=group["weight_decay"])
    state = acc_vel.index_select(0, rows)  # (R, 2, ...) accumulator and velocity of the touched rows
    acc, vel = state[:, 0], state[:, 1]
    acc.addcmul_(values, values)
    step = (acc + group["eps"]).rsqrt_().mul_(values).mul_(group["lr"])  # (R, ...)
    if group["momentum"]:
        step = vel.mul_(group["momentum"]).add_(step)
    acc_vel.index_copy_(0, rows, state)
    p.index_add_(0, rows, step, alpha=-1.0)


# --------------------------------------------------------------------------- chunked full cross-entropy
CHUNK_ELEMENTS = 1 << 22  # logits per chunk: 16 MiB of float32, reused from step to step; 0: the whole matrix (reference)
_buffers = threading.local()  # one logits buffer per thread: models may train side by side in one process


def chunk_buffer(rows: int, cols: int, like: torch.Tensor) -> torch.Tensor:
    """Return a (rows, cols) float32 view of this thread's reusable buffer (grown when too small)."""
    buf = getattr(_buffers, "logits", None)
    if buf is None or buf.numel() < rows * cols or buf.device != like.device:
        buf = _buffers.logits = torch.empty(rows * cols, dtype=torch.float32, device=like.device)
    return buf[: rows * cols].view(rows, cols)


class ChunkedCrossEntropy(torch.autograd.Function):
    """Mean softmax cross-entropy of hidden (N, D) against every row of weight (V, D) but ``skip``, in row chunks.

    Each chunk's logits go into one reused buffer and turn into the chunk's softmax in place; when a
    gradient is wanted, the forward pass also writes (softmax - one-hot) / N there and folds it into
    the gradients of hidden and weight, so no (N, V) matrix is ever allocated and the backward pass
    only scales them. Equal to ``F.cross_entropy(hidden @ weight.T with column skip at -inf, targets)``.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, skip: int):
        n, v = len(hidden), len(weight)
        want_grad = any(ctx.needs_input_grad[:2])
        grad_h = torch.empty_like(hidden) if want_grad else None
        grad_w = torch.zeros_like(weight) if want_grad else None
        step = max(1, min(n, CHUNK_ELEMENTS // v))
        total = hidden.new_zeros((), dtype=torch.float64)
        for lo in range(0, n, step):
            h, y = hidden[lo: lo + step], targets[lo: lo + step]
            p = torch.mm(h, weight.T, out=chunk_buffer(len(h), v, hidden))  # (c, V) logits
            p[:, skip] = float("-inf")
            top = p.max(1).values  # (c,)
            picked = p.gather(1, y[:, None])[:, 0]  # (c,) the targets' logits
            mass = p.sub_(top[:, None]).exp_().sum(1)  # (c,), p now exp(logit - top)
            total += (mass.log() + top - picked).sum(dtype=torch.float64)
            if want_grad:
                p.mul_((1.0 / n) / mass[:, None])  # softmax / N
                p[torch.arange(len(y), device=y.device), y] -= 1.0 / n
                torch.mm(p, weight, out=grad_h[lo: lo + step])
                grad_w.addmm_(p.T, h)
        if want_grad:
            ctx.save_for_backward(grad_h, grad_w)
        return (total / n).to(hidden.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_out, grad_w * grad_out, None, None
