"""spattn.nn on the GPU. MultiheadSparseAttention with a dense pattern against
torch.nn.MultiheadAttention holding the same weights (forward and the gradients of the
input and of every parameter), self- and cross-attention, also with a key_padding_mask
(self-attention dense and causal, sequence-first, cross-attention; padded query positions
give out_proj.bias); with LongNet, GQA, rotary and
sub-LN against the same module built from torch ops with a masked fp32 attention over
the LongNet multiset (an oracle written here from DESIGN.md §3); CrossMemoryAttention's
fusions. Exits 77 (ctest: skipped) without PyTorch or a CUDA GPU."""
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

# Relative L2 bounds per dtype: the attention op's (tests/python/test_torch_gpu.py: bf16 3e-2,
# fp16 6e-3) with headroom for the projections' 16-bit GEMMs and their gradients, which
# round Q/K/V, the attention output and every weight gradient once more.
TOL = {torch.bfloat16: 5e-2, torch.float16: 1e-2}
failures = []


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def check(name, dtype, pairs):
    errs = {k: rel(a, b) for k, a, b in pairs}
    print(f"{name} {dtype}: " + ", ".join(f"{k} {e:.2e}" for k, e in errs.items()))
    bad = {k: e for k, e in errs.items() if not e <= TOL[dtype]}
    if bad:
        failures.append(f"{name} {dtype}: {bad} above {TOL[dtype]}")


def grads(module, inputs):
    return [p.grad for p in module.parameters()] + [x.grad for x in inputs]


# 1. Dense against torch.nn.MultiheadAttention (fp32 copy of the same weights).
for dtype in (torch.bfloat16, torch.float16):
    for cross in (False, True):
        torch.manual_seed(1)
        ours = spattn.nn.MultiheadSparseAttention(256, 4, device="cuda", dtype=dtype)
        with torch.no_grad():  # biases away from 0 so that they are checked too; scores of std ~2
            ours.in_proj_bias.uniform_(-0.5, 0.5)
            ours.out_proj.bias.uniform_(-0.5, 0.5)
            ours.in_proj_weight.mul_(2)
        ref = torch.nn.MultiheadAttention(256, 4, batch_first=True, device="cuda", dtype=torch.float32)
        ref.load_state_dict({k: v.float() for k, v in ours.state_dict().items()})
        x = torch.randn(2, 200, 256, device="cuda").to(dtype)
        m = torch.randn(2, 330, 256, device="cuda").to(dtype) if cross else x
        d_out = torch.randn(2, 200, 256, device="cuda").to(dtype)
        xs = [x.clone().requires_grad_()] + ([m.clone().requires_grad_()] if cross else [])
        xr = [t.detach().float().requires_grad_() for t in xs]
        q, kv = (xs[0], xs[-1])
        out, weights = ours(q, kv, kv)
        assert weights is None
        out.backward(d_out)
        qr, kvr = xr[0], xr[-1]
        out_r, _ = ref(qr, kvr, kvr, need_weights=False)
        out_r.backward(d_out.float())
        pairs = [("out", out, out_r)]
        names = [n for n, _ in ours.named_parameters()] + ["d_query"] + (["d_memory"] if cross else [])
        pairs += [(n, a, b) for n, a, b in zip(names, grads(ours, xs), grads(ref, xr))]
        check("dense vs torch.nn.MultiheadAttention" + (" (cross, Nq != Nk)" if cross else ""), dtype, pairs)


