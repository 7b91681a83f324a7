"""Thin ctypes wrapper over libspattn's C ABI (include/spattn/spattn.h).

Accepts PyTorch CUDA tensors by data_ptr(): Q [B, Nq, Hq, D], K/V [B, Nk, Hkv, D]
(fp16/bf16, last dim contiguous), returns O like Q and optionally LSE [B, Hq, Nq].
The library is found through $SPATTN_LIB, else beside this file (the package that
`pip install .` installs), else in this checkout's build tree.

    import spattn, torch
    attn = spattn.Attention({"type": "local_window", "window": 1024})
    out = attn(q, k, v)

For training, spattn.attention(q, k, v, pattern) is differentiable (a torch.library
custom op with an autograd formula and a fake implementation, so torch.compile traces
through it), and spattn.SparseAttention(pattern) is the same as an nn.Module.
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
    installed = os.path.join(here, "libspattn.so")  # the package `pip install .` installs
    if os.path.exists(installed):
        return installed
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
_lib.spattn_attention_backward.argtypes = [ctypes.c_void_p] + [ctypes.POINTER(_Tensor)] * 9 + [ctypes.c_void_p]
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

    def __init__(self, pattern, config=None, scale=None, use_tuning_db=True, backward_config=None,
                 deterministic=False):
        options = {"use_tuning_db": use_tuning_db, "deterministic": bool(deterministic)}
        if config is not None:
            options["config"] = config
        if backward_config is not None:
            options["backward_config"] = backward_config
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

    def backward(self, q, k, v, out, lse, d_out, dq=None, dk=None, dv=None, stream=None):
        """Gradients of forward(q, k, v) -> (out, lse) for d_out; returns (dq, dk, dv)."""
        import torch
        dq = torch.empty_like(q) if dq is None else dq
        dk = torch.empty_like(k) if dk is None else dk
        dv = torch.empty_like(v) if dv is None else dv
        if stream is None:
            stream = torch.cuda.current_stream(q.device).cuda_stream
        views = [_view(t) for t in (q, k, v, out, lse, d_out, dq, dk, dv)]
        _check(_lib.spattn_attention_backward(self._handle, *[ctypes.pointer(x) for x in views],
                                              ctypes.c_void_p(stream)))
        return dq, dk, dv

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


# ---- autograd: a torch.library custom op -----------------------------------------------

_attentions = {}  # (pattern text, scale, deterministic) -> Attention; plans are kept per problem inside


def _attention_for(pattern, scale, deterministic=False):
    key = (pattern, scale, deterministic)
    if key not in _attentions:
        _attentions[key] = Attention(pattern, scale=scale if scale > 0 else None, deterministic=deterministic)
    return _attentions[key]


_ops = None


def _register_ops():
    global _ops
    if _ops is not None:
        return _ops
    import torch
    from torch import Tensor

    @torch.library.custom_op("spattn::attention_forward", mutates_args=())
    def attention_forward(q: Tensor, k: Tensor, v: Tensor, pattern: str, scale: float,
                          deterministic: bool) -> tuple[Tensor, Tensor]:
        out = torch.empty_like(q)
        lse = torch.empty((q.shape[0], q.shape[2], q.shape[1]), device=q.device, dtype=torch.float32)
        _attention_for(pattern, scale).forward(q, k, v, out=out, lse=lse)
        return out, lse

    @attention_forward.register_fake
    def _(q, k, v, pattern, scale, deterministic):
        return torch.empty_like(q), q.new_empty((q.shape[0], q.shape[2], q.shape[1]), dtype=torch.float32)

    @torch.library.custom_op("spattn::attention_backward", mutates_args=())
    def attention_backward(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, d_out: Tensor, pattern: str,
                           scale: float, deterministic: bool) -> tuple[Tensor, Tensor, Tensor]:
        return _attention_for(pattern, scale, deterministic).backward(q, k, v, out, lse, d_out.contiguous())

    @attention_backward.register_fake
    def _(q, k, v, out, lse, d_out, pattern, scale, deterministic):
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

    def setup_context(ctx, inputs, output):
        q, k, v, pattern, scale, deterministic = inputs
        out, lse = output
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.pattern, ctx.scale, ctx.deterministic = pattern, scale, deterministic

    def backward(ctx, d_out, d_lse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = torch.ops.spattn.attention_backward(q, k, v, out, lse, d_out, ctx.pattern, ctx.scale,
                                                         ctx.deterministic)
        return dq, dk, dv, None, None, None

    attention_forward.register_autograd(backward, setup_context=setup_context)
    _ops = torch.ops.spattn
    return _ops


def attention(q, k, v, pattern, scale=None, deterministic=False):
    """Differentiable sparse attention: q [B, Nq, Hq, D], k/v [B, Nk, Hkv, D] (fp16/bf16, CUDA).

    scale defaults to 1/sqrt(D). The forward saves O and LSE; the backward runs spattn's
    backward kernels (deterministic=True: bitwise reproducible gradients, no atomics)."""
    out, _ = _register_ops().attention_forward(q, k, v, _pattern_text(pattern), float(scale or 0.0),
                                               bool(deterministic))
    return out


try:
    import torch as _torch
    _Module = _torch.nn.Module
except ImportError:  # the C ABI wrapper works without PyTorch; the op and the module need it
    class _Module:
        def __init__(self, *args, **kwargs):
            raise SpattnError(1, "spattn.SparseAttention needs PyTorch (import torch failed)")


class SparseAttention(_Module):
    """nn.Module form of attention(): SparseAttention(pattern)(q, k, v)."""

    def __init__(self, pattern, scale=None, deterministic=False):
        super().__init__()
        self.pattern = _pattern_text(pattern)
        self.scale = scale
        self.deterministic = deterministic

    def forward(self, q, k, v):
        return attention(q, k, v, self.pattern, self.scale, self.deterministic)
