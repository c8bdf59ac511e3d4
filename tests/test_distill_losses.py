"""CA-DDKD loss terms on known inputs: logit KD, spatial, the two-band frequency term, projectors, switches."""

import math

import pytest
import torch
import torch.nn.functional as F

from distill.config import LossConfig
from distill.losses import (
    DistillationLoss,
    FeatureProjector,
    TeacherTargets,
    band_losses,
    band_masks,
    dc_removed_loss,
    dct2,
    idct2,
    kd_loss,
    normalize_channels,
    spatial_loss,
)


def _maps(seed=0, shape=(2, 4, 8, 8)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _dct_basis(u: int, v: int, size: int = 8) -> torch.Tensor:
    """The (u, v) orthonormal DCT-II basis image: a map whose spectrum is one coefficient."""
    coefficients = torch.zeros(size, size)
    coefficients[u, v] = 1.0
    return idct2(coefficients)


# Logit KD ------------------------------------------------------------------------------------------------------


def test_kd_is_zero_for_equal_logits_and_matches_the_formula():
    student, teacher = torch.randn(5, 10), torch.randn(5, 10)
    assert kd_loss(teacher, teacher, 4.0).abs() < 1e-6
    t = 3.0
    p = F.softmax(teacher / t, -1)
    expected = (p * (p.log() - F.log_softmax(student / t, -1))).sum(-1).mean() * t**2
    assert torch.allclose(kd_loss(student, teacher, t), expected, atol=1e-5)
    assert kd_loss(student, teacher, t) > 0


# Spatial -------------------------------------------------------------------------------------------------------


def test_spatial_term_ignores_per_position_affine_changes_but_not_structure():
    teacher = _maps()
    assert spatial_loss(teacher, teacher) < 1e-8
    scale = torch.rand(2, 1, 8, 8) + 0.5  # per position, same for every channel: removed by the normalisation
    shift = torch.randn(2, 1, 8, 8)
    assert spatial_loss(teacher * scale + shift, teacher) < 1e-6
    assert spatial_loss(_maps(1), teacher) > 0.5
    normalised = normalize_channels(teacher)
    assert torch.allclose(normalised.mean(1), torch.zeros(2, 8, 8), atol=1e-5)
    assert torch.allclose(normalised.var(1, unbiased=False), torch.ones(2, 8, 8), atol=1e-3)


def test_spatial_term_rejects_unprojected_maps():
    with pytest.raises(ValueError, match="equal shape"):
        spatial_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 5, 4, 4))


# Frequency -----------------------------------------------------------------------------------------------------


def test_dct_is_orthonormal_and_matches_scipy():
    scipy_fft = pytest.importorskip("scipy.fft")
    x = _maps(shape=(2, 3, 6, 8))
    coefficients = dct2(x)
    expected = scipy_fft.dctn(x.double().numpy(), type=2, norm="ortho", axes=(-2, -1))
    assert torch.allclose(coefficients.double(), torch.from_numpy(expected), atol=1e-5)
    assert torch.allclose(idct2(coefficients), x, atol=1e-5)
    assert torch.allclose((coefficients**2).sum(), (x**2).sum(), rtol=1e-5)  # Parseval


def test_band_masks_split_by_radial_frequency():
    low, high = band_masks(8, 8, "dct", 0.5)
    assert low[0, 0] and not high[0, 0]  # DC is low
    assert high[7, 7] and not low[7, 7]
    assert bool((low ^ high).all())
    assert int(low.sum()) == sum(1 for u in range(8) for v in range(8) if math.hypot(u / 8, v / 8) < 0.5)
    assert bool(band_masks(8, 8, "dct", 1.5)[0].all())  # cutoff above every frequency: all low
    low_fft, _ = band_masks(8, 8, "fft", 0.5)
    assert low_fft.shape == (8, 5) and low_fft[0, 0] and not low_fft[4, 4]


def test_frequency_term_is_zero_for_identical_maps():
    x = _maps()
    for transform in ("dct", "fft"):
        low, high = band_losses(x, x, transform)
        assert low < 1e-10 and high < 1e-10


