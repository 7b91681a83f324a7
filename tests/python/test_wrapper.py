"""The ctypes wrapper over the C ABI on a host without a GPU (and without PyTorch):
it loads, reports the version, computes layout statistics, and turns errors into
SpattnError with the library's message; the selective scan and Performer handles check
their options, Performer's features are the seeded draw and follow a redraw, and the C
ABI's scan validates its tensors before it needs a GPU; adaptive_geometry gives the block
grid of adaptive patterns (and refuses other patterns by kind), and the C ABI's adaptive
forward names bad descriptors. Documents: the check_lengths option, the C ABI's varlen and
padded forwards and backwards naming bad descriptors (ArgumentError: a SpattnError and a
ValueError), and with PyTorch attention_varlen's and the padded forward's argument checks
on CPU tensors, the key-padding mask's conversion to lengths (prefix masks only), the
gradients' calls (Attention.backward with padding, backward_varlen, attention with a
mask) refusing bad arguments by name, and the differentiable attention_varlen refusing
out= / lse= / stream= buffers."""
import json
import sys

import spattn

assert spattn.version(), "empty version"
stats = spattn.pattern_stats({"type": "local_window", "window": 64}, 1024, heads=2)
assert 0 < stats["density"] < 1 and stats["allowed_pairs"] > 0, stats
try:
    spattn.pattern_stats({"type": "local_window", "window": -3}, 1024)
except spattn.SpattnError as e:
    assert e.status == 1 and "window" in str(e), (e.status, str(e))
else:
    sys.exit("a bad pattern was accepted")
# Options of the C ABI: the backward's deterministic mode and a record file are accepted;
# an unknown option is refused, naming the known ones.
a = spattn.Attention({"type": "dense", "causal": True}, deterministic=True, backward_config="64x64w4s2")
del a
import ctypes  # noqa: E402
handle = ctypes.c_void_p()
status = spattn._lib.spattn_attention_create(b"dense", b'{"record": "/tmp/unused.record", "nope": 1}',
                                             ctypes.byref(handle))
message = spattn._lib.spattn_last_error().decode()
assert status != 0 and "nope" in message and "deterministic, record, check_lengths" in message, (status, message)
a = spattn.Attention("dense", check_lengths=False)
del a
assert issubclass(spattn.ArgumentError, spattn.SpattnError) and issubclass(spattn.ArgumentError, ValueError)
try:
    spattn.Attention("dense", config="7x7")
except ValueError as e:  # the library's invalid argument, as an ArgumentError
    assert isinstance(e, spattn.SpattnError) and e.status == 1, (type(e), str(e))
else:
    sys.exit("a bad config was accepted")

# The selective scan: options are checked when the handle is made.
scan = spattn.SelectiveScan(config="32x8x16")
assert scan.explain() == "no selective scan has run yet\n", scan.explain()
del scan
try:
    spattn.SelectiveScan(config="32x3x16")
except spattn.SpattnError as e:
    assert e.status == 1 and "segments" in str(e), (e.status, str(e))
else:
    sys.exit("a bad scan config was accepted")

# Performer: feature counts the kernels do not serve are refused as unsupported (2); the
# features are reproducible by seed and change with a redraw.
try:
    spattn.Performer(64, features=17)
except spattn.SpattnError as e:
    assert e.status == 2 and "multiples of 16" in str(e), (e.status, str(e))
else:
    sys.exit("17 random features were accepted")
try:
    spattn.Performer(64, seed=-1)
except spattn.SpattnError as e:
    assert e.status == 1 and "seed" in str(e), (e.status, str(e))
else:
    sys.exit("a negative seed was accepted")
p1, p2 = spattn.Performer(32, features=48, seed=5), spattn.Performer(32, features=48, seed=5)


def rows(f):
    return f.tolist() if hasattr(f, "tolist") else f


w1 = rows(p1.features())
assert len(w1) == 48 and len(w1[0]) == 32, (len(w1), len(w1[0]))
assert w1 == rows(p2.features()), "the same seed drew different features"
p2.redraw(6)
assert p2.seed == 6 and rows(p2.features()) != w1, "redraw did not change the features"
assert p1.explain() == "no performer forward has run yet\n", p1.explain()

# The C ABI's scan validates descriptors (fake device addresses: nothing reaches a GPU).
def desc(code, shape, n):
    t = spattn._Tensor()
    t.data, t.dtype, t.rank = (1 << 32) | (n << 8), code, len(shape)
    stride = 1
    for d in reversed(range(len(shape))):
        t.shape[d], t.strides[d] = shape[d], stride
        stride *= shape[d]
    return ctypes.pointer(t)


