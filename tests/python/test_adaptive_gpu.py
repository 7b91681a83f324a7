"""Adaptive (content-based top-k block) patterns through the Python wrapper on the GPU:
spattn.Attention(adaptive pattern) with supplied scores and return_blocks=True, the chosen
blocks against a pure-torch implementation of the selection of include/spattn/adaptive.hpp
(the diagonal block kept, the top k-1 others by score among the allowed blocks, ties to the
lower index, ascending, -1 padded), and the output (and LSE) against an fp32 torch
reference attention masked by exactly those blocks. Cases: causal top_k at B=2, N=1000,
H=4, D=64 bf16; Nq < Nk with GQA; keep_ratio without causal; integer-valued bf16 scores
(many ties; converted to fp32 by the wrapper) given as a non-contiguous view. Then scores
computed from block means and from projections (wq, wk in bf16, converted): the blocks are
a valid choice and the output is the attention over them. Errors: wrong shapes (the
library's message) and adaptive inputs for a static pattern. Training: spattn.attention's
gradients (q, k, v, and the gates with supplied scores) against torch's autograd through
the reference. Exits 77 (ctest: skipped) without PyTorch or a CUDA GPU.

Tolerances (bf16, as tests/python/test_torch_gpu.py): output rel L2 <= 3e-2; LSE max abs
error <= 2e-3 (natural log)."""
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

TOL_OUT, TOL_LSE = 3e-2, 2e-3
failures = []
gen = torch.Generator(device="cuda").manual_seed(13)


