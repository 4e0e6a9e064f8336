"""How a predictor computes its scores fast: the same math as ``predictor(pixel_values).logits[:, 0]`` with less work.

``FastScorer`` is the default path. It runs the CLIP vision tower layer by layer and differs from the model's own
forward in three ways, none of which changes the math (scores move by float rounding only; the tests hold them
within 1e-3 of the reference code, benchmarks/bench_scoring.py prints the measured difference):

- the last encoder layer is computed for the CLS token only: the pooled output is
  ``post_layernorm(last_hidden_state[:, 0])``, so the other tokens' outputs of that layer are never used (their
  keys and values still are);
- on the CPU in fp32, the linear layers run as oneDNN matmuls (``torch.ops.mkldnn._linear_pointwise``, the kernel
  torch.compile itself emits on CPUs), which use the CPU's widest vector units where the default BLAS may not, on
  weights reordered once into oneDNN's blocked layout (a second copy of the linear weights, about 1.2 GB for
  ViT-L/14 in fp32, made only while RAM allows it with room to spare); ATen's own linear is used wherever oneDNN
  is missing or fails a one-time check against it;
- CLIP's ``quick_gelu`` (``x * sigmoid(1.702 x)``) is fused into the first MLP matmul as oneDNN's swish
  (``z * sigmoid(z)``) on ``z = 1.702 x``: the 1.702 is folded into the small vectors around it (layer-norm
  weight and bias, both MLP biases) and divided out in the residual add, so the wide activation never takes a
  separate pass through memory; an exact GELU (ViT-H/14's towers) is fused the same way as oneDNN's gelu post-op.

On a CPU batches run 4 images at a time (``CPU_CHUNK``), which measured faster than 16 at once.

``CompiledScorer`` (opt-in, ``compile=True``) runs ``FastScorer`` with ATen linears under ``torch.compile`` (inductor
insists on frozen weights for oneDNN's op). On the 2-core development CPU it measured slower than ``FastScorer``,
with or without inductor's weight freezing; it is kept for GPUs, where it is not measured yet.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F  # noqa: N812

log = logging.getLogger("aesthete.scoring")

QUICK_GELU = 1.702  # CLIP's quick_gelu(x) = x * sigmoid(1.702 * x) = silu(1.702 * x) / 1.702
LAYER_PARTS = ("layer_norm1", "layer_norm2", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
               "self_attn.out_proj", "mlp.fc1", "mlp.fc2")


CPU_CHUNK = 4  # images per oneDNN forward: 4 x 257 tokens keeps activations small (measured faster than 16)
PACK_ROWS = 1028  # the matmul row count oneDNN's weight layout is chosen for: 4 images of 257 tokens
PACK_SPARE_BYTES = 2 << 30  # RAM that must stay available after the packed copy is made


def _check_problem() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*s, generator=gen) for s in ((2, 5, 32), (48, 32), (48,)))
    return x, w, b, F.linear(x, w, b)


@functools.cache
def onednn_linear_works() -> bool:
    """Whether ``torch.ops.mkldnn._linear_pointwise`` exists here and agrees with ATen's linear (plain and with the
    swish post-op) on a small fp32 problem. Checked once per process; a failure is logged and ATen is used."""
    try:
        if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
            return False
        x, w, b, expected = _check_problem()
        with torch.inference_mode():
            plain = torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
            swish = torch.ops.mkldnn._linear_pointwise(x, w, b, "swish", [], "")
            gelu = torch.ops.mkldnn._linear_pointwise(x, w, b, "gelu", [], "none")
        ok = (plain.shape == expected.shape and torch.allclose(plain, expected, rtol=1e-4, atol=1e-4)
              and torch.allclose(swish, F.silu(expected), rtol=1e-4, atol=1e-4)
              and torch.allclose(gelu, F.gelu(expected), rtol=1e-4, atol=1e-4))
        if not ok:
            log.warning("oneDNN linear disagrees with ATen's on this machine; scoring with ATen's linear")
        return ok
    except Exception as e:  # noqa: BLE001 - an op missing from this torch build or CPU: use ATen
        log.info("oneDNN linear not usable here (%s: %s); scoring with ATen's linear", type(e).__name__, e)
        return False


@functools.cache
def onednn_packing_works() -> bool:
    """Whether oneDNN's weight reorder (``torch.ops.mkldnn._reorder_linear_weight``) exists here and its packed
    weight gives ATen's result. Checked once per process; otherwise the plain weights are used."""
    try:
        x, w, b, expected = _check_problem()
        with torch.inference_mode():
            packed = torch.ops.mkldnn._reorder_linear_weight(w, 10)
            out = torch.ops.mkldnn._linear_pointwise(x, packed, b, "none", [], "")
        return torch.allclose(out, expected, rtol=1e-4, atol=1e-4)
    except Exception as e:  # noqa: BLE001 - an op missing from this torch build: plain weights
        log.info("oneDNN weight packing not usable here (%s: %s)", type(e).__name__, e)
        return False


