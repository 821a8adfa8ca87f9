"""ArcFace: an additive angular margin on a cosine classifier (Deng et al., CVPR 2019).

Embeddings and class weights are both L2-normalised, so a logit is ``s * cos(theta_j)``, the cosine of
the angle between the embedding and class ``j``'s centre, times a scale ``s``. For the true class the
angle is widened by ``m`` before the cosine is taken: ``s * cos(theta_y + m)``. The network must
then pull an embedding within ``theta_y + m`` of its centre to win, which leaves a gap of ``m``
radians between classes: what makes the embedding work for people never seen in training.

``cos(theta + m)`` only decreases with ``theta`` while ``theta + m <= pi``. Past that point (an
embedding almost opposite its centre) the paper's code offers two choices, both here:

* default: there, use ``cos(theta) - m * sin(m)`` instead (``m * sin(m)`` is how much ``m`` more
  radians lower the cosine at ``theta = pi - m``, to first order): a CosFace-style additive penalty
  that keeps the logit decreasing in ``theta`` and the true class still penalised;
* ``easy_margin``: add the margin only where ``cos(theta) > 0`` (``theta < pi / 2``) and leave the
  plain cosine elsewhere; milder early in training, when many angles are still wide.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SIN_FLOOR = 1e-12  # sin = sqrt(1 - cos^2) has an infinite gradient at cos = +-1; keep it finite


class ArcMarginHead(nn.Module):
    """Cosine logits with ArcFace's additive angular margin on the true class.

    Args:
        in_features: D, the embedding width.
        num_classes: C, the training identities.
        scale: ``s``, the radius of the hypersphere the logits live on (64 in the paper, 30 for fewer
            classes).
        margin: ``m`` in radians (0.5 in the paper), in [0, pi/2).
        easy_margin: add the margin only where ``cos(theta) > 0`` (see the module docstring).

    Attributes:
        weight: ``(C, D)`` class centres, normalised in every forward (their length never matters).
    """

    def __init__(self, in_features: int, num_classes: int, scale: float = 30.0, margin: float = 0.5,
                 easy_margin: bool = False):  # fmt: skip
        super().__init__()
        if in_features < 1 or num_classes < 1:
            raise ValueError(f"in_features and num_classes must be >= 1, got {in_features} and {num_classes}")
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        if not 0.0 <= margin < math.pi / 2:
            raise ValueError(f"margin must be in [0, pi/2) radians, got {margin}")
        self.scale, self.margin, self.easy_margin = float(scale), float(margin), bool(easy_margin)
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.xavier_uniform_(self.weight)

    def cosines(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` -> ``(B, C)``: cosine of each embedding with each class centre."""
        return F.linear(F.normalize(embeddings.float(), dim=-1), F.normalize(self.weight.float(), dim=-1))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, C)``: ``s * cos(theta_j)``, with the true class (``labels``, ``(B,)`` long) given
        its margin. Without labels (evaluation), the plain scaled cosines."""
        cos = self.cosines(embeddings).clamp(-1.0, 1.0)
        if labels is None or self.margin == 0.0:
            return self.scale * cos
        target = cos.gather(1, labels.view(-1, 1))  # (B, 1) cos(theta_y)
        sin = (1.0 - target * target).clamp_min(SIN_FLOOR).sqrt()
        widened = target * math.cos(self.margin) - sin * math.sin(self.margin)  # cos(theta_y + m)
        if self.easy_margin:
            widened = torch.where(target > 0, widened, target)
        else:  # past theta = pi - m, cos(theta + m) would rise again: an additive penalty instead
            penalty = self.margin * math.sin(self.margin)
            widened = torch.where(target > math.cos(math.pi - self.margin), widened, target - penalty)
        return self.scale * cos.scatter(1, labels.view(-1, 1), widened)

    def extra_repr(self) -> str:
        c, d = self.weight.shape
        return (
            f"in_features={d}, num_classes={c}, scale={self.scale}, margin={self.margin}, "
            f"easy_margin={self.easy_margin}"
        )
