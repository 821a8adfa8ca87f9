"""The fastspeech family: monotonic alignment search against a brute-force search, the length
regulator against repeat_interleave, the alignment prior, padding that never changes a real item's
outputs, and synthesis from predicted durations."""

from __future__ import annotations

import itertools

import pytest
import torch

from bigmodel.errors import RecipeError
from bigmodel.models.fastspeech import (
    beta_binomial_prior,
    length_regulator,
    monotonic_alignment_search,
)
from bigmodel.models.registry import create_model


def monotonic_paths(T: int, N: int):
    """Every monotonic path of T frames over N symbols: the symbol of each frame, starting at 0, ending
    at N - 1, each step staying or moving to the next symbol."""
    for moves in itertools.combinations(range(1, T), N - 1):  # the frames where the next symbol starts
        symbols, current = [], 0
        for t in range(T):
            current += t in moves
            symbols.append(current)
        yield symbols


def brute_force_best(scores: torch.Tensor) -> list[int]:
    T, N = scores.shape
    return max(monotonic_paths(T, N), key=lambda p: sum(float(scores[t, n]) for t, n in enumerate(p)))


def test_monotonic_alignment_search_finds_the_best_path_of_every_item():
    torch.manual_seed(0)
    T, N = 7, 4
    lengths = [(7, 4), (6, 3), (5, 5), (4, 1), (7, 2)]  # (frames, symbols) per item, padded to (7, 5)
    scores = torch.randn(len(lengths), T, N + 1).log_softmax(-1)
    path = monotonic_alignment_search(
        scores, torch.tensor([n for _, n in lengths]), torch.tensor([t for t, _ in lengths])
    )
    for b, (t_b, n_b) in enumerate(lengths):
        best = brute_force_best(scores[b, :t_b, :n_b])
        assert path[b, :t_b].argmax(-1).tolist() == best, b
        assert path[b, :t_b].sum(-1).eq(1).all()  # one symbol per real frame
        assert path[b, t_b:].sum() == 0 and path[b, :, n_b:].sum() == 0  # nothing in the padding
        assert path[b].sum(0)[:n_b].min() >= 1  # every symbol gets a frame


def test_monotonic_alignment_search_follows_a_clear_diagonal():
    truth = [0, 0, 1, 1, 1, 2]
    scores = torch.full((1, 6, 3), -10.0)
    scores[0, torch.arange(6), torch.tensor(truth)] = 0.0
    path = monotonic_alignment_search(scores, torch.tensor([3]), torch.tensor([6]))
    assert path[0].argmax(-1).tolist() == truth
    assert path[0].sum(0).tolist() == [2, 3, 1]


def test_length_regulator_repeats_each_symbol_for_its_frames():
    x = torch.randn(2, 3, 4)
    durations = torch.tensor([[2, 0, 3], [1, 1, 0]])
    expanded, lengths = length_regulator(x, durations)
    assert lengths.tolist() == [5, 2] and expanded.shape == (2, 5, 4)
    for b in range(2):
        expected = x[b].repeat_interleave(durations[b], dim=0)
        torch.testing.assert_close(expanded[b, : lengths[b]], expected)
        assert expanded[b, lengths[b] :].abs().sum() == 0
    longer, _ = length_regulator(x, durations, frames=8)  # a fixed frame count pads with zeros
    torch.testing.assert_close(longer[:, :5], expanded)


def test_the_alignment_prior_is_a_distribution_over_real_symbols_near_the_diagonal():
    text, mel = torch.tensor([4, 2, 1]), torch.tensor([10, 6, 3])
    log_prior = beta_binomial_prior(text, mel, 4, 10)
    for b in range(3):
        n, t = int(text[b]), int(mel[b])
        torch.testing.assert_close(log_prior[b, :t, :n].exp().sum(-1), torch.ones(t))
        assert torch.isinf(log_prior[b, :, n:]).all()
    peaks = log_prior[0].argmax(-1).tolist()
    assert peaks[0] == 0 and peaks[-1] == 3 and peaks == sorted(peaks)
    from scipy.stats import betabinom

    for t in range(10):  # item 0: BetaBinomial(n; N - 1 = 3, t + 1, T - t) exactly
        expected = betabinom.logpmf(range(4), 3, t + 1, 10 - t)
        torch.testing.assert_close(log_prior[0, t], torch.tensor(expected, dtype=torch.float32))


def _model(**overrides):
    torch.manual_seed(0)
    return create_model("fastspeech-tiny", dropout=0.0, **overrides).eval()


@pytest.mark.parametrize("postnet_layers", [0, 2])
def test_padding_never_changes_the_outputs_of_the_real_items(postnet_layers):
    model = _model(postnet_layers=postnet_layers)
    torch.manual_seed(1)
    ids = torch.randint(1, 11, (2, 6))
    mels = torch.randn(2, 15, 6)
    ids[1, 4:] = 0
    mask = (ids != 0).long()
    mel_lengths = torch.tensor([15, 11])
    mels[1, 11:] = 99.0  # what sits in the padding must not matter
    with torch.no_grad():
        both = model(ids, mask, mels, mel_lengths)
        alone = model(ids[1:, :4], None, mels[1:, :11])
    assert both.mel.shape == (2, 15, 6) and both.log_durations.shape == (2, 6)
    torch.testing.assert_close(both.mel[1, :11], alone.mel[0], atol=1e-5, rtol=1e-5)
    assert both.mel[1, 11:].abs().sum() == 0
    torch.testing.assert_close(both.log_durations[1, :4], alone.log_durations[0], atol=1e-5, rtol=1e-5)
    assert torch.equal(both.durations[1, :4], alone.durations[0]) and both.durations[1, 4:].sum() == 0
    assert both.durations.sum(1).tolist() == [15, 11]  # every real frame belongs to a symbol
    torch.testing.assert_close(both.log_alignment[1, :11, :4], alone.log_alignment[0], atol=1e-5, rtol=1e-5)


def test_synthesis_uses_the_predicted_durations_and_the_speed():
    model = _model()
    with torch.no_grad():
        model.duration_predictor.out.bias.fill_(torch.tensor(3.0).log())  # every symbol: 3 frames
        model.duration_predictor.out.weight.zero_()
    ids = torch.tensor([[3, 4, 5], [6, 7, 0]])
    out = model.synthesise(ids, (ids != 0).long())
    assert out.durations.tolist() == [[3, 3, 3], [3, 3, 0]] and out.mel_lengths.tolist() == [9, 6]
    assert out.mel.shape == (2, 9, 6) and out.mel[1, 6:].abs().sum() == 0
    alone = model.synthesise(ids[1:, :2])
    torch.testing.assert_close(out.mel[1, :6], alone.mel[0], atol=1e-5, rtol=1e-5)
    fast = model.synthesise(ids, (ids != 0).long(), speed=torch.tensor([3.0, 1.5]))
    assert fast.durations.tolist() == [[1, 1, 1], [2, 2, 0]]  # never below one frame


def test_the_config_refuses_what_cannot_be_built():
    with pytest.raises(RecipeError, match="num_heads 3 must divide embed_dim 8"):
        create_model("fastspeech-tiny", num_heads=3)
    with pytest.raises(RecipeError, match="kernel_size must be odd"):
        create_model("fastspeech-tiny", kernel_size=4)