def test_high_frequency_difference_is_high_band_only_and_dc_difference_low_band_only():
    teacher = _maps(shape=(2, 4, 8, 8))
    high_detail = teacher + 0.5 * _dct_basis(6, 7)  # differs only at a high frequency
    offset = teacher + 0.5  # differs only in the mean (DC)
    low, high = band_losses(high_detail, teacher, "dct", 0.5)
    assert low < 1e-8 and high > 1e-3
    low, high = band_losses(offset, teacher, "dct", 0.5)
    assert low > 1e-3 and high < 1e-8
    # The EvoNAS "frequency" term (DC zeroed) is blind to the DC difference our low band sees ...
    assert dc_removed_loss(offset, teacher) < 1e-8
    # ... and is just the MSE of the mean-centred maps (Parseval), i.e. not a frequency-domain term at all.
    centred = lambda x: x - x.mean(dim=(-2, -1), keepdim=True)
    assert torch.allclose(
        dc_removed_loss(high_detail, teacher), F.mse_loss(centred(high_detail), centred(teacher)), atol=1e-6
    )


def test_low_non_dc_difference_is_low_band_only():
    teacher = _maps()
    low, high = band_losses(teacher + 0.3 * _dct_basis(1, 0), teacher, "dct", 0.5)
    assert low > 1e-3 and high < 1e-8
    assert dc_removed_loss(teacher + 0.3 * _dct_basis(1, 0), teacher) > 1e-4


