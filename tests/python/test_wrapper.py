"""The ctypes wrapper over the C ABI on a host without a GPU (and without PyTorch):
it loads, reports the version, computes layout statistics, and turns errors into
SpattnError with the library's message."""
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
print("ok")
