import numpy as np
import pytest
import torch

from mmrec.networks.interest import InterestConfig, InterestModel
from mmrec.networks.scorer import MLPScorer, ScorerConfig


def test_one_step_at_a_time_equals_the_whole_sequence():
    """The real-time update property: folding events one by one gives the state of the full recompute."""
    torch.manual_seed(0)
    model = InterestModel(InterestConfig(n_events=3, text_dim=0)).eval()
    items = torch.randn(2, 6, 128)
    events = torch.randint(0, 3, (2, 6))
    gaps = torch.randint(0, 20, (2, 6))
    x = model.event_inputs(items, events, gaps)
    lengths = torch.tensor([6, 4])
    states, last = model(x, lengths)
    h = model.initial(2)
    for j in range(6):
        stepped = model.step(x[:, j], h)
        h = torch.where((j < lengths)[:, None], stepped, h)
        torch.testing.assert_close(h[0], states[0, j], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h, last, atol=1e-5, rtol=1e-5)
    assert (states[1, 4:] == 0).all()


@pytest.mark.parametrize("n", [1, 2, 7])
def test_leave_one_out_in_one_pass_equals_each_history_run_on_its_own(n):
    """``InterestModel.leave_one_out`` (what ``explain`` runs) against nn.GRU over each history separately, with the
    event after a left-out one taking its re-measured input."""
    torch.manual_seed(n)
    model = InterestModel(InterestConfig(n_events=2, text_dim=0)).eval()
    inputs, rejoined = torch.randn(n, 128), torch.randn(max(n - 1, 0), 128)
    start = model.initial(1)
    with torch.no_grad():
        states = model.leave_one_out(inputs, rejoined, start)
        expected = [model(inputs[None], torch.tensor([n]), start)[1][0]]
        for i in range(n):
            rest = [inputs[:i]] + ([rejoined[i : i + 1], inputs[i + 2 :]] if i + 1 < n else [])
            history = torch.cat(rest)
            expected.append(model(history[None], torch.tensor([len(history)]), start)[1][0] if len(history)
                            else start[0])
    assert states.shape == (n + 1, 128)
    torch.testing.assert_close(states, torch.stack(expected), atol=1e-5, rtol=1e-5)


def test_event_text_changes_the_input_only_where_present():
    torch.manual_seed(0)
    model = InterestModel(InterestConfig(n_events=1, text_dim=384, dropout=0.0)).eval()
    base = model.event_inputs(torch.zeros(1, 2, 128), torch.zeros(1, 2, dtype=torch.long),
                              torch.zeros(1, 2, dtype=torch.long))
    texts = torch.randn(1, 2, 384)
    with_text = model.event_inputs(torch.zeros(1, 2, 128), torch.zeros(1, 2, dtype=torch.long),
                                   torch.zeros(1, 2, dtype=torch.long), texts, torch.tensor([[True, False]]))
    assert not torch.allclose(with_text[0, 0], base[0, 0])
    torch.testing.assert_close(with_text[0, 1], base[0, 1])


def test_scorer_gives_probabilities_and_follows_the_dot_product_at_init():
    torch.manual_seed(0)
    scorer = MLPScorer(ScorerConfig(dim=16)).eval()
    interest = torch.randn(3, 16)
    items = torch.randn(3, 50, 16) * 3
    p = scorer.probability(interest, items)
    assert p.shape == (3, 50) and (p >= 0).all() and (p <= 1).all()
    dot = (interest[:, None] * items).sum(-1)
    # Untrained, the MLP's correction is small beside the dot product, so re-ranking starts close to retrieval.
    top_p, top_dot = p.topk(10, dim=1).indices, dot.topk(10, dim=1).indices
    overlap = np.mean([len(set(a.tolist()) & set(b.tolist())) / 10 for a, b in zip(top_p, top_dot)])
    assert overlap >= 0.6


def test_scorer_logits_are_the_mlp_over_the_concatenated_pair():
    """The factored first layer computes exactly the MLP over ``[u, v, u * v, u . v]`` that it was designed as."""
    torch.manual_seed(1)
    scorer = MLPScorer(ScorerConfig(dim=16, hidden=24)).eval()
    with torch.no_grad():
        for p in scorer.parameters():
            p.add_(torch.randn_like(p) * 0.3)  # away from the initial state, so every part of the layer counts
        interest, items = torch.randn(4, 16), torch.randn(4, 30, 16)
        u = interest[:, None].expand_as(items)
        dot = (u * items).sum(-1, keepdim=True)
        want = scorer.dot_weight * dot[..., 0] + scorer.mlp(torch.cat([u, items, u * items, dot], -1))[..., 0] \
            + scorer.bias
        torch.testing.assert_close(scorer.logits(interest, items), want, rtol=1e-5, atol=1e-5)


def test_configs_fail_early():
    with pytest.raises(ValueError, match="n_events"):
        InterestConfig(n_events=0)
    with pytest.raises(ValueError):
        ScorerConfig(rerank=-1)
