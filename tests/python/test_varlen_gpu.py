"""Documents through the Python wrapper on the GPU (include/spattn/varlen.hpp).

spattn.attention_varlen against spattn.Attention run on each document alone (torch slices
q[cu[d]:cu[d + 1]].unsqueeze(0)), for documents of length 1, 0 and not a multiple of 64,
GQA, causal and window patterns, with and without the lengths check (the same bits), the
rows after the last document left at zero; bad offsets as ArgumentError naming the entry.
The padded forward (seqused_k, seqused_q) against each batch's used part alone, the rows
past seqused_q zero with LSE -inf. key_padding_mask (True = padded key, as
torch.nn.MultiheadAttention): self-attention against an fp32 torch reference of causal
attention with that key mask on the valid rows (the padded rows zero), cross-attention
against the used keys alone; a mask that is not valid keys then padding is a ValueError.
Exits 77 (ctest: skipped) without PyTorch or a CUDA GPU.

Tolerances (bf16): against the same library on a document alone, output rel L2 <= 1e-2 and
LSE max abs <= 2e-3 (two kernels' fp32 accumulations rounded to bf16); against the fp32
torch reference, rel L2 <= 3e-2 (as tests/python/test_torch_gpu.py)."""
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

TOL_SAME, TOL_LSE, TOL_REF = 1e-2, 2e-3, 3e-2
H, HKV, D = 4, 2, 128
failures = []
gen = torch.Generator(device="cuda").manual_seed(29)


def randn(*shape):
    return torch.randn(*shape, device="cuda", generator=gen).to(torch.bfloat16)


def rel(a, b):
    n = b.float().norm()
    return ((a.float() - b.float()).norm() / n).item() if n > 0 else (a.float().norm()).item()


_alone = {}  # pattern text -> Attention (its plans are kept per shape)


def alone(pattern, q, k, v):
    """spattn.Attention on one problem [1, N, H, D] alone: (out [N, H, D], lse [H, N])."""
    key = str(pattern)
    if key not in _alone:
        _alone[key] = spattn.Attention(pattern, use_tuning_db=False)
    lse = torch.empty(1, q.shape[1], q.shape[0], device="cuda")
    out = _alone[key](q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), lse=lse)
    return out[0], lse[0]


def compare(name, out, lse, ref_out, ref_lse):
    """Output within rel L2 TOL_SAME, LSE within TOL_LSE where finite and -inf where the
    reference's is (rows without keys)."""
    err = rel(out, ref_out)
    finite = torch.isfinite(ref_lse)
    lse_err = (lse[finite] - ref_lse[finite]).abs().max().item() if bool(finite.any()) else 0.0
    same_inf = bool((lse[~finite] == ref_lse[~finite]).all())
    if not (err <= TOL_SAME and lse_err <= TOL_LSE and same_inf) or not bool(torch.isfinite(out).all()):
        failures.append(f"{name}: out rel {err:.2e} (<= {TOL_SAME}), lse max {lse_err:.2e} (<= {TOL_LSE}), "
                        f"-inf LSE where the reference has it: {same_inf}")


def expect_empty(name, out, lse):
    """Rows without keys: O = 0, LSE = -inf."""
    if not bool((out == 0).all()):
        failures.append(f"{name}: rows without keys are not zero")
    if lse is not None and not bool((torch.isinf(lse) & (lse < 0)).all()):
        failures.append(f"{name}: rows without keys do not have LSE = -inf")


# ---- packed documents ---------------------------------------------------------------------
lengths = [1, 0, 200, 77, 513, 128, 1000, 3]
cu_list = [0]
for n in lengths:
    cu_list.append(cu_list[-1] + n)
