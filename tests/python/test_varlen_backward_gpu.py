"""Gradients over documents through the Python wrapper on the GPU: spattn.attention_varlen
(packed documents) and spattn.attention with padding (key_padding_mask, seqused_k /
seqused_q) differentiated by autograd, against autograd through an fp32 torch reference
that runs each document alone with the pattern's mask written here (dense, causal aligned
bottom-right per document, causal windows), for documents of 1, 0 and not a multiple of 64
rows, Nq != Nk per document (rows without keys), GQA (4 query heads over 2), bf16. Rows
outside every document get zero gradients, also in given buffers full of NaN
(Attention.backward_varlen); Attention.backward with a mask gives autograd's gradients;
lse is returned without a gradient; a strided pattern runs forward and its backward raises
SpattnError (status 2) with the library's reason; deterministic=True gives the same bits
twice; torch.compile(fullgraph=True) traces attention_varlen, forward and backward.
Exits 77 (ctest: skipped) without PyTorch or a CUDA GPU.

Tolerance (bf16): relative L2 of out, dq, dk and dv against the fp32 reference <= 3e-2, the
backward's bound everywhere (autotune::backward_tolerance_for, tests/python/test_torch_gpu.py)."""
import json
import math
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

TOL = 3e-2
H, HKV, D = 4, 2, 64
CAUSAL = {"type": "dense", "causal": True}
PATTERNS = [CAUSAL, {"type": "local_window", "window": 96, "causal": True}, {"type": "dense"}]
failures = []
gen = torch.Generator(device="cuda").manual_seed(41)


def randn(*shape):
    return torch.randn(*shape, device="cuda", generator=gen).to(torch.bfloat16)


def rel(a, b):
    n = b.float().norm()
    return ((a.float() - b.float()).norm() / n).item() if n > 0 else a.float().norm().item()


def allowed(pattern, nq, nk):
    """[nq, nk] bool: the pattern on one document alone, from its definition: causal keeps
    j <= i + nk - nq (bottom-right), "window": w keeps i - w // 2 <= j <= i + w // 2."""
    i = torch.arange(nq, device="cuda").view(nq, 1)
    j = torch.arange(nk, device="cuda").view(1, nk)
    ok = torch.ones(nq, nk, dtype=torch.bool, device="cuda")
    if pattern.get("causal"):
        ok &= j <= i + (nk - nq)
    if pattern["type"] == "local_window":
        half = pattern["window"] // 2
        ok &= (j >= i - half) & (j <= i + half)
    return ok


