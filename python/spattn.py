"""Thin ctypes wrapper over libspattn's C ABI (include/spattn/spattn.h).

Accepts PyTorch CUDA tensors by data_ptr(): Q [B, Nq, Hq, D], K/V [B, Nk, Hkv, D]
(fp16/bf16, last dim contiguous), returns O like Q and optionally LSE [B, Hq, Nq].
The library is found through $SPATTN_LIB, else beside this file (the package that
`pip install .` installs), else in this checkout's build tree.

    import spattn, torch
    attn = spattn.Attention({"type": "local_window", "window": 1024})
    out = attn(q, k, v)

Adaptive (content-based top-k block) patterns choose their key blocks per call on the GPU
(include/spattn/adaptive.hpp); Attention.forward takes their per-call inputs and can
return the blocks chosen:

    attn = spattn.Attention({"type": "adaptive", "block": 64, "top_k": 4, "causal": True})
    nq_blocks, nk_blocks, max_k = spattn.adaptive_geometry(attn.pattern, nq, nk)
    out, blocks = attn(q, k, v, scores=scores, return_blocks=True)  # scores [B, Hq, nq_blocks, nk_blocks]
    out = spattn.attention(q, k, v, pattern, scores=scores, gates=gates)  # trains q, k, v and the gates

The linear-time mixers (include/spattn/linear.hpp), forward only:

    y = spattn.selective_scan(x, delta, a_log, b, c, d=d, z=z, delta_bias=bias)  # Mamba S6
    y = spattn.SelectiveScan(config="32x8x16")(x, delta, a_log, b, c)
    perf = spattn.Performer(head_dim=64, features=256, seed=0, causal=True)      # FAVOR+
    o = perf(q, k, v); perf.redraw(seed=1)

Packed variable-length documents (FlashAttention's varlen convention) and padded batches
(include/spattn/varlen.hpp):

    out = spattn.attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_q, max_k,
                                  {"type": "dense", "causal": True})   # q [total_q, Hq, D]
    out = attn(q, k, v, key_padding_mask=mask)   # [B, N, H, D]; mask [B, Nk], True = padded
    out = attn(q, k, v, seqused_k=lengths)       # int32 [B] on the GPU: keys used per batch

For training, spattn.attention(q, k, v, pattern) is differentiable (a torch.library
custom op with an autograd formula and a fake implementation, so torch.compile traces
through it), also over padded batches (seqused_k=, seqused_q=, key_padding_mask=), and
so is spattn.attention_varlen over packed documents for patterns whose rows are key
ranges (dense, causal, windows, global + local, ...); spattn.SparseAttention(pattern) is
attention() as an nn.Module. Attention.backward / backward_varlen are the gradients
without autograd.
"""
import contextlib
import ctypes
import json
import os

_FP16, _BF16, _FP32, _INT32 = 0, 1, 2, 3