# 1b. key_padding_mask against torch.nn.MultiheadAttention with the same mask: self-attention
# (dense, and causal against torch's causal attn_mask; batch_first=False too), where padded
# positions are padded queries (spattn: out_proj.bias there; torch: values nobody reads), so
# the outputs are compared at the valid positions and the loss ignores the padded ones;
# cross-attention (Nq != Nk, and Nq == Nk with query apart from key), where the mask masks
# keys only and every query position is compared.
for dtype in (torch.bfloat16, torch.float16):
    for case in ("self", "self causal", "self seq-first", "cross", "cross Nq == Nk"):
        torch.manual_seed(3)
        causal = case == "self causal"
        batch_first = case != "self seq-first"
        pattern = {"type": "dense", "causal": True} if causal else {"type": "dense"}
        ours = spattn.nn.MultiheadSparseAttention(256, 4, device="cuda", dtype=dtype, pattern=pattern,
                                                  batch_first=batch_first)
        with torch.no_grad():
            ours.in_proj_bias.uniform_(-0.5, 0.5)
            ours.out_proj.bias.uniform_(-0.5, 0.5)
            ours.in_proj_weight.mul_(2)
        ref = torch.nn.MultiheadAttention(256, 4, batch_first=batch_first, device="cuda", dtype=torch.float32)
        ref.load_state_dict({k: v.float() for k, v in ours.state_dict().items()})
        cross = case.startswith("cross")
        nq, nk = 200, (330 if case == "cross" else 200)
        keep = torch.tensor([nk, 77] if not cross else [nk - 9, 101], device="cuda")
        mask = torch.arange(nk, device="cuda").view(1, nk) >= keep.view(2, 1)
        x = torch.randn(2, nq, 256, device="cuda").to(dtype)
        m = torch.randn(2, nk, 256, device="cuda").to(dtype) if cross else x
        valid = (torch.ones(2, nq, dtype=torch.bool, device="cuda") if cross
                 else torch.arange(nq, device="cuda").view(1, nq) < keep.view(2, 1))
        d_out = torch.randn(2, nq, 256, device="cuda").to(dtype) * valid[..., None]

        def seq(t):  # batch-first [B, N, E] in the module's layout
            return t if batch_first else t.transpose(0, 1)

        xs = [x.clone().requires_grad_()] + ([m.clone().requires_grad_()] if cross else [])
        xr = [t.detach().float().requires_grad_() for t in xs]
        q_in = seq(xs[0])
        kv_in = seq(xs[-1]) if cross else q_in  # self-attention: one tensor, as `query is key is value` sees it
        out, _ = ours(q_in, kv_in, kv_in, key_padding_mask=mask)
        out = seq(out)
        out.backward(d_out)
        causal_mask = torch.triu(torch.ones(nq, nk, dtype=torch.bool, device="cuda"), 1) if causal else None
        q_r, kv_r = seq(xr[0]), seq(xr[-1])
        out_r, _ = ref(q_r, kv_r, kv_r, key_padding_mask=mask, attn_mask=causal_mask, need_weights=False)
        out_r = seq(out_r)
        out_r.backward(d_out.float())
        pairs = [("out at valid positions", out[valid], out_r[valid])]
        names = [n for n, _ in ours.named_parameters()] + ["d_query"] + (["d_memory"] if cross else [])
        pairs += [(n, a, b) for n, a, b in zip(names, grads(ours, xs), grads(ref, xr))]
        check(f"key_padding_mask {case} vs torch.nn.MultiheadAttention", dtype, pairs)
        if not cross and not torch.equal(out[~valid], ours.out_proj.bias.detach().expand(int((~valid).sum()), 256)):
            failures.append(f"key_padding_mask {case} {dtype}: padded positions are not out_proj.bias")