handle = ctypes.c_void_p()
assert spattn._lib.spattn_selective_scan_create(None, ctypes.byref(handle)) == 0, spattn._lib.spattn_last_error()
bf16, fp32 = 1, 2
x, y = desc(bf16, [2, 7, 5], 1), desc(bf16, [2, 7, 5], 2)
delta_bad = desc(bf16, [2, 6, 5], 3)
a_log, b, c = desc(fp32, [5, 16], 4), desc(bf16, [2, 7, 16], 5), desc(bf16, [2, 7, 16], 6)
status = spattn._lib.spattn_selective_scan_forward(handle, x, delta_bad, a_log, b, c, None, None, None, y, None, 1,
                                                   None)
message = spattn._lib.spattn_last_error().decode()
assert status == 1 and message.startswith("delta: ") and "[2, 7, 5]" in message, (status, message)
spattn._lib.spattn_selective_scan_destroy(handle)

# Adaptive patterns: the block grid (no GPU needed).
causal_top4 = {"type": "adaptive", "block": 64, "top_k": 4, "causal": True}
assert spattn.adaptive_geometry(causal_top4, 1000, 1000) == (16, 16, 4), spattn.adaptive_geometry(causal_top4, 1000, 1000)
assert spattn.adaptive_geometry(causal_top4, 1000) == (16, 16, 4)
assert spattn.adaptive_geometry('{"type":"adaptive","block":128,"keep_ratio":0.25}', 500, 1000) == (4, 8, 2)
assert spattn.adaptive_geometry(causal_top4, 100, 1000) == (2, 16, 4)
for bad, needle in ((({"type": "local_window", "window": 64}, 1000, 1000), "'local_window' pattern"),
                    (("dense", 1000, 1000), "'dense' pattern"),
                    ((causal_top4, 0, 1000), "empty problem")):
    try:
        spattn.adaptive_geometry(*bad)
    except spattn.SpattnError as e:
        assert e.status == 1 and needle in str(e), (e.status, str(e))
    else:
        sys.exit(f"adaptive_geometry{bad} was accepted")
a = spattn.Attention(causal_top4)
assert json.loads(a.pattern) == causal_top4, a.pattern
# The C ABI's adaptive forward: descriptors are checked by name before anything needs a GPU.
handle = ctypes.c_void_p()
assert spattn._lib.spattn_attention_create(json.dumps(causal_top4).encode(), None, ctypes.byref(handle)) == 0
q4, k4, v4, o4 = (desc(bf16, [2, 1000, 4, 64], n) for n in (1, 2, 3, 4))
scores_bad = desc(fp32, [2, 4, 16, 16], 5)
scores_bad.contents.rank = 5
blocks = desc(3, [2, 4, 16, 4], 6)  # SPATTN_INT32
status = spattn._lib.spattn_attention_forward_adaptive(handle, q4, k4, v4, o4, None, scores_bad, None, None, blocks,
                                                       None, None)
message = spattn._lib.spattn_last_error().decode()
assert status == 1 and "scores: rank must be 1 to 4 (got 5)" in message, (status, message)
status = spattn._lib.spattn_attention_forward_adaptive(None, q4, k4, v4, o4, None, None, None, None, blocks, None,
                                                       None)
message = spattn._lib.spattn_last_error().decode()
assert status == 1 and "attention handle is NULL" in message, (status, message)
gates_bad = desc(fp32, [2, 4, 16, 16], 7)
gates_bad.contents.rank = 5
status = spattn._lib.spattn_attention_forward_adaptive(handle, q4, k4, v4, o4, None, None, None, None, None,
                                                       gates_bad, None)
message = spattn._lib.spattn_last_error().decode()
assert status == 1 and "gates: rank must be 1 to 4 (got 5)" in message, (status, message)
spattn._lib.spattn_attention_destroy(handle)

# The C ABI's documents forwards: descriptors checked by name before anything needs a GPU.
handle = ctypes.c_void_p()
assert spattn._lib.spattn_attention_create(b'{"type":"dense","causal":true}', b'{"check_lengths": false}',
                                           ctypes.byref(handle)) == 0, spattn._lib.spattn_last_error()