extra = 5  # rows after the last document: never written
total = cu_list[-1] + extra
cu = torch.tensor(cu_list, dtype=torch.int32, device="cuda")
q, k, v = randn(total, H, D), randn(total, HKV, D), randn(total, HKV, D)
patterns = [
    {"type": "dense", "causal": True},
    {"type": "local_window", "window": 96, "causal": True},
    {"type": "local_window", "left": 40, "right": 9},
]
for pattern in patterns:
    name = f"varlen {pattern}"
    out, lse = spattn.attention_varlen(q, k, v, cu, cu, max(lengths), max(lengths), pattern, return_lse=True)
    unchecked = spattn.attention_varlen(q, k, v, cu, cu, max(lengths), max(lengths), pattern, check_lengths=False)
    torch.cuda.synchronize()
    if out.shape != q.shape or lse.shape != (H, total) or lse.dtype != torch.float32:
        failures.append(f"{name}: out {tuple(out.shape)}, lse {lse.dtype} {tuple(lse.shape)}")
        continue
    if not torch.equal(out, unchecked):
        failures.append(f"{name}: check_lengths=False changed the output")
    for d, n in enumerate(lengths):
        a, b = cu_list[d], cu_list[d + 1]
        if n == 0:
            continue
        ref_out, ref_lse = alone(pattern, q[a:b], k[a:b], v[a:b])
        compare(f"{name} document {d} ({n} rows)", out[a:b], lse[:, a:b], ref_out, ref_lse)
    if not bool((out[cu_list[-1]:] == 0).all()):
        failures.append(f"{name}: rows after the last document were written")
    if not bool(torch.isinf(lse[:, cu_list[-1]:]).all()):
        failures.append(f"{name}: LSE after the last document is not the -inf it was allocated with")

# Nq != Nk per document (causal aligned bottom-right per document), into given buffers.
lq, lk = [100, 300, 1, 64], [300, 100, 40, 64]
cq, ck = [0], [0]
for a, b in zip(lq, lk):
    cq.append(cq[-1] + a)
    ck.append(ck[-1] + b)
q2, k2, v2 = randn(cq[-1], H, D), randn(ck[-1], HKV, D), randn(ck[-1], HKV, D)
out2, lse2 = torch.full_like(q2, float("nan")), torch.full((H, cq[-1]), float("nan"), device="cuda")
pattern = {"type": "dense", "causal": True}
got = spattn.attention_varlen(q2, k2, v2, torch.tensor(cq, dtype=torch.int32, device="cuda"),
                              torch.tensor(ck, dtype=torch.int32, device="cuda"), max(lq), max(lk), pattern,
                              out=out2, lse=lse2)
torch.cuda.synchronize()
if got.data_ptr() != out2.data_ptr():
    failures.append("attention_varlen did not return the out it was given")
for d in range(len(lq)):
    ref_out, ref_lse = alone(pattern, q2[cq[d]:cq[d + 1]], k2[ck[d]:ck[d + 1]], v2[ck[d]:ck[d + 1]])
    compare(f"varlen cross document {d} ({lq[d]} x {lk[d]})", out2[cq[d]:cq[d + 1]], lse2[:, cq[d]:cq[d + 1]],
            ref_out, ref_lse)

# Bad offsets: named by the library's check.
bad = torch.tensor([0, 100, 50, total], dtype=torch.int32, device="cuda")
good = torch.tensor([0, 100, 150, total], dtype=torch.int32, device="cuda")
try:
    spattn.attention_varlen(q, k, v, bad, good, total, total, {"type": "dense", "causal": True})
except ValueError as e:
    if not isinstance(e, spattn.SpattnError) or "cu_seqlens_q[2] = 50 is below cu_seqlens_q[1] = 100" not in str(e):
        failures.append(f"bad offsets: {type(e).__name__}: {e}")
else:
    failures.append("bad offsets were accepted")
torch.cuda.synchronize()

# ---- padded batches -----------------------------------------------------------------------
B, N = 3, 300
used_q, used_k = [300, 250, 5], [300, 17, 0]
qb, kb, vb = randn(B, N, H, D), randn(B, N, HKV, D), randn(B, N, HKV, D)
uq = torch.tensor(used_q, dtype=torch.int32, device="cuda")
uk = torch.tensor(used_k, dtype=torch.int32, device="cuda")
for pattern in ({"type": "dense", "causal": True}, {"type": "local_window", "window": 64}):
    attn = spattn.Attention(pattern, use_tuning_db=False)
    for with_q in (False, True):
        name = f"padded {pattern}{' with seqused_q' if with_q else ''}"
        lse = torch.full((B, H, N), float("nan"), device="cuda")
        out = attn(qb, kb, vb, lse=lse, seqused_k=uk, seqused_q=uq if with_q else None)
        torch.cuda.synchronize()
        for b in range(B):
            nq, nk = (used_q[b] if with_q else N), used_k[b]
            if nk > 0:
                ref_out, ref_lse = alone(pattern, qb[b, :nq], kb[b, :nk], vb[b, :nk])
                compare(f"{name} batch {b} ({nq} x {nk})", out[b, :nq], lse[b, :, :nq], ref_out, ref_lse)
            else:
                expect_empty(f"{name} batch {b} (no keys)", out[b, :nq], lse[b, :, :nq])
            expect_empty(f"{name} batch {b} rows past seqused_q", out[b, nq:], lse[b, :, nq:])