def available_ram() -> int | None:
    try:
        import psutil
    except ImportError:
        return None
    return psutil.virtual_memory().available


def _aten(x: torch.Tensor, layer: torch.nn.Linear, bias: torch.Tensor | None = None, post: str = "none"):
    y = F.linear(x, layer.weight, layer.bias if bias is None else bias)
    if post == "swish":
        return F.silu(y, inplace=True)
    return F.gelu(y) if post == "gelu" else y


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, post: str) -> torch.Tensor:
    """oneDNN's matmul with ``post`` fused: "none", "swish" or "gelu" (exact, erf: what nn.GELU computes)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, post, [], "none" if post == "gelu" else "")


def _onednn(x: torch.Tensor, layer: torch.nn.Linear, bias: torch.Tensor | None = None, post: str = "none"):
    return _onednn_linear(x, layer.weight, layer.bias if bias is None else bias, post)


def linear_for(x: torch.Tensor) -> Callable:
    """How to run ``x`` through linear layers: ``linear(x, layer, bias=None, post="none")`` with ``post`` one of
    "none", "swish", "gelu" fused into the matmul. oneDNN's matmul on the CPU in fp32 where it works here (measured
    1.5x ATen's on ViT-L's MLP on the 2-core development CPU), ATen's otherwise; the same math either way."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or not onednn_linear_works():
        return _aten
    return _onednn


def unsupported_reason(model: torch.nn.Module, head: bool = True) -> str | None:
    """Why ``FastScorer`` cannot run this model (a transformers version with other module names, an unknown head),
    or None. The predictor then uses the model's own forward. ``head=False``: only the image embedding is needed (a
    CLIPModel of a prompt-aware scorer)."""
    vision = getattr(model, "vision_model", None)
    if vision is None or not hasattr(model, "visual_projection"):
        return "no vision_model/visual_projection"
    if head and not (hasattr(model, "predictor") or hasattr(model, "layers")):
        return "no predictor head"
    for name in ("embeddings", "pre_layrnorm", "post_layernorm", "encoder.layers"):
        if _get(vision, name) is None:
            return f"no vision_model.{name}"
    for i, layer in enumerate(vision.encoder.layers):
        for name in LAYER_PARTS:
            if _get(layer, name) is None:
                return f"no {name} in encoder layer {i}"
        attn = layer.self_attn
        if not all(hasattr(attn, a) for a in ("num_heads", "head_dim", "scale")):
            return f"encoder layer {i} attention lacks num_heads/head_dim/scale"
    return None


def _get(module, dotted: str):
    for part in dotted.split("."):
        module = getattr(module, part, None)
    return module


