"""The dual-stream MobileNetV2 that turns BMUS and CDUS images into deep features (DF).

Two MobileNetV2 feature extractors, one per ultrasound mode (B-mode, colour Doppler), each
global-average-pooled to 1280 values; the two are concatenated (2560), then dropout and a
linear head give one logit (N≥1 vs N0). Cohorts without colour Doppler use the single-stream
form (BMUS only, 1280 fused). Both streams start from the same backbone weights
(:func:`tasks.features.cnn.weights.load_backbone`: a converted ImageNet checkpoint, or random).

Input contract: float tensors ``[N, C, H, W]`` scaled to [0, 1], already resized/cropped.
The model applies ImageNet mean/std normalisation itself, after replicating a one-channel
BMUS to three channels, so greyscale is normalised per channel exactly as torchvision's
``Grayscale(3)`` + ``Normalize`` would, and no caller can forget or repeat it.

Reads and writes nothing; checkpoints are the business of the training step.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from tasks.features.cnn.weights import IMAGENET_MEAN, IMAGENET_STD, load_backbone

FEATURES = 1280  # MobileNetV2 1.0's last feature map width
STREAMS = ("bmus", "cdus")


class DualStreamMobileNetV2(nn.Module):
    """BMUS (+ CDUS) MobileNetV2 streams, pooled, concatenated, one-logit head.

    Parameters
    ----------
    bmus : feature extractor for B-mode (``mobilenet_v2().features``), ``[N,3,H,W]`` ->
        ``[N,1280,h,w]``.
    cdus : feature extractor for colour Doppler, or None for the single-stream form.
    dropout : dropout probability before the head.
    """

    def __init__(self, bmus: nn.Module, cdus: nn.Module | None = None, dropout: float = 0.2):
        super().__init__()
        self.bmus = bmus
        self.cdus = cdus
        self.dual = cdus is not None
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(FEATURES * (2 if self.dual else 1), 1)
        # Not persistent: constants of the input contract, not learned state, so state_dict
        # keys stay those of the streams and the head.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def streams(self) -> tuple[str, ...]:
        return STREAMS if self.dual else STREAMS[:1]

    def _pooled(self, stream: nn.Module, image: torch.Tensor, name: str) -> torch.Tensor:
        if image.ndim != 4 or image.shape[1] not in (1, 3):
            raise ValueError(
                f"{name} must be [N, 1 or 3, H, W] in [0, 1], got {tuple(image.shape)}"
            )
        if image.shape[1] == 1:
            image = image.expand(-1, 3, -1, -1)
        features = stream((image - self.mean) / self.std)
        return features.mean(dim=(2, 3))

    def embed(
        self, bmus: torch.Tensor, cdus: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Pooled features per stream and fused.

        Returns
        -------
        ``bmus`` [N, 1280], ``cdus`` [N, 1280] (dual form only), ``fused`` [N, 2560] (dual)
        or [N, 1280] (single).

        Raises
        ------
        ValueError
            Dual form without ``cdus``, or single form given a ``cdus`` it would ignore.
        """
        if self.dual and cdus is None:
            raise ValueError(
                "dual-stream model needs a CDUS image; build it with dual=False for a cohort "
                "without colour Doppler"
            )
        if not self.dual and cdus is not None:
            raise ValueError("single-stream (BMUS only) model was given a CDUS image")
        out = {"bmus": self._pooled(self.bmus, bmus, "bmus")}
        if self.dual:
            out["cdus"] = self._pooled(self.cdus, cdus, "cdus")
            out["fused"] = torch.cat([out["bmus"], out["cdus"]], dim=1)
        else:
            out["fused"] = out["bmus"]
        return out

    def forward(self, bmus: torch.Tensor, cdus: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[N]`` (one per case; sigmoid gives P(N≥1)), for ``BCEWithLogitsLoss``."""
        fused = self.embed(bmus, cdus)["fused"]
        return self.head(self.dropout(fused)).squeeze(1)


def build_network(
    start: str = "random",
    dual: bool = True,
    dropout: float = 0.2,
    tf_padding: bool | None = None,
) -> tuple[DualStreamMobileNetV2, dict]:
    """Build the network with both streams starting from the same backbone weights.

    Parameters
    ----------
    start : ``"random"`` or a path / fsspec URI of a torchvision ``mobilenet_v2`` checkpoint
        (see :func:`tasks.features.cnn.weights.load_backbone`).
    dual : BMUS + CDUS streams; False for BMUS only.
    dropout : dropout probability before the head.
    tf_padding : TF 'SAME' padding on stride-2 convolutions; None follows the checkpoint
        (on for converted TFLite weights, off for plain torchvision ones and random).

    Returns
    -------
    model : :class:`DualStreamMobileNetV2` (training mode).
    meta : the backbone's meta (``start``, ``sha256``, ``tf_padding``, licence where known)
        plus ``streams`` and ``dropout``.
    """
    backbone, meta = load_backbone(start, tf_padding=tf_padding)
    cdus = copy.deepcopy(backbone.features) if dual else None
    model = DualStreamMobileNetV2(backbone.features, cdus, dropout=dropout)
    return model, {**meta, "streams": list(model.streams), "dropout": dropout}