# ---- key-padding masks (True = padded key) ------------------------------------------------
def reference_masked(q, k, v, mask, causal):
    """fp32 attention [B, Nq, H, D] with torch's conventions: key_padding_mask [B, Nk] True =
    ignored, causal top-left (j <= i)."""
    qt = q.float().transpose(1, 2)
    kt = k.float().repeat_interleave(H // HKV, dim=2).transpose(1, 2)
    vt = v.float().repeat_interleave(H // HKV, dim=2).transpose(1, 2)
    s = (qt @ kt.transpose(-1, -2)) / math.sqrt(D)
    allowed = ~mask[:, None, None, :]
    if causal:
        i = torch.arange(q.shape[1], device="cuda").view(-1, 1)
        j = torch.arange(k.shape[1], device="cuda").view(1, -1)
        allowed = allowed & (j <= i)
    p = torch.nan_to_num(torch.softmax(s.masked_fill(~allowed, -math.inf), dim=-1), nan=0.0)
    return (p @ vt).transpose(1, 2)


keep = [300, 123, 1]
mask = torch.arange(N, device="cuda").view(1, N) >= torch.tensor(keep, device="cuda").view(B, 1)
causal = spattn.Attention({"type": "dense", "causal": True}, use_tuning_db=False)
out = causal(qb, kb, vb, key_padding_mask=mask)
torch.cuda.synchronize()
ref = reference_masked(qb, kb, vb, mask, True)
for b in range(B):
    err = rel(out[b, :keep[b]], ref[b, :keep[b]])
    if not err <= TOL_REF:
        failures.append(f"key_padding_mask causal self-attention batch {b}: valid rows rel {err:.2e} (<= {TOL_REF})")
    expect_empty(f"key_padding_mask causal self-attention batch {b} padded rows", out[b, keep[b]:], None)
# Cross-attention (Nq != Nk): every query row attends the kept keys.
qc = randn(B, 77, H, D)
dense = spattn.Attention({"type": "dense"}, use_tuning_db=False)
lse = torch.empty(B, H, 77, device="cuda")
out = dense(qc, kb, vb, lse=lse, key_padding_mask=mask)
torch.cuda.synchronize()
ref = reference_masked(qc, kb, vb, mask, False)
for b in range(B):
    ref_out, ref_lse = alone({"type": "dense"}, qc[b], kb[b, :keep[b]], vb[b, :keep[b]])
    compare(f"key_padding_mask cross-attention batch {b}", out[b], lse[b], ref_out, ref_lse)
    err = rel(out[b], ref[b])
    if not err <= TOL_REF:
        failures.append(f"key_padding_mask cross-attention batch {b}: rel {err:.2e} against torch (<= {TOL_REF})")
# A mask that is not a prefix of kept keys is refused, naming the row.
holes = mask.clone()
holes[1, 5] = True
try:
    causal(qb, kb, vb, key_padding_mask=holes)
except ValueError as e:
    if "key_padding_mask row 1 is not valid keys followed by padding" not in str(e):
        failures.append(f"non-prefix mask: unclear message {e}")
else:
    failures.append("a key_padding_mask with a hole was accepted")
try:
    causal(qb, kb, vb, key_padding_mask=mask, seqused_k=uk)
except ValueError as e:
    if "pass one of them" not in str(e):
        failures.append(f"mask and seqused_k: unclear message {e}")
else:
    failures.append("key_padding_mask together with seqused_k was accepted")
torch.cuda.synchronize()

if failures:
    print("FAILED:\n  " + "\n  ".join(failures))
    sys.exit(1)
print("ok")