class SpattnError(RuntimeError):
    """A failed spattn call: .status is the C status code, str() the library's message."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class ArgumentError(SpattnError, ValueError):
    """An invalid argument (status 1, SPATTN_ERROR_INVALID_ARGUMENT), found by the wrapper
    or by the library: a SpattnError that is also a ValueError."""

    def __init__(self, message):
        super().__init__(1, message)


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
_lib.spattn_attention_forward_adaptive.argtypes = ([ctypes.c_void_p] + [ctypes.POINTER(_Tensor)] * 10 +
                                                   [ctypes.c_void_p])
_lib.spattn_attention_backward_adaptive.argtypes = ([ctypes.c_void_p] + [ctypes.POINTER(_Tensor)] * 15 +
                                                    [ctypes.c_void_p])
_lib.spattn_adaptive_geometry.argtypes = ([ctypes.c_char_p, ctypes.c_int64, ctypes.c_int64] +
                                          [ctypes.POINTER(ctypes.c_int64)] * 3)
_lib.spattn_attention_forward_varlen.argtypes = ([ctypes.c_void_p] + [ctypes.POINTER(_Tensor)] * 7 +
                                                [ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p])
_lib.spattn_attention_forward_padded.argtypes = [ctypes.c_void_p] + [ctypes.POINTER(_Tensor)] * 7 + [ctypes.c_void_p]
_lib.spattn_attention_backward.argtypes = [ctypes.c_void_p] + [ctypes.POINTER(_Tensor)] * 9 + [ctypes.c_void_p]
_lib.spattn_attention_backward_varlen.argtypes = ([ctypes.c_void_p] + [ctypes.POINTER(_Tensor)] * 11 +
                                                 [ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p])
_lib.spattn_attention_backward_padded.argtypes = ([ctypes.c_void_p] + [ctypes.POINTER(_Tensor)] * 11 +
                                                 [ctypes.c_void_p])
_lib.spattn_attention_explain.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t,
                                          ctypes.POINTER(ctypes.c_size_t)]
_lib.spattn_pattern_stats.argtypes = [ctypes.c_char_p] + [ctypes.c_int64] * 6 + [
    ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t)]
_explain_args = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t)]
_lib.spattn_selective_scan_create.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
_lib.spattn_selective_scan_destroy.argtypes = [ctypes.c_void_p]
_lib.spattn_selective_scan_forward.argtypes = ([ctypes.c_void_p] + [ctypes.POINTER(_Tensor)] * 10 +
                                               [ctypes.c_int32, ctypes.c_void_p])
_lib.spattn_selective_scan_explain.argtypes = _explain_args
_lib.spattn_performer_create.argtypes = [ctypes.c_int64, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
_lib.spattn_performer_destroy.argtypes = [ctypes.c_void_p]
_lib.spattn_performer_redraw.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
_lib.spattn_performer_features.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.c_size_t,
                                           ctypes.POINTER(ctypes.c_size_t)]
_lib.spattn_performer_forward.argtypes = [ctypes.c_void_p] + [ctypes.POINTER(_Tensor)] * 4 + [ctypes.c_void_p]
_lib.spattn_performer_explain.argtypes = _explain_args
_lib.spattn_nccl_unique_id.argtypes = [ctypes.c_char_p]
_lib.spattn_ring_create.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_int,
                                    ctypes.POINTER(ctypes.c_void_p)]
_lib.spattn_ring_destroy.argtypes = [ctypes.c_void_p]
_lib.spattn_ring_forward.argtypes = [ctypes.c_void_p] + [ctypes.POINTER(_Tensor)] * 5 + [ctypes.c_void_p]
_lib.spattn_ring_explain.argtypes = _explain_args
_lib.spattn_ring_timings.argtypes = _explain_args


def _check(status):
    if status == 1:
        raise ArgumentError(_lib.spattn_last_error().decode())
    if status != 0:
        raise SpattnError(status, _lib.spattn_last_error().decode())


def version():
    return _lib.spattn_version().decode()


def _pattern_text(pattern):
    return pattern if isinstance(pattern, str) else json.dumps(pattern)


def _view(t, name=None, supported="float16, bfloat16 (float32 for LSE)"):
    import torch
    where = f"{name}: " if name else ""
    if not isinstance(t, torch.Tensor):
        raise ArgumentError(f"{where}expected a torch.Tensor, got {type(t).__name__}")
    # int32 is for index tensors (the chosen blocks of adaptive patterns, document offsets
    # and lengths); the library refuses it anywhere else.
    codes = {torch.float16: _FP16, torch.bfloat16: _BF16, torch.float32: _FP32, torch.int32: _INT32}
    if t.dtype not in codes:
        raise ArgumentError(f"{where}unsupported tensor dtype {t.dtype}; supported: {supported}")
    if not t.is_cuda:
        raise ArgumentError(f"{where}tensors must be on a CUDA device (got {t.device})")
    if t.dim() > 4:
        raise ArgumentError(f"{where}{t.dim()} dimensions; at most 4")
    v = _Tensor()
    v.data = t.data_ptr()
    v.dtype = codes[t.dtype]
    v.rank = t.dim()
    for d in range(t.dim()):
        v.shape[d] = t.shape[d]
        v.strides[d] = t.stride(d)
    return v


def adaptive_geometry(pattern, nq, nk=None):
    """The block grid of an adaptive pattern at nq queries x nk keys (default nk = nq), as
    (nq_blocks, nk_blocks, max_k): blocks of the pattern's "block" tokens along each axis
    (ceil(N / block)) and the most key blocks a query block keeps, the last dimension of
    the chosen-blocks tensor [B, Hq, nq_blocks, max_k]. No GPU needed; SpattnError (status 1)
    for a pattern that is not one adaptive pattern or an empty shape."""
    nq_blocks, nk_blocks, max_k = ctypes.c_int64(), ctypes.c_int64(), ctypes.c_int64()
    _check(_lib.spattn_adaptive_geometry(_pattern_text(pattern).encode(), int(nq), int(nq if nk is None else nk),
                                         ctypes.byref(nq_blocks), ctypes.byref(nk_blocks), ctypes.byref(max_k)))
    return nq_blocks.value, nk_blocks.value, max_k.value


class Attention:
    """Sparse attention with a pattern (dict, JSON text or preset name).

    Adaptive patterns ({"type": "adaptive", "block": B, "top_k": k} or "keep_ratio": f,
    optionally "causal": true; include/spattn/adaptive.hpp) choose their key blocks on the
    GPU per call; see forward() for their inputs. They have no backward pass yet.

    Packed documents (forward_varlen) and padded batches (forward's seqused_k, seqused_q,
    key_padding_mask) check their lengths on the GPU; with check_lengths=True (the default)
    the call waits for that check and raises ArgumentError naming a bad entry; with False
    nothing waits (the call can be captured in a CUDA graph) and bad lengths leave the
    outputs unwritten.

    Gradients without autograd: backward() (whole problems and padded batches) and
    backward_varlen() (packed documents) take the forward's tensors and LSE; spattn.attention
    and spattn.attention_varlen are the differentiable forms."""

    def __init__(self, pattern, config=None, scale=None, use_tuning_db=True, backward_config=None,
                 deterministic=False, check_lengths=True):
        options = {"use_tuning_db": use_tuning_db, "deterministic": bool(deterministic),
                   "check_lengths": bool(check_lengths)}
        if config is not None:
            options["config"] = config
        if backward_config is not None:
            options["backward_config"] = backward_config
        if scale is not None:
            options["scale"] = float(scale)
        self.pattern = _pattern_text(pattern)
        handle = ctypes.c_void_p()
        _check(_lib.spattn_attention_create(self.pattern.encode(), json.dumps(options).encode(),
                                            ctypes.byref(handle)))
        self._handle = handle
        self._geometry = {}  # (nq, nk) -> adaptive_geometry

    def __del__(self):
        if getattr(self, "_handle", None):
            _lib.spattn_attention_destroy(self._handle)
            self._handle = None

    def forward(self, q, k, v, out=None, lse=None, stream=None, *, scores=None, wq=None, wk=None,
                return_blocks=False, gates=None, seqused_k=None, seqused_q=None, key_padding_mask=None):
        """O = attention(q, k, v) under the pattern, written into `out` (allocated like q if
        None) and LSE into `lse` [B, Hq, Nq] float32 if given; returns out, or (out, blocks)
        with return_blocks=True.

        Padded batches (include/spattn/varlen.hpp): batch b is a problem of its own used
        lengths, the pattern applied to it as if it ran alone (causal aligned bottom-right
        to those lengths, windows per batch):
          seqused_k: int32 [B] on q's device, the keys used per batch: keys past
            seqused_k[b] never attend;
          seqused_q: int32 [B] on q's device, the query rows used per batch (default: all
            Nq); the rows past seqused_q[b] get O = 0 and LSE = -inf;
          key_padding_mask: instead of seqused_k, a bool [B, Nk] on q's device in
            torch.nn.MultiheadAttention's convention: True = a padded key, ignored. The kept
            keys of each row must come first (valid keys, then padding); a mask that is not
            such a prefix is refused with ArgumentError (a ValueError). That check reads the
            mask back, so the call waits for the GPU; to capture a CUDA graph, convert once
            with seqused_from_key_padding_mask() and pass seqused_k. With Nq == Nk
            (self-attention) and no seqused_q, the mask bounds the queries too, as torch's
            causal and padding masks together place them: the valid rows match torch's, the
            padded rows get O = 0 (torch gives them values nobody reads).
          A batch without keys gets O = 0 and LSE = -inf (torch's attention gives NaN).
        The padded forward takes no adaptive inputs.

        Adaptive patterns only (the others refuse these):
          scores [B, Hq, nq_blocks, nk_blocks]: block scores to choose from instead of the
            block means' products (converted to float32, last dim contiguous);
          wq, wk: projections of the pooled blocks, [D, P] shared by every head or [Hq, D, P] /
            [Hkv, D, P] per head (converted with .float().contiguous()); both or neither,
            exclusive with scores;
          return_blocks: also return the chosen key blocks, int32 [B, Hq, nq_blocks, max_k]
            (see adaptive_geometry), ascending per row, -1 past the row's count;
          gates [B, Hq, nq_blocks, nk_blocks]: block gates (converted to contiguous float32):
            a chosen block's logits get log g added, a gate <= 0 removes the block.
        Shapes are checked by the library (SpattnError with its message)."""
        import torch
        given = scores is not None or wq is not None or wk is not None or gates is not None
        if seqused_k is not None or seqused_q is not None or key_padding_mask is not None:
            if given or return_blocks:
                raise ArgumentError("seqused_k / seqused_q / key_padding_mask do not combine with adaptive inputs "
                                    "(scores, wq, wk, gates, return_blocks)")
            return self._forward_padded(q, k, v, out, lse, stream, seqused_k, seqused_q, key_padding_mask)
        adaptive = None
        if given or return_blocks:
            temporaries = []
            scores, wq, wk, gates = _adaptive_inputs(q, scores, wq, wk, gates, temporaries)
            blocks = self._blocks_for(q, k) if return_blocks else None
            adaptive = (scores, wq, wk, blocks, gates, temporaries)
        out = _forward(_lib.spattn_attention_forward, self._handle, q, k, v, out, lse, stream, adaptive)
        return (out, adaptive[3]) if return_blocks else out

    __call__ = forward

    def _forward_padded(self, q, k, v, out, lse, stream, seqused_k, seqused_q, key_padding_mask):
        import torch
        seqused_k, seqused_q, temporaries = _padded_lengths(q, k, v, seqused_k, seqused_q, key_padding_mask)
        _require_tensors({"out": out, "lse": lse})
        _same_device(("q", q), {"k": k, "v": v, "out": out, "lse": lse})
        if out is None:
            out = torch.empty_like(q)
        views = [_view(t, name) for name, t in (("q", q), ("k", k), ("v", v), ("out", out))]
        args = [ctypes.pointer(_view(t, name)) if t is not None else None
                for name, t in (("lse", lse), ("seqused_q", seqused_q), ("seqused_k", seqused_k))]
        with torch.cuda.device(q.device), _launch_stream(q.device, stream, temporaries) as handle:
            _check(_lib.spattn_attention_forward_padded(self._handle, *[ctypes.pointer(x) for x in views], *args,
                                                        ctypes.c_void_p(handle)))
        return out

    def forward_varlen(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, out=None, lse=None,
                       stream=None):
        """Packed variable-length documents (FlashAttention's varlen convention): q
        [total_q, Hq, D], k and v [total_k, Hkv, D] (float16 or bfloat16, head dim
        contiguous), cu_seqlens_q and cu_seqlens_k int32 [documents + 1] on q's device
        (non-decreasing offsets, empty documents allowed), max_seqlen_q / max_seqlen_k the
        longest document's rows (an upper bound; checked). Document d, query rows
        cu_seqlens_q[d] .. cu_seqlens_q[d + 1] - 1 and key rows cu_seqlens_k[d] ..
        cu_seqlens_k[d + 1] - 1, is a problem of its own: the pattern sees positions from the
        document's first row and its lengths, exactly as if it ran alone. Writes `out` (like
        q; None: allocated with zeros) and `lse` [Hq, total_q] float32 if given; rows outside
        every document are left as they are (multi-part patterns may write zeros there).
        Returns out. Lengths are checked as the constructor's check_lengths says (patterns
        whose tables come from the host always check them there); adaptive patterns raise
        SpattnError (status 2) with the reason."""
        import torch
        _require_tensors({"q": q, "k": k, "v": v, "cu_seqlens_q": cu_seqlens_q, "cu_seqlens_k": cu_seqlens_k,
                          "out": out, "lse": lse})
        for name, t, layout in (("q", q, "[total_q, Hq, D]"), ("k", k, "[total_k, Hkv, D]"),
                                ("v", v, "[total_k, Hkv, D]")):
            if t.dim() != 3:
                raise ArgumentError(f"{name}: shape {tuple(t.shape)}; packed documents are {layout}")
        if tuple(v.shape) != tuple(k.shape):
            raise ArgumentError(f"v: shape {tuple(v.shape)}; expected k's {tuple(k.shape)}")
        if q.shape[2] != k.shape[2]:
            raise ArgumentError(f"q has head dim {q.shape[2]} but k has {k.shape[2]}")
        if k.shape[1] == 0 or q.shape[1] % k.shape[1]:
            raise ArgumentError(f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})")
        for name, t in (("k", k), ("v", v)):
            if t.dtype != q.dtype:
                raise ArgumentError(f"{name}: dtype {t.dtype}, but q is {q.dtype}; q, k, v share one dtype")
        if q.dtype not in (torch.float16, torch.bfloat16):
            raise ArgumentError(f"q: dtype {q.dtype}; supported: float16, bfloat16")
        if out is not None and (tuple(out.shape) != tuple(q.shape) or out.dtype != q.dtype):
            raise ArgumentError(f"out: {out.dtype} {tuple(out.shape)}; expected q's {q.dtype} {tuple(q.shape)}")
        if lse is not None and (tuple(lse.shape) != (q.shape[1], q.shape[0]) or lse.dtype != torch.float32):
            raise ArgumentError(f"lse: {lse.dtype} {tuple(lse.shape)}; expected torch.float32 [Hq, total_q] = "
                                f"[{q.shape[1]}, {q.shape[0]}]")
        _check_lengths_vector("cu_seqlens_q", cu_seqlens_q, None, "[documents + 1]")
        _check_lengths_vector("cu_seqlens_k", cu_seqlens_k, cu_seqlens_q.shape[0],
                              "[documents + 1], as many as cu_seqlens_q")
        if cu_seqlens_q.shape[0] < 2:
            raise ArgumentError("cu_seqlens_q: one entry; [documents + 1] offsets need at least one document")
        max_q, max_k = int(max_seqlen_q), int(max_seqlen_k)
        if max_q < 0 or max_k < 0:
            raise ArgumentError(f"max_seqlen_q and max_seqlen_k must be >= 0; got {max_q} and {max_k}")
        _same_device(("q", q), {"k": k, "v": v, "cu_seqlens_q": cu_seqlens_q, "cu_seqlens_k": cu_seqlens_k,
                                "out": out, "lse": lse})
        if out is None:
            out = torch.zeros_like(q)
        views = [_view(t, name) for name, t in (("q", q), ("k", k), ("v", v), ("out", out))]
        lse_view = ctypes.pointer(_view(lse, "lse")) if lse is not None else None
        cu = [ctypes.pointer(_view(t, name)) for name, t in (("cu_seqlens_q", cu_seqlens_q),
                                                             ("cu_seqlens_k", cu_seqlens_k))]
        with torch.cuda.device(q.device), _launch_stream(q.device, stream, []) as handle:
            _check(_lib.spattn_attention_forward_varlen(self._handle, *[ctypes.pointer(x) for x in views], lse_view,
                                                        *cu, max_q, max_k, ctypes.c_void_p(handle)))
        return out

    def _blocks_for(self, q, k):
        """The chosen-blocks output of a forward over q, k (None where q or k is not 4-D: the
        library then refuses them by name)."""
        import torch
        if not (isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor) and q.dim() == 4 and k.dim() == 4):
            return None
        key = (q.shape[1], k.shape[1])
        if key not in self._geometry:
            self._geometry[key] = adaptive_geometry(self.pattern, *key)
        nq_blocks, _, max_k = self._geometry[key]
        return torch.empty((q.shape[0], q.shape[2], nq_blocks, max_k), dtype=torch.int32, device=q.device)

    def backward(self, q, k, v, out, lse, d_out, dq=None, dk=None, dv=None, stream=None, *, seqused_k=None,
                 seqused_q=None, key_padding_mask=None, scores=None, wq=None, wk=None, gates=None, gates_grad=None):
        """Gradients of forward(q, k, v) -> (out, lse) for d_out; returns (dq, dk, dv), written
        into the given buffers (allocated like q, k and v if None). lse [B, Hq, Nq] float32 is
        required: the forward's. seqused_k, seqused_q, key_padding_mask: the padded batch of
        the forward (the same arguments it took, with the same meaning, key_padding_mask
        checked and converted as there); the gradients of rows past the used lengths are
        zero. Shapes and dtypes are checked by the library (ArgumentError naming the tensor);
        static patterns whose rows are not key ranges (strided, LongNet, grids, custom blocks)
        and adaptive patterns have no padded backward yet (SpattnError, status 2).

        Adaptive patterns: scores, wq, wk and gates are the forward's (the selection runs
        again and chooses the forward's blocks); with gates the call returns (dq, dk, dv,
        gates_grad): dL/dg float32 like gates (written into gates_grad if given, contiguous
        float32), 0 where no block was chosen or the gate removed it."""
        import torch
        padded = seqused_k is not None or seqused_q is not None or key_padding_mask is not None
        adaptive = any(t is not None for t in (scores, wq, wk, gates, gates_grad))
        temporaries = []
        if padded and adaptive:
            raise ArgumentError("seqused_k / seqused_q / key_padding_mask do not combine with adaptive inputs "
                                "(scores, wq, wk, gates, gates_grad)")
        if gates_grad is not None and gates is None:
            raise ArgumentError("gates_grad needs the gates it is the gradient of (gates)")
        if adaptive:
            scores, wq, wk, gates = _adaptive_inputs(q, scores, wq, wk, gates, temporaries)
            if gates is not None and gates_grad is None:
                gates_grad = torch.empty_like(gates)
        if padded:
            seqused_k, seqused_q, temporaries = _padded_lengths(q, k, v, seqused_k, seqused_q, key_padding_mask)
        named = {"q": q, "k": k, "v": v, "out": out, "lse": lse, "d_out": d_out, "dq": dq, "dk": dk, "dv": dv}
        dq, dk, dv = _gradient_buffers(named)
        views = [ctypes.pointer(_view(t, name)) for name, t in named.items()]
        with torch.cuda.device(q.device), _launch_stream(q.device, stream, temporaries) as handle:
            if padded:
                lengths = [ctypes.pointer(_view(t, name, "int32")) if t is not None else None
                           for name, t in (("seqused_q", seqused_q), ("seqused_k", seqused_k))]
                _check(_lib.spattn_attention_backward_padded(self._handle, *views, *lengths, ctypes.c_void_p(handle)))
            elif adaptive:
                extra = [ctypes.pointer(_view(t, name, "float32")) if t is not None else None
                         for name, t in (("scores", scores), ("wq", wq), ("wk", wk))]
                gate_views = [ctypes.pointer(_view(t, name, "float32")) if t is not None else None
                              for name, t in (("gates", gates), ("gates_grad", gates_grad))]
                _check(_lib.spattn_attention_backward_adaptive(self._handle, *views, *extra, None, *gate_views,
                                                               ctypes.c_void_p(handle)))
            else:
                _check(_lib.spattn_attention_backward(self._handle, *views, ctypes.c_void_p(handle)))
        return (dq, dk, dv, gates_grad) if gates is not None else (dq, dk, dv)

    def backward_varlen(self, q, k, v, out, lse, d_out, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                        dq=None, dk=None, dv=None, stream=None):
        """Gradients of forward_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
        max_seqlen_k) -> (out, lse) for d_out ([total_q, Hq, D] like q); returns (dq, dk, dv),
        written into the given buffers (allocated like q, k and v if None). lse [Hq, total_q]
        float32 is required: what the forward wrote. The documents are the forward's; rows
        outside every document get zero gradients. Lengths are checked as for forward_varlen
        (check_lengths); shapes and dtypes by the library (ArgumentError naming the tensor).
        Patterns whose rows are not key ranges (strided, LongNet, grids, custom blocks) and
        adaptive patterns have no backward over documents yet (SpattnError, status 2)."""
        import torch
        named = {"q": q, "k": k, "v": v, "out": out, "lse": lse, "d_out": d_out, "dq": dq, "dk": dk, "dv": dv}
        _require_tensors({"cu_seqlens_q": cu_seqlens_q, "cu_seqlens_k": cu_seqlens_k})
        dq, dk, dv = _gradient_buffers(named)
        _same_device(("q", q), {"cu_seqlens_q": cu_seqlens_q, "cu_seqlens_k": cu_seqlens_k})
        views = [ctypes.pointer(_view(t, name)) for name, t in named.items()]
        cu = [ctypes.pointer(_view(t, name, "int32")) for name, t in (("cu_seqlens_q", cu_seqlens_q),
                                                                     ("cu_seqlens_k", cu_seqlens_k))]
        with torch.cuda.device(q.device), _launch_stream(q.device, stream, []) as handle:
            _check(_lib.spattn_attention_backward_varlen(self._handle, *views, *cu, int(max_seqlen_q),
                                                         int(max_seqlen_k), ctypes.c_void_p(handle)))
        return dq, dk, dv

    def explain(self):
        return _explain(_lib.spattn_attention_explain, self._handle)


def _forward(fn, handle, q, k, v, out, lse, stream, adaptive=None):
    """An attention forward of the C ABI (fn) over torch tensors; out is allocated like q if None.

    adaptive: None, or (scores, wq, wk, blocks, temporaries) of an adaptive pattern's call
    (tensors or None; temporaries: tensors made for this call, e.g. converted copies), which
    then goes to spattn_attention_forward_adaptive instead of fn."""
    import torch
    if out is None:
        out = torch.empty_like(q)
    views = [_view(q, "q"), _view(k, "k"), _view(v, "v"), _view(out, "out")]
    lse_view = ctypes.pointer(_view(lse, "lse")) if lse is not None else None
    explicit_stream = stream is not None
    if stream is None:
        stream = torch.cuda.current_stream(q.device).cuda_stream
    if adaptive is None:
        _check(fn(handle, *[ctypes.pointer(x) for x in views], lse_view, ctypes.c_void_p(stream)))
        return out
    *inputs, temporaries = adaptive
    extra = [ctypes.pointer(_view(t, name, "float32 (int32 for blocks)")) if t is not None else None
             for t, name in zip(inputs, ("scores", "wq", "wk", "blocks", "gates"))]
    _check(_lib.spattn_attention_forward_adaptive(handle, *[ctypes.pointer(x) for x in views], lse_view, *extra,
                                                  ctypes.c_void_p(stream)))
    if explicit_stream and temporaries and stream != torch.cuda.current_stream(q.device).cuda_stream:
        # Copies made on the current stream are read on another: keep their memory from
        # being reused before that stream's work is done.
        side = torch.cuda.ExternalStream(stream, device=q.device)
        for t in temporaries:
            t.record_stream(side)
    return out


def _explain(fn, handle):
    needed = ctypes.c_size_t()
    _check(fn(handle, None, 0, ctypes.byref(needed)))
    buf = ctypes.create_string_buffer(needed.value)
    _check(fn(handle, buf, needed.value, ctypes.byref(needed)))
    return buf.value.decode()


def pattern_stats(pattern, seq, kv_seq=None, heads=1, tile_m=128, tile_n=64, head_dim=128):
    """Layout statistics of a pattern as a dict (density, allowed_pairs, tiles, useful_flops)."""
    needed = ctypes.c_size_t()
    args = [_pattern_text(pattern).encode(), seq, kv_seq or seq, heads, tile_m, tile_n, head_dim]
    _check(_lib.spattn_pattern_stats(*args, None, 0, ctypes.byref(needed)))
    buf = ctypes.create_string_buffer(needed.value)
    _check(_lib.spattn_pattern_stats(*args, buf, needed.value, ctypes.byref(needed)))
    return json.loads(buf.value.decode())


# ---- linear-time mixers: the Mamba selective scan and Performer attention ----------------

_LINEAR_DTYPES = "float16, bfloat16, float32"


def _same_device(first, named):
    """Raises ArgumentError unless first is on a CUDA device and every tensor of `named`
    ({name: tensor or None}) is on its device."""
    name0, t0 = first
    if hasattr(t0, "is_cuda") and not t0.is_cuda:
        raise ArgumentError(f"{name0}: tensors must be on a CUDA device (got {t0.device})")
    for name, t in named.items():
        if t is not None and hasattr(t, "device") and t.device != t0.device:
            raise ArgumentError(f"{name}: on {t.device}, but {name0} is on {t0.device}; all tensors must be on one GPU")


def _require_tensors(named):
    """Raises ArgumentError for any value of `named` ({name: value}) that is neither None nor a torch.Tensor."""
    import torch
    for name, t in named.items():
        if t is not None and not isinstance(t, torch.Tensor):
            raise ArgumentError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")


def _check_lengths_vector(name, t, n, layout):
    """Document offsets or per-batch lengths: a contiguous int32 vector (of n entries unless n is None)."""
    import torch
    if t.dtype != torch.int32 or t.dim() != 1 or (n is not None and t.shape[0] != n):
        want = f"{layout} = [{n}]" if n is not None else layout
        raise ArgumentError(f"{name}: {t.dtype} {tuple(t.shape)}; expected torch.int32 {want}")
    if t.shape[0] > 1 and t.stride(0) != 1:
        raise ArgumentError(f"{name}: stride {t.stride(0)}; must be contiguous")


def _padded_lengths(q, k, v, seqused_k, seqused_q, key_padding_mask):
    """The per-batch lengths of a padded batch (q [B, Nq, Hq, D], k and v [B, Nk, Hkv, D]) as
    (seqused_k, seqused_q, temporaries), for its forward and its backward alike: a
    key_padding_mask becomes seqused_k, and with Nq == Nk and no seqused_q also seqused_q
    (self-attention: the padded positions are padded queries too); temporaries holds the
    tensors made here. Refuses, naming them, lengths that are not int32 [B] on q's device and
    masks that are not bool [B, Nk] valid keys then padding."""
    _require_tensors({"q": q, "k": k, "v": v, "seqused_k": seqused_k, "seqused_q": seqused_q,
                      "key_padding_mask": key_padding_mask})
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ArgumentError(f"{name}: shape {tuple(t.shape)}; padded batches are [B, N, H, D]")
    batch, nq, nk = q.shape[0], q.shape[1], k.shape[1]
    temporaries = []
    if key_padding_mask is not None:
        if seqused_k is not None:
            raise ArgumentError("key_padding_mask and seqused_k both give the keys used; pass one of them")
        if tuple(key_padding_mask.shape) != (batch, nk):
            raise ArgumentError(f"key_padding_mask: shape {tuple(key_padding_mask.shape)}; expected [B, Nk] = "
                                f"[{batch}, {nk}]")
        seqused_k = seqused_from_key_padding_mask(key_padding_mask)
        temporaries.append(seqused_k)
        if seqused_q is None and nq == nk:
            seqused_q = seqused_k
    for name, t in (("seqused_k", seqused_k), ("seqused_q", seqused_q)):
        if t is not None:
            _check_lengths_vector(name, t, batch, "[B]")
    _same_device(("q", q), {"key_padding_mask": key_padding_mask, "seqused_k": seqused_k, "seqused_q": seqused_q})
    return seqused_k, seqused_q, temporaries


def _adaptive_inputs(q, scores, wq, wk, gates, temporaries):
    """An adaptive call's float inputs as the library takes them: float32, scores with a
    contiguous last dim, wq / wk / gates contiguous (copies made here go to temporaries);
    all on q's device."""
    import torch
    _same_device(("q", q), {"scores": scores, "wq": wq, "wk": wk, "gates": gates})

    def as_f32(t, contiguous):
        if t is None or not isinstance(t, torch.Tensor):
            return t  # _view names what is not a tensor
        c = t if t.dtype == torch.float32 else t.float()
        if contiguous or (c.dim() > 0 and c.stride(-1) != 1):
            c = c.contiguous()
        if c is not t:
            temporaries.append(c)
        return c

    return as_f32(scores, False), as_f32(wq, True), as_f32(wk, True), as_f32(gates, True)