def geometry(block, nq, nk, causal, top_k=None, keep_ratio=None):
    """Per query block (k_I, d(I), allowed(I)) by the definition of include/spattn/adaptive.hpp."""
    nqb, nkb = -(-nq // block), -(-nk // block)
    shift = nk - nq
    rows = []
    for i in range(nqb):
        reach = min((i + 1) * block, nq) - 1 + shift
        d = min(max(reach // block if reach >= 0 else -1, 0), nkb - 1)
        allowed = (0 if reach < 0 else d + 1) if causal else nkb
        if allowed == 0:
            k = 0
        elif top_k is not None:
            k = min(top_k, allowed)
        else:
            x = keep_ratio * allowed
            k = round(x) if abs(x - round(x)) <= 1e-9 else math.ceil(x)
            k = min(max(k, 1), allowed)
        rows.append((k, d if k > 0 else -1, allowed))
    return nqb, nkb, max(r[0] for r in rows), rows


def select(scores, geo):
    """The chosen blocks [B, H, nqb, max_k] int32 of scores [B, H, nqb, nkb] (torch, on the host's
    definition): per row the diagonal, then the k-1 highest others (a stable descending sort:
    ties to the lower index; NaN as -inf), ascending, -1 padded."""
    nqb, nkb, max_k, rows = geo
    B, H = scores.shape[:2]
    out = torch.full((B, H, nqb, max_k), -1, dtype=torch.int32, device=scores.device)
    s = torch.nan_to_num(scores.float(), nan=-math.inf)
    for i, (k, d, allowed) in enumerate(rows):
        if k == 0:
            continue
        others = torch.tensor([j for j in range(allowed) if j != d], dtype=torch.long, device=scores.device)
        picked = torch.full((B, H, 1), d, dtype=torch.long, device=scores.device)
        if k > 1:
            order = torch.sort(s[:, :, i, others], dim=-1, descending=True, stable=True).indices[..., : k - 1]
            picked = torch.cat([picked, others[order]], dim=-1)
        out[:, :, i, :k] = torch.sort(picked, dim=-1).values.to(torch.int32)
    return out


def valid(blocks, geo):
    """Whether each row is a valid choice: ascending, the diagonal in it, k_I allowed blocks, -1 after."""
    nqb, nkb, max_k, rows = geo
    if tuple(blocks.shape[2:]) != (nqb, max_k):
        return False
    for i, (k, d, allowed) in enumerate(rows):
        row = blocks[:, :, i].long()
        if k < max_k and not bool((row[..., k:] == -1).all()):
            return False
        if k == 0:
            continue
        head = row[..., :k]
        if not bool(((head >= 0) & (head < allowed)).all()):
            return False
        if k > 1 and not bool((head[..., 1:] > head[..., :-1]).all()):
            return False
        if not bool((head == d).any(-1).all()):
            return False
    return True


def reference(q, k, v, blocks, block, causal, gates=None):
    """fp32 attention [B, Nq, H, D] and LSE [B, H, Nq] over the chosen blocks: key j is allowed
    for query i iff block(j) is chosen for block(i) and (causal) j <= i + Nk - Nq; with gates
    [B, H, nqb, nkb], log g is added to the logits of each block (g <= 0: removed).
    Differentiable in q, k, v and gates."""
    B, nq, H, D = q.shape
    nk, hkv = k.shape[1], k.shape[2]
    nqb, nkb = -(-nq // block), -(-nk // block)
    chosen = torch.zeros((B, H, nqb, nkb + 1), dtype=torch.bool, device=q.device)
    idx = blocks.long().clone()
    idx[idx < 0] = nkb  # -1 padding lands in a spare column
    chosen.scatter_(-1, idx, True)
    chosen = chosen[..., :nkb]
    qb = torch.arange(nq, device=q.device) // block
    kb = torch.arange(nk, device=q.device) // block
    mask = chosen[:, :, qb][:, :, :, kb]  # [B, H, Nq, Nk]
    if causal:
        i = torch.arange(nq, device=q.device).view(nq, 1)
        j = torch.arange(nk, device=q.device).view(1, nk)
        mask = mask & (j <= i + nk - nq)
    qt = q.float().transpose(1, 2)
    kt = k.float().repeat_interleave(H // hkv, dim=2).transpose(1, 2)
    vt = v.float().repeat_interleave(H // hkv, dim=2).transpose(1, 2)
    s = (qt @ kt.transpose(-1, -2)) / math.sqrt(D)
    if gates is not None:
        g = gates.float()[:, :, qb][:, :, :, kb]  # [B, H, Nq, Nk]
        mask = mask & (g > 0)
        s = s + torch.log(torch.where(g > 0, g, torch.ones_like(g)))
    s = s.masked_fill(~mask, -math.inf)
    lse = torch.logsumexp(s, dim=-1)
    p = torch.nan_to_num(torch.softmax(s, dim=-1), nan=0.0)  # rows that see nothing: O = 0
    return (p @ vt).transpose(1, 2), lse


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def check_output(name, out, lse, q, k, v, blocks, block, causal):
    ref, ref_lse = reference(q, k, v, blocks, block, causal)
    err = rel(out, ref)
    finite = torch.isfinite(ref_lse)
    lse_err = (lse[finite] - ref_lse[finite]).abs().max().item() if bool(finite.any()) else 0.0
    lse_ok = bool((torch.isinf(lse[~finite]) & (lse[~finite] < 0)).all())
    print(f"{name}: out rel {err:.2e}, lse max {lse_err:.2e}")
    if not (err <= TOL_OUT) or not (lse_err <= TOL_LSE) or not lse_ok or not bool(torch.isfinite(out).all()):
        failures.append(f"{name}: out rel {err:.2e} (<= {TOL_OUT}), lse {lse_err:.2e} (<= {TOL_LSE}), "
                        f"-inf LSE where no key {lse_ok}")


def run(name, pattern, B, nq, nk, H, hkv, D=64, scores_kind="random"):
    block, causal = pattern["block"], bool(pattern.get("causal", False))
    geo = geometry(block, nq, nk, causal, pattern.get("top_k"), pattern.get("keep_ratio"))
    nqb, nkb, max_k, _ = geo
    if spattn.adaptive_geometry(pattern, nq, nk) != (nqb, nkb, max_k):
        failures.append(f"{name}: adaptive_geometry {spattn.adaptive_geometry(pattern, nq, nk)}, "
                        f"expected {(nqb, nkb, max_k)}")
        return
    q = torch.randn(B, nq, H, D, device="cuda", generator=gen).to(torch.bfloat16)
    k, v = (torch.randn(B, nk, hkv, D, device="cuda", generator=gen).to(torch.bfloat16) for _ in range(2))
    if scores_kind == "random":
        scores = torch.randn(B, H, nqb, nkb, device="cuda", generator=gen)
    else:  # integer-valued bf16 (many ties), as a non-contiguous view [.., nkb, nqb].T
        ints = torch.randint(-2, 3, (B, H, nkb, nqb), device="cuda", generator=gen)
        scores = ints.to(torch.bfloat16).transpose(-1, -2)
        assert scores.stride(-1) != 1
    attn = spattn.Attention(pattern, use_tuning_db=False)
    lse = torch.full((B, H, nq), math.nan, device="cuda")
    out, blocks = attn(q, k, v, lse=lse, scores=scores, return_blocks=True)
    torch.cuda.synchronize()
    if blocks.dtype != torch.int32 or tuple(blocks.shape) != (B, H, nqb, max_k):
        failures.append(f"{name}: blocks {blocks.dtype} {tuple(blocks.shape)}, expected int32 {(B, H, nqb, max_k)}")
        return
    want = select(scores, geo)
    if not torch.equal(blocks, want):
        bad = (blocks != want).any(-1).nonzero().tolist()
        failures.append(f"{name}: chosen blocks differ from the torch selection in {len(bad)} rows, e.g. "
                        f"(b, h, I) {bad[0]}: {blocks[tuple(bad[0])].tolist()} vs {want[tuple(bad[0])].tolist()}")
    if "supplied by the caller" not in attn.explain():
        failures.append(f"{name}: explain() does not say the scores were supplied:\n{attn.explain()}")
    check_output(name, out, lse, q, k, v, blocks, block, causal)
    return attn, q, k, v, geo


causal4 = {"type": "adaptive", "block": 64, "top_k": 4, "causal": True}
first = run("causal top 4, B=2 N=1000 H=4", causal4, 2, 1000, 1000, 4, 4)
run("causal top 3, Nq=600 Nk=1000, GQA 4/2", {"type": "adaptive", "block": 64, "top_k": 3, "causal": True},
    1, 600, 1000, 4, 2)
run("keep_ratio 0.3, not causal", {"type": "adaptive", "block": 64, "keep_ratio": 0.3}, 2, 1000, 1000, 4, 4)
run("causal top 4, tied bf16 scores (strided)", causal4, 2, 1000, 1000, 4, 4, scores_kind="ties")

# Scores computed by the library (block means; projections given in bf16): TF32 products may
# break near ties differently from any reference, so the blocks are checked for validity and
# the output against the attention over the blocks returned.
if first is not None:
    attn, q, k, v, geo = first
    wq, wk = (torch.randn(64, 16, device="cuda", generator=gen).to(torch.bfloat16) for _ in range(2))
    for name, kwargs in (("block means", {}), ("projected bf16 wq/wk", {"wq": wq, "wk": wk})):
        lse = torch.empty(2, 4, 1000, device="cuda")
        out, blocks = attn(q, k, v, lse=lse, return_blocks=True, **kwargs)
        torch.cuda.synchronize()
        if not valid(blocks, geo):
            failures.append(f"computed scores ({name}): the chosen blocks are not a valid choice")
        check_output(f"computed scores ({name})", out, lse, q, k, v, blocks, 64, True)
        if "computed" not in attn.explain():
            failures.append(f"computed scores ({name}): explain() says\n{attn.explain()}")
    # Without return_blocks nothing extra comes back.
    if not isinstance(attn(q, k, v), torch.Tensor):
        failures.append("forward without return_blocks returned more than the output")

    # Errors: the library's messages as SpattnError.
    def expect_error(what, fn, status, needle):
        try:
            fn()
        except spattn.SpattnError as e:
            if e.status != status or needle not in str(e):
                failures.append(f"{what}: status {e.status}, message {str(e)!r}; expected {status}, {needle!r}")
        else:
            failures.append(f"{what}: accepted")

    expect_error("scores of the wrong shape",
                 lambda: attn(q, k, v, scores=torch.zeros(2, 4, 16, 15, device="cuda")), 1, "adaptive scores")
    expect_error("scores with projections", lambda: attn(q, k, v, scores=torch.zeros(2, 4, 16, 16, device="cuda"),
                                                         wq=wq, wk=wk), 1, "exclude each other")
    expect_error("wq without wk", lambda: attn(q, k, v, wq=wq), 1, "wq and wk go together")
    expect_error("wq of the wrong head dim", lambda: attn(q, k, v, wq=wq[:32], wk=wk[:32]), 1, "wq")
    dense = spattn.Attention({"type": "dense", "causal": True}, use_tuning_db=False)
    expect_error("return_blocks on a static pattern", lambda: dense(q, k, v, return_blocks=True), 1,
                 "'dense' pattern")
    expect_error("scores for a static pattern", lambda: dense(q, k, v, scores=torch.zeros(2, 4, 16, 16, device="cuda")),
                 1, "adaptive patterns only")
    torch.cuda.synchronize()

    # spattn.attention trains adaptive patterns: computed scores, then supplied scores with
    # gates (bf16, some removed), gradients of q, k, v and the gates against torch's autograd
    # through the fp32 reference over the same blocks.
    TOL_GRAD = 3e-2  # bf16, the backward tolerance of autotune/harness.hpp
    d_out = torch.randn(q.shape, device="cuda", dtype=torch.bfloat16, generator=gen)
    nqb, nkb = -(-q.shape[1] // 64), -(-k.shape[1] // 64)
    sc = torch.rand((q.shape[0], q.shape[2], nqb, nkb), device="cuda", generator=gen)
    gates = (torch.rand((q.shape[0], q.shape[2], nqb, nkb), device="cuda", generator=gen) * 2 + 0.1)
    gates.view(-1)[::7] = 0  # removed blocks
    gates = gates.to(torch.bfloat16)
    for name, kw in (("computed scores", {}), ("supplied scores and gates", {"scores": sc, "gates": gates})):
        leaves = [x.clone().requires_grad_() for x in (q, k, v)]
        g_leaf = kw["gates"].clone().requires_grad_() if "gates" in kw else None
        call = dict(kw, gates=g_leaf) if g_leaf is not None else kw
        out = spattn.attention(*leaves, causal4, **call)
        out.backward(d_out)
        blocks = attn(q, k, v, return_blocks=True, **({"scores": sc} if "scores" in kw else {}))[1]
        ref_leaves = [x.detach().float().requires_grad_() for x in (q, k, v)]
        ref_g = g_leaf.detach().float().requires_grad_() if g_leaf is not None else None
        ref, _ = reference(*ref_leaves, blocks, 64, True, ref_g)
        ref.backward(d_out.float())
        errs = {"out": rel(out, ref)}
        for what, got, want in zip(("dq", "dk", "dv"), leaves, ref_leaves):
            errs[what] = rel(got.grad, want.grad)
        if ref_g is not None:
            errs["dgates"] = rel(g_leaf.grad, ref_g.grad)
            if g_leaf.grad.dtype != torch.bfloat16:
                failures.append(f"spattn.attention {name}: gates' gradient is {g_leaf.grad.dtype}")
        print(f"spattn.attention {name}: " + ", ".join(f"{w} rel {e:.2e}" for w, e in errs.items()))
        if not all(e <= (TOL_OUT if w == "out" else TOL_GRAD) for w, e in errs.items()):
            failures.append(f"spattn.attention {name}: {errs}")
    # Attention.backward with gates returns the gates' gradient too; gates_grad needs gates.
    o_buf = torch.empty_like(q)
    lse = torch.empty((q.shape[0], q.shape[2], q.shape[1]), device="cuda", dtype=torch.float32)
    attn(q, k, v, o_buf, lse, scores=sc, gates=gates)
    grads = attn.backward(q, k, v, o_buf, lse, d_out, scores=sc, gates=gates)
    if len(grads) != 4 or grads[3].shape != gates.shape or grads[3].dtype != torch.float32:
        failures.append("Attention.backward with gates: expected (dq, dk, dv, gates_grad float32 like gates)")
    try:
        attn.backward(q, k, v, o_buf, lse, d_out, scores=sc, gates_grad=torch.empty_like(sc))
    except spattn.ArgumentError as e:
        if "gates_grad needs the gates" not in str(e):
            failures.append(f"gates_grad without gates: {e}")
    else:
        failures.append("gates_grad without gates: accepted")

if failures:
    print("FAILED:\n  " + "\n  ".join(failures))
    sys.exit(1)
print("ok")