q3, k3, v3, o3 = (desc(bf16, [300, 4, 64], n) for n in (1, 2, 3, 4))
cu_q, cu_k, cu_f32 = desc(3, [3], 5), desc(3, [3], 6), desc(fp32, [3], 7)
for args, needle in (((None, q3, k3, v3, o3, None, cu_q, cu_k, 200, 200, None), "attention handle is NULL"),
                     ((handle, q3, k3, v3, o3, None, cu_f32, cu_k, 200, 200, None),
                      "cu_seqlens_q must be a contiguous device int32 [3]"),
                     ((handle, q3, k3, v3, o3, None, cu_q, desc(3, [4], 6), 200, 200, None),
                      "cu_seqlens_k must be a contiguous device int32 [3]"),
                     ((handle, q4, k3, v3, o3, None, cu_q, cu_k, 200, 200, None),
                      "Q must have 3 dimensions [total_q, Hq, D]"),
                     ((handle, q3, k3, v3, o3, desc(fp32, [1, 4, 300], 8), cu_q, cu_k, 200, 200, None),
                      "LSE must have 2 dimensions [Hq, total_q]")):
    status = spattn._lib.spattn_attention_forward_varlen(*args)
    message = spattn._lib.spattn_last_error().decode()
    assert status == 1 and needle in message, (status, message, needle)
status = spattn._lib.spattn_attention_forward_padded(handle, q4, k4, v4, o4, None, None, None, None)
message = spattn._lib.spattn_last_error().decode()
assert status == 1 and "needs seqused_k" in message, (status, message)
status = spattn._lib.spattn_attention_forward_padded(handle, q4, k4, v4, o4, None, None, desc(3, [3], 5), None)
message = spattn._lib.spattn_last_error().decode()
assert status == 1 and "seqused_k must be a contiguous device int32 [2]" in message, (status, message)

# The C ABI's documents backwards: declared to ctypes, and their descriptors checked by name
# before anything needs a GPU.
for name, count in (("spattn_attention_backward_varlen", 15), ("spattn_attention_backward_padded", 13)):
    fn = getattr(spattn._lib, name)
    assert len(fn.argtypes) == count, (name, fn.argtypes)
lse3 = desc(fp32, [4, 300], 8)
k3b, v3b = desc(bf16, [300, 2, 64], 2), desc(bf16, [300, 2, 64], 3)
do3, dq3, dk3, dv3 = desc(bf16, [300, 4, 64], 9), desc(bf16, [300, 4, 64], 10), desc(bf16, [300, 2, 64], 11), \
    desc(bf16, [300, 2, 64], 12)


def varlen_grads(**kw):
    a = dict(attn=handle, q=q3, k=k3b, v=v3b, o=o3, lse=lse3, d_o=do3, dq=dq3, dk=dk3, dv=dv3, cu_q=cu_q, cu_k=cu_k,
             max_q=200, max_k=200)
    a.update(kw)
    status = spattn._lib.spattn_attention_backward_varlen(*a.values(), None)
    return status, spattn._lib.spattn_last_error().decode()


for kw, needle in (({"attn": None}, "attention handle is NULL"),
                   ({"lse": None}, "lse is NULL"),
                   ({"lse": desc(fp32, [1, 4, 300], 8)}, "LSE must have 2 dimensions [Hq, total_q]"),
                   ({"q": q4}, "Q must have 3 dimensions [total_q, Hq, D]"),
                   ({"dq": desc(bf16, [299, 4, 64], 10)}, "dQ must have shape"),
                   ({"dk": desc(bf16, [300, 4, 64], 11)}, "dK must have shape"),
                   ({"d_o": desc(0, [300, 4, 64], 9)}, "dO has dtype fp16 but Q has bf16"),
                   ({"cu_q": cu_f32}, "cu_seqlens_q must be a contiguous device int32 [3]"),
                   ({"cu_k": desc(3, [4], 6)}, "cu_seqlens_k must be a contiguous device int32 [3]"),
                   ({"max_q": -1}, "max_seqlen_q and max_seqlen_k must be >= 0")):
    status, message = varlen_grads(**kw)
    assert status == 1 and needle in message, (kw, status, message, needle)
l4 = desc(fp32, [2, 4, 1000], 5)
do4, dq4, dk4, dv4 = (desc(bf16, [2, 1000, 4, 64], n) for n in (6, 7, 8, 9))
for lengths, needle in (((None, None), "backward_padded needs seqused_k"),
                        ((None, desc(3, [3], 10)), "seqused_k must be a contiguous device int32 [2]"),
                        ((desc(3, [3], 10), None), "seqused_q must be a contiguous device int32 [2]")):
    status = spattn._lib.spattn_attention_backward_padded(handle, q4, k4, v4, o4, l4, do4, dq4, dk4, dv4, *lengths,
                                                          None)
    message = spattn._lib.spattn_last_error().decode()
    assert status == 1 and needle in message, (status, message, needle)
spattn._lib.spattn_attention_destroy(handle)

