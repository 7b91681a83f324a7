"""spattn.nn on a host without a GPU: the namespace imports in every form without PyTorch
and its classes say they need it; with PyTorch (CPU is enough) the parameters, their names,
shapes and initialisation are torch.nn.MultiheadAttention's (a state_dict loads both ways,
one seed gives the same weights) and unsupported arguments are refused with the reason
before any attention runs, key-padding masks that are not valid keys then padding too."""
import sys

import spattn
import spattn.nn  # noqa: F401  (a submodule of the single-file package)
from spattn.nn import CrossMemoryAttention, MultiheadSparseAttention

assert spattn.nn.MultiheadSparseAttention is MultiheadSparseAttention
assert MultiheadSparseAttention.__module__ == "spattn.nn", MultiheadSparseAttention.__module__
assert CrossMemoryAttention.__qualname__ == "CrossMemoryAttention"


def refused(fn, status, *parts):
    try:
        fn()
    except spattn.SpattnError as e:
        assert e.status == status and all(p in str(e) for p in parts), (e.status, str(e), parts)
    else:
        sys.exit(f"accepted, expected an error naming {parts}")


try:
    import torch
except ImportError:
    refused(lambda: MultiheadSparseAttention(256, 4), 1, "needs PyTorch")
    refused(lambda: CrossMemoryAttention(256, 4), 1, "needs PyTorch")
    print("spattn.nn without PyTorch: ok")
    sys.exit(0)

# Names, shapes and the initialisation of torch.nn.MultiheadAttention (same seed, same draws).
torch.manual_seed(5)
ours = MultiheadSparseAttention(256, 4, pattern={"type": "longnet", "segments": [64, 128], "rates": [1, 2]})
torch.manual_seed(5)
theirs = torch.nn.MultiheadAttention(256, 4, batch_first=True)
a, b = ours.state_dict(), theirs.state_dict()
assert list(a) == list(b), (list(a), list(b))
for name in a:
    assert a[name].shape == b[name].shape and torch.equal(a[name], b[name]), name
ours.load_state_dict(theirs.state_dict())
theirs.load_state_dict(ours.state_dict())

# GQA, no biases, sub-LN: in_proj is [E + 2 kv_dim, E]; the sub-LN is inner_attn_ln.
g = MultiheadSparseAttention(256, 8, bias=False, kv_heads=2, sub_layernorm=True)
shapes = {k: tuple(v.shape) for k, v in g.state_dict().items()}
assert shapes == {"in_proj_weight": (256 + 2 * 64, 256), "out_proj.weight": (256, 256),
                  "inner_attn_ln.weight": (256,), "inner_attn_ln.bias": (256,)}, shapes

# Argument errors.
refused(lambda: MultiheadSparseAttention(250, 4), 1, "embed_dim (250)", "num_heads (4)")
refused(lambda: MultiheadSparseAttention(256, 4, kv_heads=3), 1, "kv_heads (3)")
refused(lambda: MultiheadSparseAttention(256, 4, add_bias_kv=True), 2, "add_bias_kv")
refused(lambda: MultiheadSparseAttention(256, 4, kdim=128), 2, "kdim=128")
x = torch.zeros(1, 8, 256)
refused(lambda: ours(x, x, x, need_weights=True), 2, "need_weights=True")
refused(lambda: ours(x, x, x, attn_mask=torch.zeros(8, 8, dtype=torch.bool)), 2, "attn_mask", "causal")
# key_padding_mask: bool [B, S], valid keys then padding (True = padded), as in torch.
holes = torch.zeros(1, 8, dtype=torch.bool)
holes[0, 2] = True
refused(lambda: ours(x, x, x, key_padding_mask=holes), 1, "key_padding_mask row 0 is not valid keys followed by "
        "padding")
refused(lambda: ours(x, x, x, key_padding_mask=torch.zeros(1, 8)), 1, "key_padding_mask", "torch.bool [B, Nk]")
refused(lambda: ours(x, x, x, key_padding_mask=torch.zeros(1, 7, dtype=torch.bool)), 1,
        "key_padding_mask: shape (1, 7); expected [B, S] = [1, 8]")
padded = torch.arange(8).view(1, 8) >= 5
refused(lambda: ours(x, x, x, key_padding_mask=padded), 1, "CUDA device")  # accepted: reaches the attention
refused(lambda: ours(torch.zeros(1, 8, 128), x, x), 1, "query must be [B, N, 256]")
d = MultiheadSparseAttention(256, 4, dropout=0.1)
refused(lambda: d(x, x, x), 2, "dropout")

c = CrossMemoryAttention(256, 4, fusion_ratio=0.5)
assert isinstance(c.attn, MultiheadSparseAttention) and c.fusion_ratio == 0.5
print("spattn.nn with PyTorch (CPU): ok")