def _gradient_buffers(named):
    """(dq, dk, dv) of a backward call whose tensors are named ({"q": q, ..., "dq": dq or None,
    ...}): every value checked to be a tensor on q's GPU (the gradients may be None), the
    missing gradients allocated like q, k and v and put into named."""
    import torch
    for name, t in named.items():
        if t is None and name not in ("dq", "dk", "dv"):
            raise ArgumentError(f"{name}: expected a torch.Tensor, got None (the backward needs it)")
    _require_tensors(named)
    _same_device(("q", named["q"]), named)
    for grad, like in (("dq", "q"), ("dk", "k"), ("dv", "v")):
        if named[grad] is None:
            named[grad] = torch.empty_like(named[like])
    return named["dq"], named["dk"], named["dv"]


@contextlib.contextmanager
def _launch_stream(device, stream, temporaries):
    """The handle of the stream a call launches on: `stream` (a CUstream / cudaStream_t handle)
    or else the current stream. On another stream than the current one, the tensors made for
    the call on the current stream (temporaries) are made ready for it and kept alive until
    its work is done."""
    import torch
    current = torch.cuda.current_stream(device)
    if stream is None or stream == current.cuda_stream:
        yield current.cuda_stream
        return
    side = torch.cuda.ExternalStream(stream, device=device)
    if temporaries:
        side.wait_stream(current)
    try:
        yield stream
    finally:
        for t in temporaries:
            t.record_stream(side)