class FastScorer(torch.nn.Module):
    """Scores [B] of a simple-aesthetics-predictor model (V1 or V2) for pixel values (see the module docstring).

    It holds the model without changing it, so ComfyUI's memory management and the model's own forward see the
    same weights. ``onednn``: None picks oneDNN on the CPU in fp32 when it works here; False always uses ATen.
    ``pack``: None packs the weights for oneDNN when RAM allows (decided on the first CPU batch and logged).
    ``head=False``: the output is the L2-normalised image embedding [B, D] instead of the head's score (a CLIPModel's
    ``vision_model`` + ``visual_projection``, for the prompt-aware scorers).
    """

    def __init__(self, model: torch.nn.Module, onednn: bool | None = None, pack: bool | None = None,
                 head: bool = True):
        super().__init__()
        self.model = model
        self.head = head
        self.onednn = onednn
        self.pack = pack
        config = getattr(model.config, "vision_config", model.config)  # a CLIPModel's, or the vision model's own
        self.quick_gelu = getattr(config, "hidden_act", None) == "quick_gelu"
        self.gelu = getattr(config, "hidden_act", None) == "gelu"  # transformers' "gelu": the exact (erf) one
        self._packs: dict[int, tuple[tuple, torch.Tensor]] = {}  # id(linear) -> (weight stamp, packed weight)

    def _linear(self, x: torch.Tensor) -> Callable:
        if self.onednn is False or x.device.type != "cpu" or x.dtype != torch.float32 or not onednn_linear_works():
            return _aten
        if self.pack is None:
            self.pack = self._can_pack()
        return self._onednn

    def _can_pack(self) -> bool:
        if not onednn_packing_works():
            return False
        size = sum(m.weight.numel() * m.weight.element_size() for m in self.model.vision_model.encoder.modules()
                   if isinstance(m, torch.nn.Linear))
        free = available_ram()
        if free is not None and free - size < PACK_SPARE_BYTES:
            log.info("aesthetic predictor: not packing its weights for oneDNN (%d MiB needed, %d MiB of RAM "
                     "available); scoring a little slower", size >> 20, free >> 20)
            return False
        log.info("aesthetic predictor: packing its linear weights for oneDNN (+%d MiB of RAM)", size >> 20)
        return True

    def _onednn(self, x: torch.Tensor, layer: torch.nn.Linear, bias: torch.Tensor | None = None,
                post: str = "none") -> torch.Tensor:
        weight = self._packed(layer) if self.pack else layer.weight
        return _onednn_linear(x, weight, layer.bias if bias is None else bias, post)

    def _packed(self, layer: torch.nn.Linear) -> torch.Tensor:
        """The layer's weight in oneDNN's blocked layout, made once and again only if the weight changes."""
        w = layer.weight
        stamp = (w.data_ptr(), w._version, tuple(w.shape))
        hit = self._packs.get(id(layer))
        if hit is None or hit[0] != stamp:
            hit = self._packs[id(layer)] = (stamp, torch.ops.mkldnn._reorder_linear_weight(w.detach(), PACK_ROWS))
        return hit[1]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        linear = self._linear(pixel_values)
        if linear is _aten or pixel_values.shape[0] <= CPU_CHUNK:
            return self.scores(pixel_values, linear)
        return torch.cat([self.scores(chunk, linear) for chunk in pixel_values.split(CPU_CHUNK)])

    def scores(self, pixel_values: torch.Tensor, linear: Callable) -> torch.Tensor:
        model = self.model
        vision = model.vision_model
        hidden = vision.pre_layrnorm(vision.embeddings(pixel_values))
        layers = vision.encoder.layers
        for layer in layers[:-1]:
            hidden = self.layer(layer, hidden, linear)
        pooled = vision.post_layernorm(self.layer(layers[-1], hidden, linear, cls_only=True)[:, 0])
        embeds = model.visual_projection(pooled)
        embeds = embeds / embeds.norm(dim=-1, keepdim=True)
        if not self.head:
            return embeds
        head = model.predictor if hasattr(model, "predictor") else model.layers  # V1 : V2
        return head(embeds)[:, 0]

    def layer(self, layer: torch.nn.Module, hidden: torch.Tensor, linear: Callable, cls_only: bool = False):
        """A CLIPEncoderLayer's output; with ``cls_only`` [B,1,D] for the CLS token alone (its query attends to every
        token's key and value)."""
        attn = layer.self_attn
        b = hidden.shape[0]
        heads, head_dim = attn.num_heads, attn.head_dim
        x = layer.layer_norm1(hidden)
        q = linear(x[:, :1] if cls_only else x, attn.q_proj).view(b, -1, heads, head_dim).transpose(1, 2)
        k = linear(x, attn.k_proj).view(b, -1, heads, head_dim).transpose(1, 2)
        v = linear(x, attn.v_proj).view(b, -1, heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
        hidden = linear(out.transpose(1, 2).reshape(b, q.shape[2], -1), attn.out_proj).add_(
            hidden[:, :1] if cls_only else hidden)
        return self.mlp(layer, hidden, linear)

    def mlp(self, layer: torch.nn.Module, hidden: torch.Tensor, linear: Callable) -> torch.Tensor:
        """``hidden + mlp(layer_norm2(hidden))``, with quick_gelu fused into fc1 (see the module docstring)."""
        norm, fc1, fc2 = layer.layer_norm2, layer.mlp.fc1, layer.mlp.fc2
        if self.gelu:  # exact GELU fused into fc1 (ViT-H/14's open_clip towers, PickScore)
            return hidden.add_(linear(linear(norm(hidden), fc1, None, "gelu"), fc2))
        if not self.quick_gelu or fc1.bias is None or fc2.bias is None or norm.weight is None or norm.bias is None:
            return hidden.add_(linear(layer.mlp.activation_fn(linear(norm(hidden), fc1)), fc2))
        s = QUICK_GELU
        x = F.layer_norm(hidden, norm.normalized_shape, norm.weight * s, norm.bias * s, norm.eps)  # s * ln2(h)
        x = linear(x, fc1, fc1.bias * s, "swish")  # silu(s * fc1(ln2 h)) = s * quick_gelu(fc1(ln2 h))
        x = linear(x, fc2, fc2.bias * s)  # s * mlp(ln2 h)
        return hidden.add_(x, alpha=1 / s)


class CompiledScorer:
    """``FastScorer`` (ATen linears) under torch.compile (compiled on the first call, timed and logged). If compiling
    or running the compiled code fails, it logs why and uses ``eager`` (the predictor's own ``FastScorer``, so its
    packed weights are not made twice) from then on. Running out of memory is not such a failure: it is raised (so
    ComfyUI's handler sees it) and the compiled code is used again next time."""

    def __init__(self, eager: FastScorer, compiler: Callable | None = None):
        self.eager = eager
        self.failed: str | None = None
        self.compile_seconds: float | None = None
        try:
            self.compiled = (compiler or _inductor)(FastScorer(eager.model, onednn=False))
        except Exception as e:  # noqa: BLE001 - e.g. a torch build without a working compiler
            self._fall_back(e)

    def _fall_back(self, error: Exception) -> None:
        self.failed = f"{type(error).__name__}: {error}"
        log.warning("torch.compile of the aesthetic predictor failed, scoring without it: %s",
                    self.failed.splitlines()[0][:500])

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.failed is not None:
            return self.eager(pixel_values)
        first = self.compile_seconds is None
        start = time.perf_counter()
        try:
            scores = self.compiled(pixel_values)
        except torch.OutOfMemoryError:
            raise  # too big a batch, not a compiler failure: the compiled code stays for the next call
        except Exception as e:  # noqa: BLE001 - any compiler failure falls back to the same math, eagerly
            self._fall_back(e)
            return self.eager(pixel_values)
        if first:
            self.compile_seconds = time.perf_counter() - start
            log.info("compiled the aesthetic predictor in %.1f s (first batch included)", self.compile_seconds)
        return scores


def _inductor(module: torch.nn.Module) -> Callable:
    # dynamic: one graph for every batch size (a short last batch would otherwise compile a second time)
    return torch.compile(module, dynamic=True)
