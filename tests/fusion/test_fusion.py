import pytest
import torch

from mmrec.fusion import FusionConfig, ItemFusion, ModalityAttention


@pytest.fixture
def fusion():
    torch.manual_seed(0)
    return ItemFusion(FusionConfig(n_items=6)).eval()


def _inputs(n=6):
    return torch.randn(n, 384), torch.rand(n, 1280)


def test_shapes_and_missing_modality_is_masked(fusion):
    text, image = _inputs()
    present = torch.tensor([[1, 1], [1, 0], [0, 1], [1, 1], [1, 0], [0, 1]], dtype=torch.bool)
    known = torch.zeros(6, dtype=torch.bool)
    out = fusion(text, image, present, torch.arange(6), known)
    assert out.shape == (6, 128) and torch.isfinite(out).all()
    # Whatever sits in a missing modality's slot must not change the item vector.
    garbage = image.clone()
    garbage[[1, 4]] = 1e3
    torch.testing.assert_close(fusion(text, garbage, present, torch.arange(6), known), out)


def test_text_and_image_share_one_tower(fusion):
    text, image = _inputs(2)
    t, i = fusion.modality_vectors(text, image)
    assert t.shape == i.shape == (2, 128)
    assert sum(1 for m in fusion.modules() if m.__class__.__name__ == "SiameseTower") == 1


def test_id_token_is_used_only_for_known_items_and_dropped_in_training():
    torch.manual_seed(0)
    fusion = ItemFusion(FusionConfig(n_items=4, id_dropout=0.5))
    text, image = _inputs(4)
    present = torch.ones(4, 2, dtype=torch.bool)
    fusion.eval()
    unknown = fusion(text, image, present, torch.arange(4), torch.zeros(4, dtype=torch.bool))
    known = fusion(text, image, present, torch.arange(4), torch.ones(4, dtype=torch.bool))
    assert not torch.allclose(unknown, known)
    no_ids = fusion(text, image, present, None, None)
    torch.testing.assert_close(no_ids, unknown)
    fusion.train()
    fusion.tower.net[3].p = 0.0  # isolate ID dropout from ordinary dropout
    for adapter in (fusion.text_adapter, fusion.image_adapter):
        adapter.dropout.p = 0.0
    runs = torch.stack([fusion(text, image, present, torch.arange(4), torch.ones(4, dtype=torch.bool))
                        for _ in range(20)])
    assert (runs - runs[0]).abs().sum() > 0  # the ID token comes and goes between steps


def test_attention_weights_ignore_masked_tokens():
    attention = ModalityAttention(8, 3, heads=2)
    tokens = torch.randn(2, 3, 8)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    pooled, weights = attention(tokens, mask)  # weights: (N, tokens, heads)
    assert (weights[0, 1] == 0).all() and torch.allclose(weights[0].sum(0), torch.ones(2))
    assert pooled.shape == (2, 8) and (pooled[1] == 0).all()


def test_alignment_loss_learns_to_pair_text_and_image():
    """Contrastive training makes an item's text retrieve its own image (synthetic paired features)."""
    torch.manual_seed(0)
    fusion = ItemFusion(FusionConfig(text_dim=16, image_dim=24, shared_dim=32, item_dim=16))
    latent = torch.randn(64, 8)
    text = latent @ torch.randn(8, 16) + 0.05 * torch.randn(64, 16)
    image = latent @ torch.randn(8, 24) + 0.05 * torch.randn(64, 24)
    optimizer = torch.optim.Adam(fusion.parameters(), lr=3e-3)
    before = fusion.alignment_loss(text, image).item()
    for _ in range(200):
        loss = fusion.alignment_loss(text, image)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    fusion.eval()
    t, i = fusion.modality_vectors(text, image)
    accuracy = ((t @ i.T).argmax(1) == torch.arange(64)).float().mean()
    assert loss.item() < before / 2 and accuracy > 0.5


def test_config_is_validated():
    with pytest.raises(ValueError, match="id_dropout"):
        FusionConfig(id_dropout=1.0)
    with pytest.raises(ValueError, match="at least one"):
        FusionConfig(text_dim=0, image_dim=0, n_items=0)


def test_feature_noise_perturbs_training_only():
    torch.manual_seed(0)
    text, image, present = torch.randn(6, 384), torch.rand(6, 1280), torch.ones(6, 2, dtype=torch.bool)
    noisy = ItemFusion(FusionConfig(feature_noise=0.5, id_dropout=0.0))
    noisy.eval()
    assert torch.equal(noisy(text, image, present), noisy(text, image, present))
    noisy.train()
    assert not torch.allclose(noisy(text, image, present), noisy(text, image, present))
    clean = ItemFusion(FusionConfig(feature_noise=0.0, id_dropout=0.0))
    clean.train()
    assert torch.equal(clean(text, image, present), clean(text, image, present))