def seqused_from_key_padding_mask(key_padding_mask):
    """The keys used per batch, int32 [B] on the mask's device, of a key-padding mask bool
    [B, Nk] in torch.nn.MultiheadAttention's convention: True = a padded key, ignored.
    The kept keys of every row must come first (valid keys, then padding), as
    Attention.forward(seqused_k=...) reads them; ArgumentError (a ValueError) names the
    first row that is not such a prefix. That check reads its verdict back, so this waits
    for the GPU: convert once, outside a CUDA-graph capture."""
    import torch
    m = key_padding_mask
    if not isinstance(m, torch.Tensor) or m.dtype != torch.bool or m.dim() != 2:
        got = f"{m.dtype} {tuple(m.shape)}" if isinstance(m, torch.Tensor) else type(m).__name__
        raise ArgumentError(f"key_padding_mask: {got}; expected a torch.bool [B, Nk] tensor (True = padded key)")
    used = (~m).sum(dim=1, dtype=torch.int32)
    prefix = torch.arange(m.shape[1], device=m.device).unsqueeze(0) >= used.unsqueeze(1)
    bad = (prefix != m).any(dim=1)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ArgumentError(f"key_padding_mask row {row} is not valid keys followed by padding (True = padded, as in "
                            "torch.nn.MultiheadAttention): padded batches use the first seqused_k[b] keys of each "
                            "batch; put the padding at the end, or pack the sequences for attention_varlen")
    return used


def _grad_needed(tensors):
    import torch
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _no_grad_needed(op, tensors):
    if _grad_needed(tensors):
        raise SpattnError(2, f"{op} has no backward pass yet (forward only); call it under torch.no_grad() "
                             "or pass detached tensors")