# With PyTorch (still no GPU needed): tensors that are not on a CUDA device are refused by name.
try:
    import torch
except ImportError:
    torch = None
if torch is not None:
    t = torch.zeros(1, 4, 8)
    try:
        spattn.selective_scan(t, t, torch.zeros(8, 16), torch.zeros(1, 4, 16), torch.zeros(1, 4, 16))
    except spattn.SpattnError as e:
        assert e.status == 1 and "CUDA device" in str(e), (e.status, str(e))
    else:
        sys.exit("CPU tensors were accepted by selective_scan")
    try:
        spattn.Performer(64, features=32)(torch.zeros(1, 4, 2, 64), torch.zeros(1, 4, 2, 64), torch.zeros(1, 4, 2))
    except spattn.SpattnError as e:
        assert e.status == 1 and "v: shape" in str(e), (e.status, str(e))
    else:
        sys.exit("a 3-D v was accepted by Performer")
    # Adaptive inputs on CPU tensors are refused by name (before any conversion or launch).
    t = torch.zeros(2, 1000, 4, 64, dtype=torch.bfloat16)
    try:
        a(t, t, t, scores=torch.zeros(2, 4, 16, 16), return_blocks=True)
    except spattn.SpattnError as e:
        assert e.status == 1 and "CUDA device" in str(e), (e.status, str(e))
    else:
        sys.exit("CPU tensors were accepted by an adaptive forward")

    # Documents: the wrapper's own checks, cheap and before any launch (CPU tensors reach
    # the device check last).
    def expect_value_error(what, fn, needle):
        try:
            fn()
        except ValueError as e:
            assert isinstance(e, spattn.SpattnError) and e.status == 1, (what, type(e), str(e))
            assert needle in str(e), (what, str(e), needle)
        else:
            sys.exit(f"{what} was accepted")

    causal = {"type": "dense", "causal": True}
    q, kv = torch.zeros(300, 4, 64, dtype=torch.bfloat16), torch.zeros(300, 2, 64, dtype=torch.bfloat16)
    cu = torch.tensor([0, 100, 300], dtype=torch.int32)

    def varlen(**kw):
        a = dict(q=q, k=kv, v=kv, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=200, max_seqlen_k=200,
                 pattern=causal)
        a.update(kw)
        return spattn.attention_varlen(**a)

    expect_value_error("a 4-D q", lambda: varlen(q=q.unsqueeze(0)), "packed documents are [total_q, Hq, D]")
    expect_value_error("v unlike k", lambda: varlen(v=kv[:299]), "expected k's")
    expect_value_error("3 query heads over 2", lambda: varlen(q=q[:, :3]), "multiple of key/value heads")
    expect_value_error("fp16 k", lambda: varlen(k=kv.half()), "share one dtype")
    expect_value_error("fp32 q", lambda: varlen(q=q.float(), k=kv.float(), v=kv.float()), "float16, bfloat16")
    expect_value_error("int64 offsets", lambda: varlen(cu_seqlens_q=cu.long()), "expected torch.int32")
    expect_value_error("offsets of two counts", lambda: varlen(cu_seqlens_k=cu[:2]), "as many as cu_seqlens_q")
    expect_value_error("no document", lambda: varlen(cu_seqlens_q=cu[:1], cu_seqlens_k=cu[:1]), "at least one")
    expect_value_error("negative max_seqlen", lambda: varlen(max_seqlen_k=-1), "must be >= 0")
    expect_value_error("lse of the batched layout", lambda: varlen(lse=torch.zeros(1, 4, 300)), "[Hq, total_q]")
    expect_value_error("offsets as a list", lambda: varlen(cu_seqlens_q=[0, 100, 300]), "expected a torch.Tensor")
    expect_value_error("CPU tensors", lambda: varlen(), "CUDA device")
    # The differentiable path: inputs that require grad reach the op (and the device check);
    # buffers and a stream are for calls without gradients.
    leaf = q.clone().requires_grad_()
    expect_value_error("CPU tensors that require grad", lambda: varlen(q=leaf), "CUDA device")
    expect_value_error("CPU offsets for the op", lambda: varlen(q=leaf, cu_seqlens_k=[0, 100, 300]),
                       "cu_seqlens_k: expected a torch.Tensor")
    for kw in ({"out": torch.empty_like(q)}, {"lse": torch.empty(4, 300)}, {"stream": 0}):
        expect_value_error(f"{list(kw)} with grad", lambda: varlen(q=leaf, **kw), "differentiable path allocates")
        with torch.no_grad():  # accepted without grad: reaches the device check
            expect_value_error(f"{list(kw)} without grad", lambda: varlen(q=leaf, **kw), "CUDA device")

    # Gradients without autograd: the wrapper names what it checks before any launch.
    grads_of = spattn.Attention(causal)
    out3, lse3 = torch.zeros_like(q), torch.zeros(4, 300)

    def varlen_backward(**kw):
        a = dict(q=q, k=kv, v=kv, out=out3, lse=lse3, d_out=out3, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=200,
                 max_seqlen_k=200)
        a.update(kw)
        return grads_of.backward_varlen(**a)

    expect_value_error("backward_varlen without lse", lambda: varlen_backward(lse=None), "lse: expected a torch.Tensor")
    expect_value_error("backward_varlen offsets as a list", lambda: varlen_backward(cu_seqlens_q=[0, 100, 300]),
                       "cu_seqlens_q: expected a torch.Tensor")
    expect_value_error("backward_varlen dq as an array", lambda: varlen_backward(dq=1.0), "dq: expected a torch.Tensor")
    expect_value_error("backward_varlen on CPU", lambda: varlen_backward(), "CUDA device")

    # Key-padding masks (True = padded key): prefix masks become lengths; others are refused.
    mask = torch.tensor([[False, False, True, True], [False, False, False, False], [True, True, True, True]])
    used = spattn.seqused_from_key_padding_mask(mask)
    assert used.dtype == torch.int32 and used.tolist() == [2, 4, 0], used
    expect_value_error("a mask with a gap", lambda: spattn.seqused_from_key_padding_mask(
        torch.tensor([[False, True, True], [False, True, False]])), "key_padding_mask row 1 is not valid keys")
    expect_value_error("a left-padded mask", lambda: spattn.seqused_from_key_padding_mask(
        torch.tensor([[True, False]])), "row 0")
    expect_value_error("a float mask", lambda: spattn.seqused_from_key_padding_mask(torch.zeros(2, 4)),
                       "expected a torch.bool [B, Nk]")
    dense = spattn.Attention(causal)
    q4t, k4t = torch.zeros(2, 4, 4, 64, dtype=torch.bfloat16), torch.zeros(2, 4, 2, 64, dtype=torch.bfloat16)
    expect_value_error("padding with adaptive inputs", lambda: dense(q4t, k4t, k4t, seqused_k=used[:2],
                                                                     return_blocks=True), "do not combine")
    expect_value_error("a packed q padded", lambda: dense(q4t[0], k4t, k4t, seqused_k=used[:2]),
                       "padded batches are [B, N, H, D]")
    expect_value_error("CPU tensors padded", lambda: dense(q4t, k4t, k4t, key_padding_mask=mask[:2]), "CUDA device")

    # The padded backward and the differentiable padded attention check the padding as the
    # forward does (the mask's conversion needs no GPU).
    holes = torch.tensor([[False, False, False, False], [False, True, False, True]])

    def padded_backward(**kw):
        return dense.backward(q4t, k4t, k4t, q4t, torch.zeros(2, 4, 4), q4t, **kw)

    for what, fn in (("Attention.backward", padded_backward),
                     ("attention", lambda **kw: spattn.attention(q4t, k4t, k4t, causal, **kw))):
        expect_value_error(f"{what}: a mask with a hole", lambda: fn(key_padding_mask=holes),
                           "key_padding_mask row 1 is not valid keys followed by padding")
        expect_value_error(f"{what}: a mask of another length", lambda: fn(key_padding_mask=mask),
                           "key_padding_mask: shape (3, 4); expected [B, Nk] = [2, 4]")
        expect_value_error(f"{what}: mask and seqused_k", lambda: fn(key_padding_mask=mask[:2], seqused_k=used[:2]),
                           "pass one of them")
        expect_value_error(f"{what}: int64 lengths", lambda: fn(seqused_k=used[:2].long()),
                           "seqused_k: torch.int64 (2,); expected torch.int32 [B] = [2]")
        expect_value_error(f"{what}: lengths of three batches", lambda: fn(seqused_q=used), "seqused_q")
        expect_value_error(f"{what}: on CPU", lambda: fn(key_padding_mask=mask[:2]), "CUDA device")
    expect_value_error("a packed q with padded gradients", lambda: dense.backward(
        q4t[0], k4t, k4t, q4t, torch.zeros(2, 4, 4), q4t, seqused_k=used[:2]), "padded batches are [B, N, H, D]")
    expect_value_error("gradients without lse", lambda: dense.backward(q4t, k4t, k4t, q4t, None, q4t),
                       "lse: expected a torch.Tensor")
print("ok")
