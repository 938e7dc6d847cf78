"""Pretrained MobileNetV2 backbone: offline ImageNet weights from TFLite, and loading them.

No machine here can download torchvision's ImageNet weights; Google's quantised MobileNetV2
1.0/224 TFLite classifiers (``../shared/data/mobilenet_v2_tflite/``) are the one offline
source. :func:`convert_tflite` reads such a file with the pure-Python ``tflite`` flatbuffer
schema (no interpreter), dequantises every convolution and writes a torchvision
``mobilenet_v2`` checkpoint. :func:`load_backbone` opens a checkpoint (local path or any
fsspec URI, e.g. ``s3://``) or builds a random one.

Reads: a ``.tflite`` file (convert) or a ``.pth`` checkpoint (load).
Writes: a ``.pth`` checkpoint, ``{"state_dict": ..., "meta": ...}`` (convert).

The converted weights are a derivative of Google's MobileNetV2 TFLite models, licensed under
the Apache License 2.0 (``LICENSE`` beside the TFLite files); every converted checkpoint
carries that notice in its ``meta["licence"]``, and it must travel with the file.

How the TFLite graph maps onto torchvision:

- Operators are walked in graph order (tensor indices are not in layer order): the 53
  CONV_2D / DEPTHWISE_CONV_2D operators are, in order, the 52 ``nn.Conv2d`` of
  torchvision's ``mobilenet_v2`` in module order, then the 1x1 logits convolution, which
  becomes ``classifier.1`` without the background class (1001 -> 1000 logits).
- TFLite folded batch norm into the convolution bias. Each torchvision ``BatchNorm2d``
  therefore becomes an exact identity carrying that bias: weight 1, bias = conv bias,
  running_mean 0, running_var ``1 - eps`` (so ``sqrt(var + eps) == 1``).
- TensorFlow feeds ``x_tf = 2 * x01 - 1``; torchvision feeds ``x = (x01 - mean) / std``.
  So ``x_tf = 2 * std * x + (2 * mean - 1)``, folded into the first convolution: weights
  scaled per input channel by ``2 * std``, bias plus ``sum(w * (2 * mean - 1))``. The
  converted model works with torchvision's standard ImageNet preprocessing. One
  approximation remains: where the first convolution pads, torchvision pads with 0, which
  is the ImageNet mean colour (``x_tf`` of -0.03/-0.09/-0.19 per channel), where TF pads
  with ``x_tf = 0`` (mid-grey). It touches one border row and column of the first feature
  map only: padding there with the exact TF value moved the correlations below by 0.0002.
- TensorFlow's "SAME" padding puts the odd extra pixel of a stride-2 convolution at the
  bottom/right; torchvision pads symmetrically. :func:`use_tf_padding` swaps the five
  stride-2 convolutions for :class:`Conv2dSame` (as timm does). Measured against the TFLite
  interpreter on 20 BUS-BRA images plus the two test images (per-image Pearson r of pooled
  features, mean): 0.995 (uint8 file) / 0.991 (int8 file) with TF padding, 0.54 / 0.64
  without; the remaining gap is most likely TFLite's integer activations. Converted
  checkpoints record ``meta["tf_padding"] = True`` and :func:`load_backbone` applies it by
  default.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import fsspec
import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

# torchvision's ImageNet normalisation, the contract of every checkpoint this module writes.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

LICENCE = "Apache-2.0, converted from Google's MobileNetV2 TFLite"

# TFLite TensorType codes (schema.fbs) for the tensor types these models hold.
_TFLITE_DTYPES = {0: np.float32, 2: np.int32, 3: np.uint8, 9: np.int8}
_CONV_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D"}


def dequantize(
    values: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int = 0
) -> np.ndarray:
    """Dequantise integer tensor values: ``real = scale * (q - zero_point)``.

    One rule serves per-tensor quantisation (one scale and zero point, e.g. uint8 with zero
    point 128) and per-channel quantisation (one scale per slice along ``axis``, e.g. int8
    weights with zero point 0).

    Parameters
    ----------
    values : integer array.
    scale, zero_point : arrays of length 1 (per tensor) or ``values.shape[axis]`` (per
        channel). An empty ``zero_point`` means 0.
    axis : the quantised dimension, used only when there is more than one scale.

    Returns
    -------
    float32 array of ``values``' shape.
    """
    scale = np.asarray(scale, dtype=np.float64).ravel()
    zero_point = np.asarray(zero_point, dtype=np.int64).ravel()
    if zero_point.size == 0:
        zero_point = np.zeros(1, dtype=np.int64)
    if scale.size > 1:
        if scale.size != values.shape[axis]:
            raise ValueError(
                f"{scale.size} scales for axis {axis} of a tensor shaped {values.shape}"
            )
        shape = [1] * values.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
        zero_point = zero_point.reshape(shape) if zero_point.size > 1 else zero_point
    return ((values.astype(np.int64) - zero_point) * scale).astype(np.float32)


def _operator_names() -> dict[int, str]:
    import tflite

    return {
        code: name
        for name, code in vars(tflite.BuiltinOperator).items()
        if not name.startswith("_") and isinstance(code, int)
    }


def _tensor(model, graph, index: int) -> np.ndarray:
    """Read one tensor of a TFLite graph as float32, dequantised if it is quantised."""
    tensor = graph.Tensors(index)
    if tensor.Type() not in _TFLITE_DTYPES:
        raise ValueError(f"tensor {tensor.Name().decode()!r} has unsupported type {tensor.Type()}")
    raw = model.Buffers(tensor.Buffer()).DataAsNumpy()
    if isinstance(raw, int):  # the flatbuffer returns 0 for an empty buffer
        raise ValueError(f"tensor {tensor.Name().decode()!r} holds no constant data")
    dtype = np.dtype(_TFLITE_DTYPES[tensor.Type()]).newbyteorder("<")  # flatbuffers are LE
    values = np.frombuffer(raw.tobytes(), dtype=dtype).reshape(tensor.ShapeAsNumpy())
    quant = tensor.Quantization()
    if quant is None or quant.ScaleLength() == 0:
        return values.astype(np.float32)
    zero_point = quant.ZeroPointAsNumpy() if quant.ZeroPointLength() else np.zeros(1)
    return dequantize(values, quant.ScaleAsNumpy(), zero_point, quant.QuantizedDimension())


def read_tflite_convs(data: bytes) -> list[dict]:
    """Every convolution of a TFLite model, in graph (= layer) order.

    Returns
    -------
    One dict per CONV_2D / DEPTHWISE_CONV_2D operator: ``op``, ``stride`` (h, w),
    ``weight`` (float32, TFLite layout: OHWI, or 1HWC for depthwise) and ``bias``.
    """
    import tflite

    names = _operator_names()
    model = tflite.Model.GetRootAsModel(data, 0)
    graph = model.Subgraphs(0)
    convs = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        # Schema >= 2.4 moved codes past 127 to BuiltinCode; older files use the deprecated
        # field. The larger of the two is the real one.
        name = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()))
        if name not in _CONV_OPS:
            continue
        options = tflite.Conv2DOptions() if name == "CONV_2D" else tflite.DepthwiseConv2DOptions()
        table = op.BuiltinOptions()
        options.Init(table.Bytes, table.Pos)
        convs.append(
            {
                "op": name,
                "stride": (options.StrideH(), options.StrideW()),
                "weight": _tensor(model, graph, op.Inputs(1)),
                "bias": _tensor(model, graph, op.Inputs(2)),
            }
        )
    return convs


def _fold_input_scaling(weight: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Make a first convolution that expects ``x_tf`` accept torchvision-normalised input."""
    weight = weight.astype(np.float64)
    gain = 2.0 * np.asarray(IMAGENET_STD)  # x_tf = gain * x + offset, per input channel
    offset = 2.0 * np.asarray(IMAGENET_MEAN) - 1.0
    new_bias = bias + np.einsum("oihw,i->o", weight, offset)
    new_weight = weight * gain[None, :, None, None]
    return new_weight.astype(np.float32), new_bias.astype(np.float32)