def attend(q, k, v, mask):
    """fp32 softmax attention of one document, q [n, H, D], k and v [m, HKV, D], under mask
    [n, m]; rows without keys give 0 and pass no gradient."""
    kr, vr = k.repeat_interleave(H // HKV, dim=1), v.repeat_interleave(H // HKV, dim=1)
    s = torch.einsum("nhd,mhd->hnm", q, kr) / math.sqrt(D)
    has = mask.any(-1, keepdim=True)
    s = torch.where(has, s.masked_fill(~mask, float("-inf")), 0.0)
    return torch.einsum("hnm,mhd->nhd", torch.where(has, s.softmax(-1), 0.0), vr)


def reference(pattern, q, k, v, d_out, docs):
    """out and [dq, dk, dv] of q [Tq, H, D], k and v [Tk, HKV, D] in fp32 torch, docs a list of
    ((q0, q1), (k0, k1)) row ranges, each attended alone; other rows 0."""
    leaves = [x.detach().float().requires_grad_() for x in (q, k, v)]
    out = torch.zeros(q.shape, device="cuda")
    for (a, b), (c, e) in docs:
        if b > a and e > c:
            out[a:b] = attend(leaves[0][a:b], leaves[1][c:e], leaves[2][c:e], allowed(pattern, b - a, e - c))
    out.backward(d_out.float())
    return out.detach(), [x.grad for x in leaves]


def compare(name, out, grads, ref_out, ref_grads):
    errs = {"out": rel(out, ref_out)}
    errs.update({n: rel(g, r) for n, g, r in zip(("dq", "dk", "dv"), grads, ref_grads)})
    print(f"{name}: " + ", ".join(f"{n} {e:.2e}" for n, e in errs.items()))
    bad = {n: e for n, e in errs.items() if not e <= TOL}
    if bad:
        failures.append(f"{name}: {bad} above {TOL}")
    if not all(bool(torch.isfinite(g).all()) for g in grads):
        failures.append(f"{name}: non-finite gradients")


def offsets(lengths):
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    return cu


def grads_varlen(pattern, q, k, v, d_out, cq, ck, max_q, max_k, **kw):
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    out = spattn.attention_varlen(*leaves, torch.tensor(cq, dtype=torch.int32, device="cuda"),
                                  torch.tensor(ck, dtype=torch.int32, device="cuda"), max_q, max_k, pattern, **kw)
    out.backward(d_out)
    return out.detach(), [x.grad for x in leaves]


# ---- packed documents ---------------------------------------------------------------------
lengths = [1, 0, 200, 77, 513, 128, 3]
cu = offsets(lengths)
extra = 5  # rows after the last document: outside every document
total = cu[-1] + extra
q, k, v, d_out = randn(total, H, D), randn(total, HKV, D), randn(total, HKV, D), randn(total, H, D)
docs = [((cu[d], cu[d + 1]), (cu[d], cu[d + 1])) for d in range(len(lengths))]
for pattern in PATTERNS:
    name = f"varlen {pattern}"
    out, grads = grads_varlen(pattern, q, k, v, d_out, cu, cu, max(lengths), max(lengths))
    compare(name, out, grads, *reference(pattern, q, k, v, d_out, docs))
    if not all(bool((g[cu[-1]:] == 0).all()) for g in grads):
        failures.append(f"{name}: gradients of the rows after the last document are not zero")

# Nq != Nk per document, causal aligned bottom-right: document 1's first 200 rows have no key;
# document 4 has keys and no queries, document 5 queries and no keys.
lq, lk = [100, 300, 1, 64, 0, 5], [300, 100, 40, 64, 9, 0]
cq, ck = offsets(lq), offsets(lk)
q2, k2, v2, d2 = randn(cq[-1], H, D), randn(ck[-1], HKV, D), randn(ck[-1], HKV, D), randn(cq[-1], H, D)
docs2 = [((cq[d], cq[d + 1]), (ck[d], ck[d + 1])) for d in range(len(lq))]
for pattern in (CAUSAL, {"type": "dense"}):
    out, grads = grads_varlen(pattern, q2, k2, v2, d2, cq, ck, max(lq), max(lk))
    compare(f"varlen Nq != Nk {pattern}", out, grads, *reference(pattern, q2, k2, v2, d2, docs2))
    if pattern is CAUSAL and not bool((grads[0][cq[1]:cq[1] + 200] == 0).all()):
        failures.append("varlen Nq != Nk: rows without keys have non-zero dq")

# lse comes back, carrying no gradient; Attention.backward_varlen writes every row of given
# buffers (zeros outside the documents) and returns them.
leaves = [x.clone().requires_grad_() for x in (q, k, v)]
cu_t = torch.tensor(cu, dtype=torch.int32, device="cuda")
out, lse = spattn.attention_varlen(*leaves, cu_t, cu_t, max(lengths), max(lengths), CAUSAL, return_lse=True)
if lse.requires_grad or lse.shape != (H, total) or not out.requires_grad:
    failures.append(f"return_lse with grad: lse {tuple(lse.shape)} requires_grad={lse.requires_grad}, "
                    f"out requires_grad={out.requires_grad}")
out.backward(d_out)
attn = spattn.Attention(CAUSAL)
buffers = [torch.full_like(x, float("nan")) for x in (q, k, v)]
got = attn.backward_varlen(q, k, v, out.detach(), lse, d_out, cu_t, cu_t, max(lengths), max(lengths), *buffers)
torch.cuda.synchronize()
if any(g.data_ptr() != b.data_ptr() for g, b in zip(got, buffers)):
    failures.append("backward_varlen did not return the buffers it was given")
if not all(bool((g[cu[-1]:] == 0).all()) and bool(torch.isfinite(g).all()) for g in got):
    failures.append("backward_varlen left rows of NaN buffers unwritten (outside the documents: zero)")
for n, g, a in zip(("dq", "dk", "dv"), got, leaves):
    if rel(g, a.grad) > 1e-2:
        failures.append(f"backward_varlen {n} differs from autograd's ({rel(g, a.grad):.2e})")

# ---- padded batches -----------------------------------------------------------------------
B, N = 3, 300
qb, kb, vb, db = randn(B, N, H, D), randn(B, N, HKV, D), randn(B, N, HKV, D), randn(B, N, H, D)


def flat(x):
    return x.reshape(B * x.shape[1], *x.shape[2:])


def grads_padded(pattern, **kw):
    leaves = [x.clone().requires_grad_() for x in (qb, kb, vb)]
    out = spattn.attention(*leaves, pattern, **kw)
    out.backward(db)
    return out.detach(), [x.grad for x in leaves]


def reference_padded(pattern, used_q, used_k):
    out, grads = reference(pattern, flat(qb), flat(kb), flat(vb), flat(db),
                           [((b * N, b * N + used_q[b]), (b * N, b * N + used_k[b])) for b in range(B)])
    return out.view(B, N, H, D), [g.view(B, N, *g.shape[1:]) for g in grads]


keep = [300, 123, 1]
mask = torch.arange(N, device="cuda").view(1, N) >= torch.tensor(keep, device="cuda").view(B, 1)
for pattern in PATTERNS:
    name = f"key_padding_mask {pattern}"
    out, grads = grads_padded(pattern, key_padding_mask=mask)
    compare(name, out, grads, *reference_padded(pattern, keep, keep))  # self-attention: queries padded too
    for b in range(B):
        if not (bool((out[b, keep[b]:] == 0).all()) and all(bool((g[b, keep[b]:] == 0).all()) for g in grads)):
            failures.append(f"{name} batch {b}: padded rows have non-zero output or gradients")

used_q, used_k = [300, 250, 5], [300, 17, 0]
uq = torch.tensor(used_q, dtype=torch.int32, device="cuda")
uk = torch.tensor(used_k, dtype=torch.int32, device="cuda")
for pattern in (CAUSAL, {"type": "dense"}):
    out, grads = grads_padded(pattern, seqused_k=uk, seqused_q=uq)
    compare(f"seqused_k / seqused_q {pattern}", out, grads, *reference_padded(pattern, used_q, used_k))
    if not all(bool((g[2] == 0).all()) for g in grads):
        failures.append(f"seqused {pattern}: the batch without keys has non-zero gradients")

# Attention.backward with the mask: autograd's gradients, into given buffers.
attn = spattn.Attention(CAUSAL)
lse = torch.empty(B, H, N, device="cuda")
out = attn(qb, kb, vb, lse=lse, key_padding_mask=mask)
buffers = [torch.full_like(x, float("nan")) for x in (qb, kb, vb)]
got = attn.backward(qb, kb, vb, out, lse, db, *buffers, key_padding_mask=mask)
_, auto = grads_padded(CAUSAL, key_padding_mask=mask)
torch.cuda.synchronize()
if any(g.data_ptr() != b.data_ptr() for g, b in zip(got, buffers)):
    failures.append("Attention.backward did not return the buffers it was given")
for n, g, a in zip(("dq", "dk", "dv"), got, auto):
    if not bool(torch.isfinite(g).all()) or rel(g, a) > 1e-2:
        failures.append(f"Attention.backward(key_padding_mask=) {n} differs from autograd's ({rel(g, a):.2e})")

# ---- patterns without a backward over documents -------------------------------------------
STRIDED = {"type": "strided", "stride": 8, "mode": "relative"}
NEEDLE = "backward over documents of a 'strided' pattern is not supported yet"


def expect_unsupported(name, forward, backward):
    """forward() runs (host tables); backward(its result) raises the library's reason."""
    try:
        result = forward()
        torch.cuda.synchronize()
    except spattn.SpattnError as e:
        failures.append(f"{name}: the forward failed: {e}")
        return
    try:
        backward(result)
        torch.cuda.synchronize()
    except spattn.SpattnError as e:
        if e.status != 2 or NEEDLE not in str(e):
            failures.append(f"{name}: status {e.status}, message {e}")
    else:
        failures.append(f"{name}: the backward was accepted")


expect_unsupported("attention_varlen strided",
                   lambda: spattn.attention_varlen(*[x.clone().requires_grad_() for x in (q, k, v)], cu_t, cu_t,
                                                   max(lengths), max(lengths), STRIDED),
                   lambda out: out.backward(d_out))
strided = spattn.Attention(STRIDED)
lse = torch.full((H, total), float("-inf"), device="cuda")
expect_unsupported("Attention.backward_varlen strided",
                   lambda: strided.forward_varlen(q, k, v, cu_t, cu_t, max(lengths), max(lengths), lse=lse),
                   lambda out: strided.backward_varlen(q, k, v, out, lse, d_out, cu_t, cu_t, max(lengths),
                                                       max(lengths)))
expect_unsupported("attention strided with key_padding_mask",
                   lambda: spattn.attention(*[x.clone().requires_grad_() for x in (qb, kb, vb)], STRIDED,
                                            key_padding_mask=mask),
                   lambda out: out.backward(db))

# ---- deterministic mode: the same bits twice ----------------------------------------------
runs = [grads_varlen(CAUSAL, q, k, v, d_out, cu, cu, max(lengths), max(lengths), deterministic=True)[1]
        for _ in range(2)]
if not all(torch.equal(a, b) for a, b in zip(*runs)):
    failures.append("attention_varlen deterministic=True: gradients differ between runs")
runs = [grads_padded(CAUSAL, key_padding_mask=mask, deterministic=True)[1] for _ in range(2)]
if not all(torch.equal(a, b) for a, b in zip(*runs)):
    failures.append("attention(key_padding_mask=) deterministic=True: gradients differ between runs")

# ---- torch.compile traces the documents op (forward and backward) -------------------------
window = json.dumps(PATTERNS[1])  # the pattern as text, as SparseAttention keeps it


def loss_fn(q, k, v):
    return (spattn.attention_varlen(q, k, v, cu_t, cu_t, max(lengths), max(lengths), window).float() ** 2).sum()


eager = [x.clone().requires_grad_() for x in (q, k, v)]
loss_fn(*eager).backward()
compiled = [x.clone().requires_grad_() for x in (q, k, v)]
torch.compile(loss_fn, fullgraph=True)(*compiled).backward()
for n, a, b in zip(("dq", "dk", "dv"), compiled, eager):
    if rel(a.grad, b.grad) > 1e-2:
        failures.append(f"torch.compile attention_varlen: {n} differs from eager ({rel(a.grad, b.grad):.2e})")

if failures:
    print("FAILED:\n  " + "\n  ".join(failures))
    sys.exit(1)
print("ok")