class SelectiveScan:
    """Mamba selective scan (S6), forward, as a generated, cached kernel (include/spattn/linear.hpp).

    Per batch row and channel, with state size N (4, 8, 16 or 32):
        delta = softplus(delta + delta_bias)   (delta + delta_bias with delta_softplus=False)
        A = -exp(a_log);  h_t = exp(delta_t A) h_{t-1} + delta_t B_t x_t;  y_t = (C_t h_t + D x_t) silu(z_t)
    Layouts are time-major (not Mamba's [B, D, L]): x, delta, z [B, L, channels], b, c [B, L, N],
    one dtype (float16, bfloat16 or float32), last dim contiguous (other strides free, so x and z
    may be halves of one projection); a_log [channels, N], d and delta_bias [channels] float32
    contiguous. config: "channels x segments x steps", e.g. "32x8x16" (default: the heuristic);
    splits: CTAs per sequence along the time axis (default: chosen from the problem and the GPU)."""

    def __init__(self, config=None, device=None, splits=None):
        options = {}
        if config is not None:
            options["config"] = str(config)
        if splits is not None:
            options["splits"] = int(splits)
        if device is not None:
            options["device"] = int(device)
        handle = ctypes.c_void_p()
        _check(_lib.spattn_selective_scan_create(json.dumps(options).encode(), ctypes.byref(handle)))
        self._handle = handle

    def __del__(self):
        if getattr(self, "_handle", None):
            _lib.spattn_selective_scan_destroy(self._handle)
            self._handle = None

    def forward(self, x, delta, a_log, b, c, d=None, z=None, delta_bias=None, delta_softplus=True,
                return_final_state=False, out=None, final_state=None, stream=None):
        """y [B, L, channels] like x, written into `out` if given; with return_final_state=True
        (y, h) where h is the state after the last step [B, channels, N] float32 (written into
        `final_state` if given, which is also filled without return_final_state)."""
        import torch
        named = {"x": x, "delta": delta, "a_log": a_log, "b": b, "c": c, "d": d, "z": z,
                 "delta_bias": delta_bias, "out": out, "final_state": final_state}
        for name, t in named.items():
            if t is not None and not isinstance(t, torch.Tensor):
                raise SpattnError(1, f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if x.dim() != 3:
            raise SpattnError(1, f"x: shape {tuple(x.shape)}; expected [B, L, channels]")
        if a_log.dim() != 2:
            raise SpattnError(1, f"a_log: shape {tuple(a_log.shape)}; expected [channels, state]")
        _same_device(("x", x), named)
        _no_grad_needed("spattn.selective_scan", [x, delta, a_log, b, c, d, z, delta_bias])
        if out is None:
            out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        if final_state is None and return_final_state:
            final_state = torch.empty((x.shape[0], x.shape[2], a_log.shape[1]), dtype=torch.float32, device=x.device)
        named["out"], named["final_state"] = out, final_state
        views = {name: _view(t, name, _LINEAR_DTYPES) for name, t in named.items() if t is not None}
        order = ("x", "delta", "a_log", "b", "c", "d", "delta_bias", "z", "out", "final_state")
        args = [ctypes.pointer(views[n]) if n in views else None for n in order]
        with torch.cuda.device(x.device):
            if stream is None:
                stream = torch.cuda.current_stream(x.device).cuda_stream
            _check(_lib.spattn_selective_scan_forward(self._handle, *args, 1 if delta_softplus else 0,
                                                      ctypes.c_void_p(stream)))
        return (out, final_state) if return_final_state else out

    __call__ = forward

    def explain(self):
        return _explain(_lib.spattn_selective_scan_explain, self._handle)


_scans = {}  # config -> SelectiveScan


def selective_scan(x, delta, a_log, b, c, d=None, z=None, delta_bias=None, delta_softplus=True,
                   return_final_state=False, config=None):
    """The Mamba selective scan (see SelectiveScan for the math and the layouts); returns y, or
    (y, final_state) with return_final_state=True."""
    if config not in _scans:
        _scans[config] = SelectiveScan(config=config)
    return _scans[config](x, delta, a_log, b, c, d=d, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                          return_final_state=return_final_state)


class Performer:
    """Performer (FAVOR+) attention, forward: softmax attention exp(q.k / sqrt(D)) estimated
    with `features` positive orthogonal random features (a multiple of 16 from 16 to 1024),
    drawn from `seed` on the host (the same on every host; redraw() draws anew).

    q [B, Nq, H, D], k [B, Nk, Hkv, D], v [B, Nk, Hkv, Dv] -> o [B, Nq, H, Dv] (H % Hkv == 0),
    one dtype (float16, bfloat16, float32), head dim contiguous; causal needs Nq == Nk.
    config: the causal scan's "chunk x slice", e.g. "32x32"; tf32: the float32 GEMMs on TF32
    tensor cores."""

    def __init__(self, head_dim, features=256, seed=0, causal=False, config=None, tf32=False, device=None):
        options = {"features": int(features), "seed": int(seed), "causal": bool(causal), "tf32": bool(tf32)}
        if config is not None:
            options["config"] = str(config)
        if device is not None:
            options["device"] = int(device)
        if options["seed"] < 0 or options["seed"] >= 1 << 64:
            raise SpattnError(1, f"seed {seed} must be in [0, 2^64)")
        handle = ctypes.c_void_p()
        _check(_lib.spattn_performer_create(int(head_dim), json.dumps(options).encode(), ctypes.byref(handle)))
        self._handle = handle
        self.head_dim, self.num_features, self.seed, self.causal = int(head_dim), int(features), int(seed), bool(causal)

    def __del__(self):
        if getattr(self, "_handle", None):
            _lib.spattn_performer_destroy(self._handle)
            self._handle = None

    def redraw(self, seed):
        """New random features from `seed` (FAVOR+ redraws them between training steps)."""
        if not 0 <= int(seed) < 1 << 64:
            raise SpattnError(1, f"seed {seed} must be in [0, 2^64)")
        _check(_lib.spattn_performer_redraw(self._handle, int(seed)))
        self.seed = int(seed)

    def features(self):
        """The random features omega [features, head_dim], float32: a CPU torch tensor (a list of
        rows without PyTorch)."""
        needed = ctypes.c_size_t()
        _check(_lib.spattn_performer_features(self._handle, None, 0, ctypes.byref(needed)))
        buf = (ctypes.c_float * needed.value)()
        _check(_lib.spattn_performer_features(self._handle, buf, needed.value, ctypes.byref(needed)))
        rows = [list(buf[r * self.head_dim:(r + 1) * self.head_dim]) for r in range(self.num_features)]
        try:
            import torch
        except ImportError:
            return rows
        return torch.tensor(rows, dtype=torch.float32)

    def forward(self, q, k, v, out=None, stream=None):
        import torch
        named = {"q": q, "k": k, "v": v, "out": out}
        for name, t in named.items():
            if t is not None and not isinstance(t, torch.Tensor):
                raise SpattnError(1, f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        for name in ("q", "k", "v"):
            if named[name].dim() != 4:
                raise SpattnError(1, f"{name}: shape {tuple(named[name].shape)}; expected 4 dimensions [B, N, H, D]")
        _same_device(("q", q), named)
        _no_grad_needed("spattn.Performer", [q, k, v])
        if out is None:
            out = torch.empty((q.shape[0], q.shape[1], q.shape[2], v.shape[3]), dtype=q.dtype, device=q.device)
        views = [_view(t, name, _LINEAR_DTYPES) for name, t in (("q", q), ("k", k), ("v", v), ("out", out))]
        with torch.cuda.device(q.device):
            if stream is None:
                stream = torch.cuda.current_stream(q.device).cuda_stream
            _check(_lib.spattn_performer_forward(self._handle, *[ctypes.pointer(x) for x in views],
                                                 ctypes.c_void_p(stream)))
        return out

    __call__ = forward

    def explain(self):
        return _explain(_lib.spattn_performer_explain, self._handle)


# ---- ring attention: sequence parallel over NCCL ---------------------------------------

class RingAttention:
    """Sequence-parallel sparse attention over the ranks of a torch.distributed group (one
    process per GPU, NCCL underneath). Every rank passes its shard of the sequence:
    q, out [B, n, Hq, D] and k, v [B, n, Hkv, D] contiguous, n = N / world; with
    sharding="zigzag" a rank holds chunk r then chunk 2*world-1-r of 2*world chunks
    (balances causal work). K/V shards move only where the pattern needs them.
    The NCCL unique id is made on the group's first rank and broadcast through
    torch.distributed (the group must be initialised)."""

    def __init__(self, pattern, group=None, sharding="contiguous", config=None, scale=None, timing=False):
        import torch
        import torch.distributed as dist
        if not dist.is_available() or not dist.is_initialized():
            raise SpattnError(1, "spattn.RingAttention needs torch.distributed initialised (init_process_group)")
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        uid = ctypes.create_string_buffer(128)
        if rank == 0:
            _check(_lib.spattn_nccl_unique_id(uid))
        box = [uid.raw if rank == 0 else None]
        dist.broadcast_object_list(box, src=dist.get_global_rank(group, 0) if group is not None else 0, group=group)
        options = {"sharding": sharding, "timing": bool(timing), "device": torch.cuda.current_device()}
        if config is not None:
            options["config"] = config
        if scale is not None:
            options["scale"] = float(scale)
        handle = ctypes.c_void_p()
        _check(_lib.spattn_ring_create(_pattern_text(pattern).encode(), json.dumps(options).encode(),
                                       ctypes.create_string_buffer(box[0], 128), rank, world, ctypes.byref(handle)))
        self._handle = handle
        self.rank, self.world = rank, world

    def __del__(self):
        if getattr(self, "_handle", None):
            _lib.spattn_ring_destroy(self._handle)
            self._handle = None

    def forward(self, q, k, v, out=None, lse=None, stream=None):
        return _forward(_lib.spattn_ring_forward, self._handle, q, k, v, out, lse, stream)

    __call__ = forward

    def explain(self):
        return _explain(_lib.spattn_ring_explain, self._handle)

    def timings(self):
        return _explain(_lib.spattn_ring_timings, self._handle)


# ---- autograd: torch.library custom ops ------------------------------------------------

_attentions = {}  # (pattern text, scale, deterministic, check_lengths) -> Attention; plans are kept inside


def _attention_for(pattern, scale, deterministic=False, check_lengths=True):
    """The ops' Attention of a (pattern, scale, deterministic, check_lengths). The forward ops
    ask with deterministic=False whatever the call's mode: the option chooses backward
    kernels only, so one object's forward plans serve both modes; the backward ops ask with
    the call's mode."""
    key = (pattern, scale, deterministic, check_lengths)
    if key not in _attentions:
        _attentions[key] = Attention(pattern, scale=scale if scale > 0 else None, deterministic=deterministic,
                                     check_lengths=check_lengths)
    return _attentions[key]


_ops = None


def _register_ops():
    """Registers the ops once: spattn::attention_forward / attention_backward (q [B, Nq, Hq, D],
    whole problems or padded batches: seqused_k and seqused_q None or int32 [B]) and
    spattn::attention_varlen_forward / attention_varlen_backward (packed documents), each with
    a fake implementation for torch.compile, the forward ops with their autograd formulas.
    LSE is an output of the forwards for their backward; it carries no gradient."""
    global _ops
    if _ops is not None:
        return _ops
    import torch
    from typing import Optional

    from torch import Tensor

    def adaptive_kwargs(scores, gates):
        return {name: t for name, t in (("scores", scores), ("gates", gates)) if t is not None}

    @torch.library.custom_op("spattn::attention_forward", mutates_args=())
    def attention_forward(q: Tensor, k: Tensor, v: Tensor, seqused_k: Optional[Tensor], seqused_q: Optional[Tensor],
                          scores: Optional[Tensor], gates: Optional[Tensor], pattern: str, scale: float,
                          deterministic: bool) -> tuple[Tensor, Tensor]:
        out = torch.empty_like(q)
        lse = torch.empty((q.shape[0], q.shape[2], q.shape[1]), device=q.device, dtype=torch.float32)
        _attention_for(pattern, scale).forward(q, k, v, out=out, lse=lse, seqused_k=seqused_k, seqused_q=seqused_q,
                                               **adaptive_kwargs(scores, gates))
        return out, lse

    @attention_forward.register_fake
    def _(q, k, v, seqused_k, seqused_q, scores, gates, pattern, scale, deterministic):
        return torch.empty_like(q), q.new_empty((q.shape[0], q.shape[2], q.shape[1]), dtype=torch.float32)

    # The fourth gradient: dL/dg (float32 like gates) with gates, an empty tensor without.
    @torch.library.custom_op("spattn::attention_backward", mutates_args=())
    def attention_backward(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, d_out: Tensor,
                           seqused_k: Optional[Tensor], seqused_q: Optional[Tensor], scores: Optional[Tensor],
                           gates: Optional[Tensor], pattern: str, scale: float,
                           deterministic: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        grads = _attention_for(pattern, scale, deterministic).backward(q, k, v, out, lse, d_out.contiguous(),
                                                                       seqused_k=seqused_k, seqused_q=seqused_q,
                                                                       **adaptive_kwargs(scores, gates))
        return grads if gates is not None else (*grads, q.new_empty(0, dtype=torch.float32))

    @attention_backward.register_fake
    def _(q, k, v, out, lse, d_out, seqused_k, seqused_q, scores, gates, pattern, scale, deterministic):
        dg = gates.new_empty(gates.shape, dtype=torch.float32) if gates is not None else q.new_empty(0, dtype=torch.float32)
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), dg

    def setup_context(ctx, inputs, output):
        q, k, v, seqused_k, seqused_q, scores, gates, pattern, scale, deterministic = inputs
        out, lse = output
        ctx.mark_non_differentiable(lse)
        ctx.save_for_backward(q, k, v, out, lse, seqused_k, seqused_q, scores, gates)
        ctx.pattern, ctx.scale, ctx.deterministic = pattern, scale, deterministic

    def backward(ctx, d_out, d_lse):
        q, k, v, out, lse, seqused_k, seqused_q, scores, gates = ctx.saved_tensors
        dq, dk, dv, dg = torch.ops.spattn.attention_backward(q, k, v, out, lse, d_out, seqused_k, seqused_q, scores,
                                                             gates, ctx.pattern, ctx.scale, ctx.deterministic)
        dg = dg.to(gates.dtype) if gates is not None and ctx.needs_input_grad[6] else None
        return dq, dk, dv, None, None, None, dg, None, None, None

    attention_forward.register_autograd(backward, setup_context=setup_context)

    @torch.library.custom_op("spattn::attention_varlen_forward", mutates_args=())
    def attention_varlen_forward(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                                 max_seqlen_q: int, max_seqlen_k: int, pattern: str, scale: float, deterministic: bool,
                                 check_lengths: bool) -> tuple[Tensor, Tensor]:
        return _varlen_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, pattern, scale,
                               check_lengths, None, None, None, True)

    @attention_varlen_forward.register_fake
    def _(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, pattern, scale, deterministic,
          check_lengths):
        return torch.empty_like(q), q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)

    @torch.library.custom_op("spattn::attention_varlen_backward", mutates_args=())
    def attention_varlen_backward(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, d_out: Tensor,
                                  cu_seqlens_q: Tensor, cu_seqlens_k: Tensor, max_seqlen_q: int, max_seqlen_k: int,
                                  pattern: str, scale: float, deterministic: bool,
                                  check_lengths: bool) -> tuple[Tensor, Tensor, Tensor]:
        attn = _attention_for(pattern, scale, deterministic, check_lengths)
        return attn.backward_varlen(q, k, v, out, lse, d_out.contiguous(), cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                    max_seqlen_k)

    @attention_varlen_backward.register_fake
    def _(q, k, v, out, lse, d_out, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, pattern, scale,
          deterministic, check_lengths):
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

    def varlen_setup_context(ctx, inputs, output):
        q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, pattern, scale, deterministic, \
            check_lengths = inputs
        out, lse = output
        ctx.mark_non_differentiable(lse)
        ctx.save_for_backward(q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k)
        ctx.max_seqlen = (max_seqlen_q, max_seqlen_k)
        ctx.pattern, ctx.scale, ctx.deterministic, ctx.check_lengths = pattern, scale, deterministic, check_lengths

    def varlen_backward(ctx, d_out, d_lse):
        q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k = ctx.saved_tensors
        dq, dk, dv = torch.ops.spattn.attention_varlen_backward(q, k, v, out, lse, d_out, cu_seqlens_q, cu_seqlens_k,
                                                                *ctx.max_seqlen, ctx.pattern, ctx.scale,
                                                                ctx.deterministic, ctx.check_lengths)
        return dq, dk, dv, None, None, None, None, None, None, None, None

    attention_varlen_forward.register_autograd(varlen_backward, setup_context=varlen_setup_context)
    _ops = torch.ops.spattn
    return _ops


