"""ArcFace's margin head against the angles themselves: cos(theta + m) on the true class, the paper's
two ways past theta = pi - m, finite gradients at cos = +-1, and bad arguments refused."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bigmodel.nn.margin import ArcMarginHead


def head_at_angles(
    angles: torch.Tensor, margin=0.5, scale=30.0, easy=False
) -> tuple[ArcMarginHead, torch.Tensor]:
    """A 2-class head whose class 0 sits at angle 0, and 2-d embeddings at ``angles`` from it."""
    head = ArcMarginHead(2, 2, scale=scale, margin=margin, easy_margin=easy)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 3.0]]))  # lengths do not matter
    embeddings = torch.stack([angles.cos(), angles.sin()], dim=1) * 7.0  # nor do these
    return head, embeddings


def test_true_class_gets_cos_theta_plus_m_and_the_others_plain_cosines():
    angles = torch.linspace(0.0, math.pi - 0.5 - 1e-3, 50, dtype=torch.float64)
    head, x = head_at_angles(angles)
    logits = head(x, torch.zeros(50, dtype=torch.long))
    assert torch.allclose(logits[:, 0].double(), 30.0 * torch.cos(angles + 0.5), atol=1e-4)
    assert torch.allclose(logits[:, 1].double(), 30.0 * torch.sin(angles), atol=1e-4)  # class 1 at pi/2
    assert torch.allclose(head(x).double(), 30.0 * torch.stack([angles.cos(), angles.sin()], 1), atol=1e-4)


def test_past_pi_minus_m_the_default_subtracts_m_sin_m_and_stays_decreasing():
    m = 0.5
    angles = torch.linspace(0.0, math.pi, 400, dtype=torch.float64)
    head, x = head_at_angles(angles, margin=m, scale=1.0)
    target = head(x, torch.zeros(400, dtype=torch.long))[:, 0].double()
    beyond = angles > math.pi - m + 1e-4
    assert torch.allclose(target[beyond], angles[beyond].cos() - m * math.sin(m), atol=1e-5)
    assert (target.diff() <= 1e-6).all()  # cos(theta + m) alone would rise again past pi - m
    assert (target <= angles.cos() + 1e-6).all()  # the true class is never helped


def test_easy_margin_only_where_the_cosine_is_positive():
    angles = torch.linspace(0.0, math.pi, 200, dtype=torch.float64)
    head, x = head_at_angles(angles, margin=0.4, scale=2.0, easy=True)
    target = head(x, torch.zeros(200, dtype=torch.long))[:, 0].double() / 2.0
    near = angles < math.pi / 2 - 1e-4
    far = angles > math.pi / 2 + 1e-4
    assert torch.allclose(target[near], torch.cos(angles[near] + 0.4), atol=1e-5)
    assert torch.allclose(target[far], angles[far].cos(), atol=1e-5)


def test_margin_zero_is_a_scaled_cosine_classifier():
    torch.manual_seed(0)
    head = ArcMarginHead(5, 3, scale=4.0, margin=0.0)
    x = torch.randn(6, 5)
    expected = 4.0 * F.normalize(x, dim=1) @ F.normalize(head.weight, dim=1).T
    assert torch.allclose(head(x, torch.tensor([0, 1, 2, 0, 1, 2])), expected, atol=1e-5)


@pytest.mark.parametrize("easy", [False, True])
def test_gradients_are_finite_when_an_embedding_sits_on_or_opposite_its_centre(easy):
    head = ArcMarginHead(3, 2, margin=0.5, easy_margin=easy)
    x = torch.stack([head.weight[0].detach().clone(), -head.weight[1].detach().clone()]).requires_grad_(True)
    loss = F.cross_entropy(head(x, torch.tensor([0, 1])), torch.tensor([0, 1]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all() and torch.isfinite(head.weight.grad).all()


def test_training_with_the_margin_separates_classes_by_more_than_the_margin():
    torch.manual_seed(0)
    centres = F.normalize(torch.randn(4, 8), dim=1)
    x = centres.repeat_interleave(16, 0) + 0.25 * torch.randn(64, 8)
    y = torch.arange(4).repeat_interleave(16)
    head = ArcMarginHead(8, 4, scale=16.0, margin=0.3)
    encoder = torch.nn.Linear(8, 8)
    optimizer = torch.optim.Adam([*head.parameters(), *encoder.parameters()], lr=0.05)
    for _ in range(150):
        optimizer.zero_grad()
        F.cross_entropy(head(encoder(x), y), y).backward()
        optimizer.step()
    with torch.no_grad():
        cos = head.cosines(encoder(x))
    own = cos.gather(1, y[:, None]).squeeze(1).clamp(-1, 1).acos()
    others = cos.masked_fill(F.one_hot(y, 4).bool(), -1.0).max(1).values.clamp(-1, 1).acos()
    assert (others - own).min() > 0.3  # every example closer to its centre by more than m radians


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"in_features": 0, "num_classes": 2}, "in_features"),
        ({"in_features": 4, "num_classes": 2, "scale": 0.0}, "scale"),
        ({"in_features": 4, "num_classes": 2, "margin": 1.6}, "margin"),
        ({"in_features": 4, "num_classes": 2, "margin": -0.1}, "margin"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ArcMarginHead(**kwargs)
