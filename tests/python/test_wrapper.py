"""The ctypes wrapper over the C ABI on a host without a GPU (and without PyTorch):
it loads, reports the version, computes layout statistics, and turns errors into
SpattnError with the library's message; the selective scan and Performer handles check
their options, Performer's features are the seeded draw and follow a redraw, and the C
ABI's scan validates its tensors before it needs a GPU; adaptive_geometry gives the block
grid of adaptive patterns (and refuses other patterns by kind), and the C ABI's adaptive
forward names bad descriptors."""
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
assert status != 0 and "nope" in message and "deterministic, record" in message, (status, message)

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
                                                       None)
message = spattn._lib.spattn_last_error().decode()
assert status == 1 and "scores: rank must be 1 to 4 (got 5)" in message, (status, message)
status = spattn._lib.spattn_attention_forward_adaptive(None, q4, k4, v4, o4, None, None, None, None, blocks, None)
message = spattn._lib.spattn_last_error().decode()
assert status == 1 and "attention handle is NULL" in message, (status, message)
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
print("ok")