def attention(q, k, v, pattern, scale=None, deterministic=False, *, seqused_k=None, seqused_q=None,
              key_padding_mask=None, scores=None, gates=None):
    """Differentiable sparse attention: q [B, Nq, Hq, D], k/v [B, Nk, Hkv, D] (fp16/bf16, CUDA).

    scale defaults to 1/sqrt(D). The forward saves O and LSE; the backward runs spattn's
    backward kernels (deterministic=True: bitwise reproducible gradients, no atomics).

    Padded batches take Attention.forward's seqused_k, seqused_q or key_padding_mask (bool
    [B, Nk], True = padded key, valid keys then padding; with Nq == Nk and no seqused_q it
    bounds the queries too): batch b is a problem of its own used lengths, the rows past them
    get O = 0 and zero gradients. The mask is checked and converted here, once (that reads
    the GPU's verdict back); the backward takes the same lengths. Padded backward passes run
    the patterns whose rows are key ranges (dense, causal, windows, global + local, ...); the
    others (strided, LongNet, grids, custom blocks) run forward, and their backward raises
    SpattnError (status 2).

    Adaptive patterns train too (blocks that are multiples of 64): scores [B, Hq,
    nq_blocks, nk_blocks] (default: the block means' products) choose the blocks and get no
    gradient; gates of the same shape (see Attention.forward) scale the chosen blocks and
    receive dL/dg (in gates' dtype), as a Gumbel-softmax or straight-through scorer needs.
    Blocks of 32 keys run forward only (their backward raises SpattnError, status 2)."""
    if seqused_k is not None or seqused_q is not None or key_padding_mask is not None:
        seqused_k, seqused_q, _ = _padded_lengths(q, k, v, seqused_k, seqused_q, key_padding_mask)
    out, _ = _register_ops().attention_forward(q, k, v, seqused_k, seqused_q, scores, gates, _pattern_text(pattern),
                                               float(scale or 0.0), bool(deterministic))
    return out