def tflite_to_state_dict(data: bytes) -> dict[str, torch.Tensor]:
    """Map the convolutions of a MobileNetV2 1.0/224 TFLite model onto torchvision's layout.

    Raises
    ------
    ValueError
        If the graph's convolutions do not match torchvision's ``mobilenet_v2`` one to one.
    """
    convs = read_tflite_convs(data)
    model = torchvision.models.mobilenet_v2(weights=None)
    modules = list(model.modules())
    pairs = [
        (m, next(b for b in modules[i + 1 :] if isinstance(b, nn.BatchNorm2d)))
        for i, m in enumerate(modules)
        if isinstance(m, nn.Conv2d)
    ]
    if len(convs) != len(pairs) + 1:
        raise ValueError(
            f"expected {len(pairs) + 1} convolutions (MobileNetV2 1.0), found {len(convs)}"
        )
    with torch.no_grad():
        for index, ((conv, bn), src) in enumerate(zip(pairs, convs, strict=False)):
            if src["op"] == "DEPTHWISE_CONV_2D":
                weight = src["weight"].transpose(3, 0, 1, 2)  # 1HWC -> C1HW
            else:
                weight = src["weight"].transpose(0, 3, 1, 2)  # OHWI -> OIHW
            bias = src["bias"]
            if index == 0:
                weight, bias = _fold_input_scaling(weight, bias)
            if tuple(weight.shape) != tuple(conv.weight.shape) or src["stride"] != conv.stride:
                raise ValueError(
                    f"convolution {index}: TFLite {weight.shape} stride {src['stride']} does not "
                    f"match torchvision {tuple(conv.weight.shape)} stride {conv.stride}"
                )
            conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight)))
            bn.weight.fill_(1.0)
            bn.bias.copy_(torch.from_numpy(bias))
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
        logits = convs[-1]
        linear = model.classifier[1]
        weight = logits["weight"].reshape(logits["weight"].shape[0], -1)
        if weight.shape != (linear.out_features + 1, linear.in_features):
            raise ValueError(f"logits layer {weight.shape} is not 1001 x {linear.in_features}")
        # Row 0 is TF-slim's "background" class; torchvision has the 1000 ImageNet classes.
        linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight[1:])))
        linear.bias.copy_(torch.from_numpy(logits["bias"][1:].copy()))
    return model.state_dict()


