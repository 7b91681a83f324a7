"""Thin ctypes wrapper over libspattn's C ABI (include/spattn/spattn.h).

Accepts PyTorch CUDA tensors by data_ptr(): Q [B, Nq, Hq, D], K/V [B, Nk, Hkv, D]
(fp16/bf16, last dim contiguous), returns O like Q and optionally LSE [B, Hq, Nq].
The library is found through $SPATTN_LIB, else next to this file's build tree.

    import spattn, torch
    attn = spattn.Attention({"type": "local_window", "window": 1024})
    out = attn(q, k, v)
"""
import ctypes
import json
import os

_FP16, _BF16, _FP32 = 0, 1, 2


class SpattnError(RuntimeError):
    """A failed spattn call: .status is the C status code, str() the library's message."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class _Tensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("dtype", ctypes.c_int),
        ("rank", ctypes.c_int32),
        ("shape", ctypes.c_int64 * 4),
        ("strides", ctypes.c_int64 * 4),
    ]


def _find_library():
    env = os.environ.get("SPATTN_LIB")
    if env:
        return env
    here = os.path.dirname(os.path.abspath(__file__))
    for build in ("build", "build-gpu", "build-release"):
        path = os.path.join(here, "..", build, "libspattn.so")
        if os.path.exists(path):
            return path
    return "libspattn.so"


_lib = ctypes.CDLL(_find_library())
_lib.spattn_version.restype = ctypes.c_char_p
_lib.spattn_last_error.restype = ctypes.c_char_p
_lib.spattn_attention_create.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
_lib.spattn_attention_destroy.argtypes = [ctypes.c_void_p]
_lib.spattn_attention_forward.argtypes = [ctypes.c_void_p] + [ctypes.POINTER(_Tensor)] * 5 + [ctypes.c_void_p]
_lib.spattn_attention_explain.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t,
                                          ctypes.POINTER(ctypes.c_size_t)]
_lib.spattn_pattern_stats.argtypes = [ctypes.c_char_p] + [ctypes.c_int64] * 6 + [
    ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t)]


def _check(status):
    if status != 0:
        raise SpattnError(status, _lib.spattn_last_error().decode())


def version():
    return _lib.spattn_version().decode()


def _pattern_text(pattern):
    return pattern if isinstance(pattern, str) else json.dumps(pattern)


def _view(t):
    import torch
    codes = {torch.float16: _FP16, torch.bfloat16: _BF16, torch.float32: _FP32}
    if t.dtype not in codes:
        raise SpattnError(1, f"unsupported tensor dtype {t.dtype}; supported: float16, bfloat16 (float32 for LSE)")
    if not t.is_cuda:
        raise SpattnError(1, "tensors must be on a CUDA device")
    v = _Tensor()
    v.data = t.data_ptr()
    v.dtype = codes[t.dtype]
    v.rank = t.dim()
    for d in range(t.dim()):
        v.shape[d] = t.shape[d]
        v.strides[d] = t.stride(d)
    return v


class Attention:
    """Sparse attention with a pattern (dict, JSON text or preset name)."""

    def __init__(self, pattern, config=None, scale=None, use_tuning_db=True):
        options = {"use_tuning_db": use_tuning_db}
        if config is not None:
            options["config"] = config
        if scale is not None:
            options["scale"] = float(scale)
        handle = ctypes.c_void_p()
        _check(_lib.spattn_attention_create(_pattern_text(pattern).encode(), json.dumps(options).encode(),
                                            ctypes.byref(handle)))
        self._handle = handle

    def __del__(self):
        if getattr(self, "_handle", None):
            _lib.spattn_attention_destroy(self._handle)
            self._handle = None

    def forward(self, q, k, v, out=None, lse=None, stream=None):
        import torch
        if out is None:
            out = torch.empty_like(q)
        if stream is None:
            stream = torch.cuda.current_stream(q.device).cuda_stream
        views = [_view(q), _view(k), _view(v), _view(out)]
        lse_view = ctypes.pointer(_view(lse)) if lse is not None else None
        _check(_lib.spattn_attention_forward(self._handle, *[ctypes.pointer(x) for x in views], lse_view,
                                             ctypes.c_void_p(stream)))
        return out

    __call__ = forward

    def explain(self):
        needed = ctypes.c_size_t()
        _check(_lib.spattn_attention_explain(self._handle, None, 0, ctypes.byref(needed)))
        buf = ctypes.create_string_buffer(needed.value)
        _check(_lib.spattn_attention_explain(self._handle, buf, needed.value, ctypes.byref(needed)))
        return buf.value.decode()


def pattern_stats(pattern, seq, kv_seq=None, heads=1, tile_m=128, tile_n=64, head_dim=128):
    """Layout statistics of a pattern as a dict (density, allowed_pairs, tiles, useful_flops)."""
    needed = ctypes.c_size_t()
    args = [_pattern_text(pattern).encode(), seq, kv_seq or seq, heads, tile_m, tile_n, head_dim]
    _check(_lib.spattn_pattern_stats(*args, None, 0, ctypes.byref(needed)))
    buf = ctypes.create_string_buffer(needed.value)
    _check(_lib.spattn_pattern_stats(*args, buf, needed.value, ctypes.byref(needed)))
    return json.loads(buf.value.decode())