def _varlen_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, pattern, scale, check_lengths,
                    out, lse, stream, want_lse):
    """attention_varlen's forward as (out, lse): into the given buffers, lse allocated as -inf
    when wanted and not given (None otherwise)."""
    import torch
    if want_lse and lse is None and q.dim() == 3:
        lse = torch.full((q.shape[1], q.shape[0]), float("-inf"), dtype=torch.float32, device=q.device)
    attn = _attention_for(pattern, scale, check_lengths=check_lengths)
    out = attn.forward_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, out=out, lse=lse,
                              stream=stream)
    return out, lse


def attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, pattern, scale=None, out=None,
                     lse=None, check_lengths=True, *, return_lse=False, stream=None, deterministic=False):
    """Differentiable sparse attention over packed variable-length documents
    (FlashAttention's varlen convention): q [total_q, Hq, D], k and v [total_k, Hkv, D]
    (float16 or bfloat16, CUDA), cu_seqlens_q and cu_seqlens_k int32 [documents + 1] on q's
    device, max_seqlen_q / max_seqlen_k the longest document's query and key rows. Each
    document attends only inside itself, the pattern applied to it as to a problem of its own
    lengths (see Attention.forward_varlen). scale defaults to 1/sqrt(D).

    Returns out ([total_q, Hq, D] like q, written into `out` if given, else zero-filled
    first), or (out, lse) with return_lse=True: lse [Hq, total_q] float32 (written into
    `lse` if given, which is also filled without return_lse; allocated as -inf if None, so
    rows outside every document read -inf). check_lengths=False: nothing waits for the
    check of the lengths (CUDA-graph capturable) and bad lengths leave the outputs
    unwritten; with True a bad entry raises ArgumentError (a ValueError) naming it. Uses
    cached Attention objects per (pattern, scale, check_lengths, and for the backward
    deterministic).

    Without out, lse and stream the call is a torch.library op (torch.compile traces it)
    with an autograd formula: gradients flow to q, k and v (the offsets and lengths take
    none; lse carries none), through spattn's backward over documents (deterministic=True:
    bitwise reproducible), and rows outside every document get zero gradients. That
    backward runs the patterns whose rows are key ranges (dense, causal, windows, global +
    local, ...); for the others (strided, LongNet, grids, custom blocks) and adaptive
    patterns it raises SpattnError (status 2). out=, lse= and stream= are for calls that
    need no gradient: with q, k or v requiring grad they are refused (ArgumentError), since
    the differentiable path allocates its outputs and runs on the current stream (choose it
    with torch.cuda.stream)."""
    _require_tensors({"q": q, "k": k, "v": v, "cu_seqlens_q": cu_seqlens_q, "cu_seqlens_k": cu_seqlens_k,
                      "out": out, "lse": lse})
    pattern, scale = _pattern_text(pattern), float(scale or 0.0)
    if out is None and lse is None and stream is None:
        out, lse = _register_ops().attention_varlen_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q),
                                                            int(max_seqlen_k), pattern, scale, bool(deterministic),
                                                            bool(check_lengths))
        return (out, lse) if return_lse else out
    if _grad_needed([q, k, v]):
        given = " and ".join(name + "=" for name, x in (("out", out), ("lse", lse), ("stream", stream))
                             if x is not None)
        raise ArgumentError(f"attention_varlen: {given} given while q, k or v requires grad; the differentiable path "
                            "allocates its outputs (out, lse) and runs on the current stream (torch.cuda.stream "
                            f"chooses it): drop {given}, or call under torch.no_grad() to write into buffers")
    out, lse = _varlen_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, pattern, scale,
                               bool(check_lengths), out, lse, stream, return_lse)
    return (out, lse) if return_lse else out


try:
    import torch as _torch
    _Module = _torch.nn.Module
except ImportError:  # the C ABI wrapper works without PyTorch; the op and the module need it
    _torch = None

    class _Module:
        def __init__(self, *args, **kwargs):
            raise SpattnError(1, "spattn.SparseAttention needs PyTorch (import torch failed)")
if _torch is not None:
    # At import, not at the first call: torch.compile cannot trace the registration, so a
    # first call inside a compiled function would break its graph.
    _register_ops()


class SparseAttention(_Module):
    """nn.Module form of attention(): SparseAttention(pattern)(q, k, v)."""

    def __init__(self, pattern, scale=None, deterministic=False):
        super().__init__()
        self.pattern = _pattern_text(pattern)
        self.scale = scale
        self.deterministic = deterministic

    def forward(self, q, k, v):
        return attention(q, k, v, self.pattern, self.scale, self.deterministic)


# ---- spattn.nn: attention modules with torch.nn.MultiheadAttention's interface ------------

def _need_torch(what):
    try:
        import torch
    except ImportError:
        raise SpattnError(1, f"{what} needs PyTorch (import torch failed)") from None
    return torch