def _read_bytes(uri: str | Path) -> bytes:
    with fsspec.open(str(uri), "rb") as handle:
        return handle.read()


def convert_tflite(src: str | Path, dst: str | Path) -> dict:
    """Convert a MobileNetV2 1.0/224 TFLite classifier into a torchvision checkpoint.

    Parameters
    ----------
    src : path or fsspec URI of ``mobilenet_v2_1.0_224_quant.tflite`` (uint8, per tensor) or
        ``tf2_mobilenet_v2_1.0_224_ptq.tflite`` (int8, per channel) or the like.
    dst : path or fsspec URI of the ``.pth`` to write.

    Returns
    -------
    The checkpoint's ``meta``: ``source`` (file name), ``source_sha256``, ``tf_padding``
    (True: load with :func:`use_tf_padding`), ``licence``, ``preprocessing``, ``converter``.
    The file holds ``{"state_dict": <torchvision mobilenet_v2 state_dict>, "meta": meta}``.
    """
    data = _read_bytes(src)
    meta = {
        "source": Path(str(src)).name,
        "source_sha256": hashlib.sha256(data).hexdigest(),
        "tf_padding": True,
        "licence": LICENCE,
        "preprocessing": "torchvision ImageNet: Resize 256, CenterCrop 224, mean/std normalise",
        "converter": "tasks.features.cnn.weights.convert_tflite",
    }
    buffer = io.BytesIO()
    torch.save({"state_dict": tflite_to_state_dict(data), "meta": meta}, buffer)
    with fsspec.open(str(dst), "wb") as handle:
        handle.write(buffer.getvalue())
    return meta


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding of one axis: (before, after), the odd pixel after."""
    total = max((-(-size // stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow's 'SAME' padding, computed from the input size.

    Same parameters (and state_dict keys) as the convolution it replaces; ``padding`` must
    be 0 because the padding happens in :meth:`forward`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = _same_padding(
            x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0]
        )
        left, right = _same_padding(
            x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1]
        )
        return super().forward(F.pad(x, (left, right, top, bottom)))


def use_tf_padding(model: nn.Module) -> nn.Module:
    """Swap every strided ``nn.Conv2d`` for a :class:`Conv2dSame` sharing its parameters.

    Stride-1 convolutions already pad as TF does (symmetric, or not at all for 1x1), so
    only the five stride-2 convolutions of MobileNetV2 change. State_dict keys stay
    torchvision's. Returns ``model``, changed in place.
    """
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Conv2d or child.stride == (1, 1):
                continue
            same = Conv2dSame(
                child.in_channels,
                child.out_channels,
                child.kernel_size,
                stride=child.stride,
                padding=0,
                dilation=child.dilation,
                groups=child.groups,
                bias=child.bias is not None,
                device=child.weight.device,
                dtype=child.weight.dtype,
            )
            same.weight = child.weight
            same.bias = child.bias
            setattr(parent, name, same)
    return model


def load_backbone(start: str, tf_padding: bool | None = None) -> tuple[nn.Module, dict]:
    """Build a torchvision ``mobilenet_v2`` from a checkpoint, or with random weights.

    Parameters
    ----------
    start : ``"random"``, or a path / fsspec URI (``s3://...``) of a torchvision-format
        ``.pth``: a plain state_dict, or ``{"state_dict": ..., "meta": ...}`` as
        :func:`convert_tflite` writes.
    tf_padding : use TF 'SAME' padding on stride-2 convolutions. None: what the checkpoint's
        meta says (converted checkpoints: True; plain state_dicts and random: False).

    Returns
    -------
    model : ``torchvision.models.MobileNetV2`` (training mode, like any new module).
    meta : ``start``, ``sha256`` of the checkpoint file (None for random), ``tf_padding`` in
        effect, plus the checkpoint's own meta (source, source_sha256, licence).
    """
    if start == "random":
        model = torchvision.models.mobilenet_v2(weights=None)
        meta = {"start": "random", "sha256": None, "tf_padding": False}
    else:
        data = _read_bytes(start)
        checkpoint = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if "state_dict" in checkpoint:
            state, saved = checkpoint["state_dict"], dict(checkpoint.get("meta") or {})
        else:
            state, saved = checkpoint, {}
        model = torchvision.models.mobilenet_v2(
            weights=None, num_classes=state["classifier.1.weight"].shape[0]
        )
        model.load_state_dict(state)
        meta = {
            **saved,
            "start": str(start),
            "sha256": hashlib.sha256(data).hexdigest(),
            "tf_padding": bool(saved.get("tf_padding", False)),
        }
    if tf_padding is not None:
        meta["tf_padding"] = bool(tf_padding)
    if meta["tf_padding"]:
        use_tf_padding(model)
    return model, meta


def imagenet_transform(size: int = 224, resize: int = 256):
    """torchvision's standard ImageNet evaluation preprocessing (PIL image -> tensor)."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Resize(resize),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
