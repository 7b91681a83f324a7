"""spattn.attention as a PyTorch op on the GPU: its gradients against autograd through a
dense masked fp32 reference of the same (rounded) inputs, for patterns whose token
predicate is a mask written here independently; deterministic mode reproduces its bits;
torch.compile(fullgraph=True) traces through the op (forward and backward) without a
graph break. Exits 77 (ctest: skipped) without PyTorch or a CUDA GPU."""
import sys

try:
    import torch
except ImportError:
    print("skipped: PyTorch is not installed")
    sys.exit(77)
if not torch.cuda.is_available():
    print("skipped: no CUDA GPU")
    sys.exit(77)

import spattn  # noqa: E402

N, H, D = 320, 4, 64
TOL = {torch.bfloat16: 3e-2, torch.float16: 6e-3}


def masks(n):
    i = torch.arange(n, device="cuda").view(n, 1)
    j = torch.arange(n, device="cuda").view(1, n)
    return [
        ({"type": "dense", "causal": True}, j <= i),
        ({"type": "local_window", "left": 70, "right": 9}, (j >= i - 70) & (j <= i + 9)),
        ({"type": "local_window", "window": 64}, (i - j).abs() <= 32),
        ({"type": "global_local", "global": 16, "window": 64}, ((i - j).abs() <= 32) | (j < 16) | (i < 16)),
        ({"type": "strided", "stride": 8, "mode": "relative"}, ((i - j) % 8) == 0),
    ]


def reference(q, k, v, mask):
    """fp32 attention [B, N, H, D] with a boolean [N, N] mask, differentiable."""
    qt, kt, vt = (x.float().transpose(1, 2) for x in (q, k, v))
    s = (qt @ kt.transpose(-1, -2)) / D ** 0.5
    p = s.masked_fill(~mask, float("-inf")).softmax(-1)
    return (p @ vt).transpose(1, 2)


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


failures = []
gen = torch.Generator(device="cuda").manual_seed(7)
for dtype in (torch.bfloat16, torch.float16):
    for pattern, mask in masks(N):
        q, k, v, d_out = (torch.randn(2, N, H, D, device="cuda", generator=gen).to(dtype) for _ in range(4))
        leaves = [x.clone().requires_grad_() for x in (q, k, v)]
        out = spattn.attention(*leaves, pattern)
        out.backward(d_out)
        ref_leaves = [x.clone().requires_grad_() for x in (q, k, v)]
        ref = reference(*ref_leaves, mask)
        ref.backward(d_out.float())
        errs = {"out": rel(out, ref)}
        for name, a, b in zip(("dq", "dk", "dv"), leaves, ref_leaves):
            errs[name] = rel(a.grad, b.grad)
        bad = {kk: e for kk, e in errs.items() if not (e <= TOL[dtype])}
        print(f"{dtype} {pattern}: " + ", ".join(f"{kk} {e:.2e}" for kk, e in errs.items()))
        if bad:
            failures.append(f"{dtype} {pattern}: {bad} above {TOL[dtype]}")

# Deterministic mode: the same bits over repeated backward passes (GQA 2:1, so that two
# query heads meet on every KV row).
q = torch.randn(1, 700, 4, D, device="cuda", dtype=torch.bfloat16, generator=gen)
k, v = (torch.randn(1, 700, 2, D, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(2))
d_out = torch.randn_like(q)
grads = []
for _ in range(3):
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    spattn.attention(*leaves, {"type": "longnet", "segments": [128, 256], "rates": [1, 2]},
                     deterministic=True).backward(d_out)
    grads.append([x.grad for x in leaves])
for g in grads[1:]:
    if not all(torch.equal(a, b) for a, b in zip(g, grads[0])):
        failures.append("deterministic mode: gradients differ between runs")

# torch.compile traces through the op without a graph break, and runs the same kernels.
module = spattn.SparseAttention({"type": "local_window", "window": 64}, deterministic=True)


def loss_fn(q, k, v):
    return (module(q, k, v).float() ** 2).sum()


q, k, v = (torch.randn(1, N, H, D, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(3))
eager = [x.clone().requires_grad_() for x in (q, k, v)]
loss_fn(*eager).backward()
compiled = [x.clone().requires_grad_() for x in (q, k, v)]
torch.compile(loss_fn, fullgraph=True)(*compiled).backward()
for name, a, b in zip(("dq", "dk", "dv"), compiled, eager):
    if rel(a.grad, b.grad) > 1e-2:
        failures.append(f"torch.compile: {name} differs from eager ({rel(a.grad, b.grad):.2e})")

if failures:
    print("FAILED:\n  " + "\n  ".join(failures))
    sys.exit(1)
print("ok")