def _rotary(x, offset, base, interleaved):
    """Rotary embedding of x [B, N, heads, D] at positions offset .. offset + N - 1, as
    include/spattn/modules.hpp's kernel: fp32 angles position * base^(-2i/D), pairs (i, i + D/2)
    ("rotate_half") or (2i, 2i + 1) when interleaved, the result rounded to x's dtype."""
    import torch
    n, d = x.shape[1], x.shape[-1]
    inv_freq = 1.0 / (base ** (torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d))
    position = torch.arange(n, device=x.device, dtype=torch.float32) + offset
    angle = torch.outer(position, inv_freq)
    cos, sin = angle.cos()[None, :, None, :], angle.sin()[None, :, None, :]
    xf = x.float()
    x1, x2 = (xf[..., 0::2], xf[..., 1::2]) if interleaved else (xf[..., : d // 2], xf[..., d // 2:])
    r1, r2 = x1 * cos - x2 * sin, x2 * cos + x1 * sin
    out = torch.stack((r1, r2), dim=-1).flatten(-2) if interleaved else torch.cat((r1, r2), dim=-1)
    return out.to(x.dtype)


class MultiheadSparseAttention(_Module):
    """torch.nn.MultiheadAttention(batch_first=True) with spattn's sparse attention.

    The constructor takes torch's arguments in torch's order, then keyword-only extras:
    pattern (dict, JSON text or preset name; default dense), kv_heads (GQA; default
    num_heads), rotary / rotary_base / rotary_interleaved (rotary embedding on Q and K),
    sub_layernorm / layernorm_eps (MAGNETO's LayerNorm before out_proj, parameters
    inner_attn_ln.*), scale (softmax scale, default 1/sqrt(head_dim)) and deterministic
    (bitwise reproducible gradients). Parameters and state_dict keys are torch's
    (in_proj_weight [E + 2 kv_dim, E], in_proj_bias, out_proj.weight, out_proj.bias) and so
    is their initialisation, in the same order of random draws: with kv_heads == num_heads
    a torch.nn.MultiheadAttention state_dict loads, and the same torch seed gives the same
    weights. Projections are torch ops and the attention is spattn.attention, so autograd
    runs through all of it.

    forward(query, key, value, key_padding_mask=None, need_weights=False, attn_mask=None,
    average_attn_weights=True, is_causal=False) returns (out, None). query [B, Nq, E], key
    and value [B, Nk, E] ([N, B, E] with batch_first=False); query is key is value is
    self-attention (one fused projection). The attention weights are never formed
    (need_weights=True is refused), the pattern replaces attn_mask / is_causal (write
    {"causal": true} into it), and attention dropout is refused in training mode (in eval
    mode it is inert, as in torch).

    key_padding_mask: bool [B, S] (batch first whatever batch_first says, as in torch), True =
    a padded key position, ignored; each row must be valid keys then padding (ArgumentError,
    a ValueError, otherwise: a row with padding in the middle or in front is no prefix of
    keys). The attention runs as spattn.attention over the padded batch, differentiable. In
    self-attention (query is key is value) a padded position is a padded query too: its
    attention output is 0, so the module returns out_proj(0) there, i.e. out_proj.bias (0
    without biases; with sub_layernorm out_proj(inner_attn_ln(0))), and no gradient flows
    from it. torch.nn.MultiheadAttention computes those positions from the valid keys
    instead (values nobody reads); every valid position is the same as torch's, and so are
    the gradients of a loss that ignores the padded positions. In cross-attention the mask
    masks keys only, as in torch: every query position attends its batch's valid keys. A
    row without valid keys gives attention output 0 (torch gives NaN). Float (additive)
    masks are not taken.

    The same module in C++ is spattn::MultiheadAttention (include/spattn/modules.hpp),
    forward only; its padded batches take the lengths (ForwardExtras::padding) that a
    key_padding_mask stands for."""

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, add_bias_kv=False, add_zero_attn=False,
                 kdim=None, vdim=None, batch_first=True, device=None, dtype=None, *, pattern=None, kv_heads=None,
                 rotary=False, rotary_base=10000.0, rotary_interleaved=False, sub_layernorm=False,
                 layernorm_eps=1e-5, scale=None, deterministic=False):
        torch = _need_torch("spattn.nn.MultiheadSparseAttention")
        super().__init__()
        kv_heads = num_heads if kv_heads is None else kv_heads
        if embed_dim <= 0 or num_heads <= 0 or kv_heads <= 0:
            raise SpattnError(1, f"embed_dim, num_heads and kv_heads must be > 0 (got {embed_dim}, {num_heads}, "
                                 f"{kv_heads})")
        if embed_dim % num_heads:
            raise SpattnError(1, f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads}): each head "
                                 f"gets embed_dim / num_heads features")
        if num_heads % kv_heads:
            raise SpattnError(1, f"num_heads ({num_heads}) must be a multiple of kv_heads ({kv_heads}) for GQA/MQA")
        for flag, name in ((add_bias_kv, "add_bias_kv"), (add_zero_attn, "add_zero_attn")):
            if flag:
                raise SpattnError(2, f"{name}=True is not supported by spattn.nn.MultiheadSparseAttention")
        for dim, name in ((kdim, "kdim"), (vdim, "vdim")):
            if dim is not None and dim != embed_dim:
                raise SpattnError(2, f"{name}={dim} is not supported: keys and values must have embed_dim "
                                     f"({embed_dim}) features")
        if not 0.0 <= dropout < 1.0:
            raise SpattnError(1, f"dropout must be in [0, 1) (got {dropout})")
        self.embed_dim, self.num_heads, self.kv_heads = embed_dim, num_heads, kv_heads
        self.head_dim = embed_dim // num_heads
        self.kv_dim = kv_heads * self.head_dim
        self.kdim = self.vdim = embed_dim
        self._qkv_same_embed_dim = True
        self.dropout, self.batch_first = float(dropout), bool(batch_first)
        self.bias_k = self.bias_v = None
        self.add_zero_attn = False
        self.pattern = _pattern_text(pattern if pattern is not None else {"type": "dense"})
        self.rotary, self.rotary_base, self.rotary_interleaved = bool(rotary), float(rotary_base), bool(rotary_interleaved)
        if self.rotary and (self.head_dim % 2 or not self.rotary_base > 1.0):
            raise SpattnError(1, f"rotary embedding needs an even head dim and rotary_base > 1 (got head dim "
                                 f"{self.head_dim}, base {rotary_base})")
        self.scale, self.deterministic = scale, bool(deterministic)
        factory = {"device": device, "dtype": dtype}
        rows = embed_dim + 2 * self.kv_dim
        # torch's order of creation and initialisation (the same random draws under one seed).
        self.in_proj_weight = torch.nn.Parameter(torch.empty((rows, embed_dim), **factory))
        self.register_parameter("q_proj_weight", None)
        self.register_parameter("k_proj_weight", None)
        self.register_parameter("v_proj_weight", None)
        if bias:
            self.in_proj_bias = torch.nn.Parameter(torch.empty(rows, **factory))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = torch.nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.inner_attn_ln = (torch.nn.LayerNorm(embed_dim, eps=layernorm_eps, **factory) if sub_layernorm
                              else None)
        self._reset_parameters()

    def _reset_parameters(self):
        import torch
        torch.nn.init.xavier_uniform_(self.in_proj_weight)
        if self.in_proj_bias is not None:
            torch.nn.init.constant_(self.in_proj_bias, 0.0)
            torch.nn.init.constant_(self.out_proj.bias, 0.0)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=False, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        import torch.nn.functional as F
        if need_weights:
            raise SpattnError(2, "need_weights=True is not supported: spattn never forms the attention matrix; "
                                 "call with need_weights=False (the weights come back as None)")
        if attn_mask is not None or is_causal:
            raise SpattnError(2, "attn_mask / is_causal are not supported: the pattern is the mask; give it "
                                 "\"causal\": true (e.g. pattern={\"type\": \"dense\", \"causal\": true})")
        if self.training and self.dropout > 0:
            raise SpattnError(2, f"attention dropout ({self.dropout}) is not supported in training mode; construct "
                                 "with dropout=0.0 (in eval mode it is inert)")
        is_self, kv_same = query is key and key is value, key is value
        if not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        for x, name in ((query, "query"), (key, "key"), (value, "value")):
            if x.dim() != 3 or x.shape[-1] != self.embed_dim:
                raise SpattnError(1, f"{name} must be [B, N, {self.embed_dim}]"
                                     f"{'' if self.batch_first else ' (batch_first=False: [N, B, E])'}; got "
                                     f"{tuple(x.shape)}")
        seqused_k = seqused_q = None
        if key_padding_mask is not None:
            seqused_k = seqused_from_key_padding_mask(key_padding_mask)
            if tuple(key_padding_mask.shape) != tuple(key.shape[:2]):
                raise ArgumentError(f"key_padding_mask: shape {tuple(key_padding_mask.shape)}; expected [B, S] = "
                                    f"{list(key.shape[:2])} (batch, key positions), batch first as in torch")
            if key_padding_mask.device != query.device:
                raise ArgumentError(f"key_padding_mask: on {key_padding_mask.device}, but query is on {query.device}")
            if is_self:
                seqused_q = seqused_k
        E, kv = self.embed_dim, self.kv_dim
        w, b = self.in_proj_weight, self.in_proj_bias

        def part(lo, hi):
            return w[lo:hi], (b[lo:hi] if b is not None else None)

        if is_self:
            q, k, v = F.linear(query, w, b).split([E, kv, kv], dim=-1)
        else:
            q = F.linear(query, *part(0, E))
            if kv_same:
                k, v = F.linear(key, *part(E, E + 2 * kv)).split([kv, kv], dim=-1)
            else:
                k, v = F.linear(key, *part(E, E + kv)), F.linear(value, *part(E + kv, E + 2 * kv))
        nq, nk = q.shape[1], k.shape[1]
        q = q.unflatten(-1, (self.num_heads, self.head_dim))
        k = k.unflatten(-1, (self.kv_heads, self.head_dim))
        v = v.unflatten(-1, (self.kv_heads, self.head_dim))
        if self.rotary:
            q = _rotary(q, nk - nq, self.rotary_base, self.rotary_interleaved)
            k = _rotary(k, 0, self.rotary_base, self.rotary_interleaved)
        out = attention(q, k, v, self.pattern, self.scale, self.deterministic, seqused_k=seqused_k,
                        seqused_q=seqused_q).flatten(-2)
        if self.inner_attn_ln is not None:
            out = self.inner_attn_ln(out)
        out = self.out_proj(out)
        return (out if self.batch_first else out.transpose(0, 1)), None


class CrossMemoryAttention(_Module):
    """Current features x [B, N, E] attend a memory bank [B, M, E] (the seeds' cross-memory
    module): a = MultiheadSparseAttention(x, memory, memory), optionally under a pattern
    over (N queries, M memory keys).

    forward(x, memory, residual=True) is x + fusion_ratio * a (residual=False: a alone);
    fuse_with_memory(x, memory, fusion_ratio=0.5) is (1 - r) x + r a (0: the features alone,
    1: the memory read alone). Both take memory_key_padding_mask, a bool [B, M] (True = a
    padded memory slot, valid slots first), the key_padding_mask of the inner read. Other
    keyword arguments go to the inner module (attn). Same as C++ spattn::CrossMemoryAttention
    (MemoryFusion::kResidual / kInterpolate; its padded bank takes the slots used per batch)."""

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, *, pattern=None, kv_heads=None,
                 fusion_ratio=1.0, device=None, dtype=None, **kwargs):
        _need_torch("spattn.nn.CrossMemoryAttention")
        super().__init__()
        self.attn = nn.MultiheadSparseAttention(embed_dim, num_heads, dropout, bias, device=device, dtype=dtype,
                                                pattern=pattern, kv_heads=kv_heads, **kwargs)
        self.fusion_ratio = float(fusion_ratio)

    def _read(self, x, memory, memory_key_padding_mask):
        return self.attn(x, memory, memory, key_padding_mask=memory_key_padding_mask, need_weights=False)[0]

    def forward(self, x, memory, residual=True, memory_key_padding_mask=None):
        a = self._read(x, memory, memory_key_padding_mask)
        return x + self.fusion_ratio * a if residual else a

    def fuse_with_memory(self, x, memory, fusion_ratio=0.5, memory_key_padding_mask=None):
        r = float(fusion_ratio)
        return (1.0 - r) * x + r * self._read(x, memory, memory_key_padding_mask)


def _nn_namespace():
    """spattn.nn as a module object (import spattn.nn, from spattn.nn import ... work in the
    single-file package); its classes pickle under that name."""
    import sys
    import types
    module = types.ModuleType(__name__ + ".nn", "Attention modules with torch.nn.MultiheadAttention's interface "
                                                "(PyTorch needed to construct them).")
    for cls in (MultiheadSparseAttention, CrossMemoryAttention):
        cls.__module__ = module.__name__
        setattr(module, cls.__name__, cls)
    module.__all__ = ["MultiheadSparseAttention", "CrossMemoryAttention"]
    sys.modules[module.__name__] = module
    return module


nn = _nn_namespace()
del MultiheadSparseAttention, CrossMemoryAttention