# 2. LongNet, GQA, rotary, sub-LN against torch ops with an fp32 multiset-softmax oracle.
def longnet_counts(n, heads, segments, rates, device):
    """[heads, n, n]: in how many branches query i of head h may attend key j (DESIGN.md §3)."""
    i = torch.arange(n, device=device).view(n, 1)
    j = torch.arange(n, device=device).view(1, n)
    counts = torch.zeros(heads, n, n, device=device)
    for w, r in zip(segments, rates):
        per_group = math.ceil(heads / r)
        for h in range(heads):
            o = h // per_group
            ok = (i // w == j // w) & ((i % w) % r == o) & ((j % w) % r == o)
            counts[h] += ok.float()
    return counts


def oracle(mod, x, counts):
    """MultiheadSparseAttention's computation in fp32 torch ops, attention over the multiset."""
    E, kv, H, Hkv, D = mod.embed_dim, mod.kv_dim, mod.num_heads, mod.kv_heads, mod.head_dim
    w = mod.in_proj_weight.float()
    b = mod.in_proj_bias.float() if mod.in_proj_bias is not None else None
    qkv = torch.nn.functional.linear(x.float(), w, b)
    q, k, v = qkv.split([E, kv, kv], dim=-1)
    q, k, v = q.unflatten(-1, (H, D)), k.unflatten(-1, (Hkv, D)), v.unflatten(-1, (Hkv, D))
    if mod.rotary:
        q = spattn._rotary(q, 0, mod.rotary_base, mod.rotary_interleaved)
        k = spattn._rotary(k, 0, mod.rotary_base, mod.rotary_interleaved)
    k, v = k.repeat_interleave(H // Hkv, dim=2), v.repeat_interleave(H // Hkv, dim=2)
    s = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(D)
    s = s.masked_fill(counts[None] == 0, float("-inf"))
    p = counts[None] * torch.exp(s - s.amax(-1, keepdim=True))
    p = p / p.sum(-1, keepdim=True)
    a = torch.einsum("bhij,bjhd->bihd", p, v).flatten(-2)
    if mod.inner_attn_ln is not None:
        ln = mod.inner_attn_ln
        a = torch.nn.functional.layer_norm(a, (E,), ln.weight.float(), ln.bias.float(), ln.eps)
    return torch.nn.functional.linear(a, mod.out_proj.weight.float(),
                                      mod.out_proj.bias.float() if mod.out_proj.bias is not None else None)


segments, rates = [64, 128], [1, 2]
for dtype in (torch.bfloat16, torch.float16):
    for kv_heads, rotary, sub_ln in ((4, False, False), (2, True, False), (2, True, True)):
        torch.manual_seed(2)
        mod = spattn.nn.MultiheadSparseAttention(256, 4, device="cuda", dtype=dtype, kv_heads=kv_heads,
                                                 pattern={"type": "longnet", "segments": segments, "rates": rates},
                                                 rotary=rotary, sub_layernorm=sub_ln)
        with torch.no_grad():
            mod.in_proj_weight.mul_(2)
            mod.in_proj_bias.uniform_(-0.5, 0.5)
        x = torch.randn(2, 384, 256, device="cuda").to(dtype)
        with torch.no_grad():
            out, _ = mod(x, x, x)
            ref = oracle(mod, x, longnet_counts(384, 4, segments, rates, "cuda"))
        check(f"longnet kv_heads={kv_heads} rotary={rotary} sub_ln={sub_ln}", dtype, [("out", out, ref)])

# 3. CrossMemoryAttention: residual, no residual and fuse_with_memory against the inner module.
fuse = spattn.nn.CrossMemoryAttention(256, 4, fusion_ratio=0.3, device="cuda", dtype=torch.bfloat16)
x = torch.randn(2, 64, 256, device="cuda", dtype=torch.bfloat16)
memory = torch.randn(2, 96, 256, device="cuda", dtype=torch.bfloat16)
with torch.no_grad():
    a = fuse.attn(x, memory, memory)[0].float()
    check("cross-memory", torch.bfloat16, [
        ("residual", fuse(x, memory), x.float() + 0.3 * a),
        ("no residual", fuse(x, memory, residual=False), a),
        ("fuse_with_memory", fuse.fuse_with_memory(x, memory, 0.25), 0.75 * x.float() + 0.25 * a)])

# A padded memory bank: batch 0 uses 96 slots, batch 1 the first 40; the read equals the
# inner module over each batch's used slots alone.
pad = torch.zeros(2, 96, dtype=torch.bool, device="cuda")
pad[1, 40:] = True
with torch.no_grad():
    got = fuse(x, memory, memory_key_padding_mask=pad)
    ref = torch.cat([fuse(x[:1], memory[:1, :96]), fuse(x[1:], memory[1:, :40])]).float()
    check("cross-memory, padded bank", torch.bfloat16, [("residual", got, ref)])
    got = fuse.fuse_with_memory(x, memory, 0.5, memory_key_padding_mask=pad)
    ref = torch.cat([fuse.fuse_with_memory(x[:1], memory[:1], 0.5),
                     fuse.fuse_with_memory(x[1:], memory[1:, :40], 0.5)]).float()
    check("cross-memory, padded bank", torch.bfloat16, [("fuse_with_memory", got, ref)])

if failures:
    print("FAILED:\n  " + "\n  ".join(failures))
    sys.exit(1)
print("ok")