def test_fft_bands_see_a_checkerboard_as_high_and_an_offset_as_low():
    teacher = _maps()
    checkerboard = ((torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 * 2 - 1).float()
    low, high = band_losses(teacher + 0.2 * checkerboard, teacher, "fft", 0.5)
    assert low < 1e-8 and high > 1e-3
    low, high = band_losses(teacher + 0.2, teacher, "fft", 0.5)
    assert low > 1e-3 and high < 1e-8


def test_energy_normalisation_weighs_the_weak_high_band_up():
    # A smooth teacher: almost all energy in the low band. The same absolute error in each band.
    ramp = torch.linspace(-1, 1, 8)
    teacher = (ramp[:, None] + ramp[None, :]).expand(1, 2, 8, 8).clone() + 0.01 * _dct_basis(7, 7)
    error = 0.05 * (_dct_basis(0, 1) + _dct_basis(7, 6))  # one low and one high coefficient, same size
    low_e, high_e = band_losses(teacher + error, teacher, "dct", 0.5, "energy")
    low_n, high_n = band_losses(teacher + error, teacher, "dct", 0.5, "none")
    assert high_e > 10 * low_e  # relative to the band's energy, the high-band error is large
    assert high_n < low_n  # per coefficient, the more numerous high band averages the same error down
    # Quadratic in the error.
    _, high2 = band_losses(teacher + 2 * error, teacher, "dct", 0.5, "energy")
    assert torch.allclose(high2, 4 * high_e, rtol=1e-3)


def test_a_one_by_one_map_has_an_empty_high_band():
    low, high = band_losses(torch.randn(2, 3, 1, 1), torch.randn(2, 3, 1, 1))
    assert high == 0 and low > 0


# Projectors ----------------------------------------------------------------------------------------------------


def test_projector_slices_its_max_width_kernel_for_narrower_subnets():
    torch.manual_seed(0)
    projector = FeatureProjector(in_channels=16, out_channels=8)
    narrow = torch.randn(2, 10, 4, 4, requires_grad=True)
    out = projector(narrow, (4, 4))
    expected = F.conv2d(narrow, projector.proj.weight[:, :10], projector.proj.bias)
    assert out.shape == (2, 8, 4, 4) and torch.allclose(out, expected, atol=1e-6)
    # Same as zero-padding the input to the max width.
    padded = torch.cat([narrow, torch.zeros(2, 6, 4, 4)], dim=1)
    assert torch.allclose(out, projector(padded, (4, 4)), atol=1e-6)
    # Gradients land in the first 10 input columns only.
    out.square().sum().backward()
    grad = projector.proj.weight.grad
    assert grad[:, :10].abs().sum() > 0 and grad[:, 10:].abs().sum() == 0
    with pytest.raises(ValueError, match="c <= 16"):
        projector(torch.randn(1, 17, 4, 4), (4, 4))


def test_projector_resizes_to_the_teacher_grid_either_way_round():
    torch.manual_seed(0)
    projector = FeatureProjector(8, 4)
    small, large = torch.randn(2, 8, 3, 3), torch.randn(2, 8, 16, 16)
    assert projector(small, (8, 8)).shape == (2, 4, 8, 8)
    assert projector(large, (4, 4)).shape == (2, 4, 4, 4)
    # Projection and (bilinear, non-antialiased) resize commute, so the order chosen for speed does not matter.
    up = F.interpolate(F.conv2d(small, projector.proj.weight, projector.proj.bias), (8, 8), mode="bilinear")
    assert torch.allclose(projector(small, (8, 8)), up, atol=1e-5)


# The combined loss ---------------------------------------------------------------------------------------------


def _setup(**overrides):
    config = LossConfig(**overrides)
    loss = DistillationLoss(config, student_channels=[16, 24], teacher_channels=[8, 12])
    torch.manual_seed(0)
    logits = torch.randn(4, 10, requires_grad=True)
    features = [torch.randn(4, 12, 4, 4, requires_grad=True), torch.randn(4, 20, 2, 2, requires_grad=True)]
    labels = torch.randint(0, 10, (4,))
    teacher = TeacherTargets(logits=torch.randn(4, 10), features=[torch.randn(4, 8, 8, 8), torch.randn(4, 12, 4, 4)])
    return loss, logits, features, labels, teacher


def test_all_terms_present_and_total_is_their_weighted_sum():
    loss, logits, features, labels, teacher = _setup(
        kd_weight=2.0, spatial_weight=0.5, frequency_weight=0.25, low_band_weight=1.0, high_band_weight=3.0
    )
    largest = loss(logits, features, labels, "largest", teacher=teacher)
    assert set(largest.terms) == {"ce", "kd", "spatial", "freq", "freq_low", "freq_high"}
    assert math.isclose(
        largest.terms["freq"], largest.terms["freq_low"] + 3.0 * largest.terms["freq_high"], rel_tol=1e-5
    )
    expected = (
        largest.terms["ce"] + 2.0 * largest.terms["kd"] + 0.5 * largest.terms["spatial"] + 0.25 * largest.terms["freq"]
    )
    assert math.isclose(float(largest.total.detach()), expected, rel_tol=1e-5)
    assert [p.shape for p in largest.projected] == [(4, 8, 8, 8), (4, 12, 4, 4)]
    inplace = TeacherTargets(logits=torch.randn(4, 10), features=[p.detach() for p in largest.projected])
    other = loss(logits, features, labels, "random", teacher=teacher, inplace=inplace)
    assert "inplace_kd" in other.terms and "inplace_kd" not in largest.terms
    largest.total.backward()
    assert all(p.grad is not None for p in loss.projectors.parameters())


@pytest.mark.parametrize(
    "switch, gone",
    [
        ({"kd_weight": 0.0}, {"kd"}),
        ({"spatial_weight": 0.0}, {"spatial"}),
        ({"frequency_weight": 0.0}, {"freq", "freq_low", "freq_high"}),
        ({"ce_weight": 0.0}, {"ce"}),
        ({"inplace_kd_weight": 0.0}, {"inplace_kd"}),
    ],
)
def test_every_term_switches_off(switch, gone):
    loss, logits, features, labels, teacher = _setup(**switch)
    inplace = TeacherTargets(logits=torch.randn(4, 10))
    result = loss(logits, features, labels, "random", teacher=teacher, inplace=inplace)
    assert not (gone & set(result.terms))
    assert {"ce", "kd", "spatial", "freq", "inplace_kd"} - gone <= set(result.terms)


def test_ce_only_equals_cross_entropy_and_role_rules_apply():
    loss, logits, features, labels, teacher = _setup(
        kd_weight=0, spatial_weight=0, frequency_weight=0, inplace_kd_weight=0
    )
    result = loss(logits, features, labels, "smallest", teacher=None)
    assert torch.allclose(result.total, F.cross_entropy(logits, labels)) and set(result.terms) == {"ce"}
    assert len(loss.projectors) == 0  # no feature terms: no projectors to train
    loss, logits, features, labels, teacher = _setup(teacher_terms_for="largest", ce_for="largest")
    result = loss(
        logits, features, labels, "random", teacher=teacher, inplace=TeacherTargets(logits=torch.randn(4, 10))
    )
    assert set(result.terms) == {"inplace_kd"}


def test_inplace_feature_term_uses_the_largest_projected_features():
    loss, logits, features, labels, teacher = _setup(inplace_feature_weight=1.0)
    largest = loss(logits, features, labels, "largest", teacher=teacher)
    inplace = TeacherTargets(logits=logits.detach(), features=[p.detach() for p in largest.projected])
    same = loss(logits, features, labels, "random", teacher=teacher, inplace=inplace)
    assert same.terms["inplace_feature"] < 1e-6 and same.terms["inplace_kd"] < 1e-6
