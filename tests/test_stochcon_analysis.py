import json
from dataclasses import replace

import numpy as np
import pytest

from stochcon.analysis.aggregate_variance import (
    aggregate_variance,
    aggregate_variance_figure,
    write_aggregate_variance_report,
)
from stochcon.analysis.bit_counts import (
    BitCountCurve,
    bit_count_figure,
    bit_stats,
    epoch_of_step,
    write_bit_count_report,
)
from stochcon.analysis.compression import (
    compression_figure,
    compression_ratio,
    ratio_label,
    write_compression_report,
)
from stochcon.analysis.feature_spectrum import feature_spectrum, write_feature_spectrum_report
from stochcon.analysis.rf_units import (
    curve_label,
    random_forest_units,
    rf_units_figure,
    write_rf_units_report,
)


def test_compression_ratio_matches_paper_footnote():
    # 224 * 224 * 3 * 8 = 1,204,224 input bits; / 2048 binary units = 588 exactly.
    ratio = compression_ratio(224, 224, 3, latent_dim=2048)
    assert ratio.input_bits == 1_204_224 and ratio.code_bits == 2048
    assert ratio.ratio == 588.0
    # A float32 Gaussian code of the same width is 32 times less compressive.
    assert compression_ratio(224, 224, 3, 2048, bits_per_unit=32).ratio == pytest.approx(588 / 32)
    with pytest.raises(ValueError, match="latent_dim"):
        compression_ratio(28, 28, 1, latent_dim=0)


def test_aggregate_variance_hand_checked():
    mu = np.array([[0.0, 2.0], [2.0, 0.0]])  # Var_x[mu] = 1 on both units
    sigma = np.array([[1.0, 1.0], [1.0, 3.0]])  # E_x[sigma^2] = (1 + 1 + 1 + 9) / 4 = 3
    result = aggregate_variance(mu, sigma)
    assert result.latent_dim == 2
    assert result.variance_of_means == pytest.approx(1.0)
    assert result.posterior_variance == pytest.approx(3.0)
    assert result.aggregate_variance == pytest.approx(4.0)
    assert result.noise_share == pytest.approx(0.75)


def test_aggregate_variance_equals_variance_of_mixture_samples():
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(50, 3))
    sigma = rng.uniform(0.1, 2.0, size=(50, 3))
    draws = 4000
    samples = (mu[None] + sigma[None] * rng.normal(size=(draws, 50, 3))).reshape(-1, 3)
    estimate = samples.var(0).mean()
    # The sample variance of n draws has standard error sqrt((m4 - v^2) / n) (m4 the fourth central moment), by
    # the CLT for n = 200,000; the three units are independent. Allow 5 such errors: the draws are stratified
    # (each component exactly `draws` times), which only lowers the spread, and the ddof=0 bias E[sigma^2] / n is
    # ~1e-5 of the value.
    centred = samples - samples.mean(0)
    per_unit_se = np.sqrt(((centred**4).mean(0) - samples.var(0) ** 2) / len(samples))
    standard_error = np.sqrt((per_unit_se**2).sum()) / 3
    assert abs(aggregate_variance(mu, sigma).aggregate_variance - estimate) < 5 * standard_error


def test_aggregate_variance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="mu and sigma"):
        aggregate_variance(np.zeros((3, 2)), np.zeros((3, 3)))


def test_bit_stats_hand_checked():
    bits = np.array([[1, 0, 0, 1], [1, 1, 0, 1], [1, 0, 0, 0]])
    stats = bit_stats(bits)
    assert stats.latent_dim == 4
    assert stats.mean_active == pytest.approx(2.0)  # (2 + 3 + 1) / 3
    assert stats.active_fraction == pytest.approx(0.5)
    assert stats.dead_units == 1 and stats.constant_on_units == 1
    with pytest.raises(ValueError, match="exactly 0 and 1"):
        bit_stats(np.array([[0.0, 0.7]]))


def test_random_forest_finds_the_informative_units():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2, size=(600, 20))
    labels = 2 * bits[:, 5] + bits[:, 12]  # four classes from two of twenty units
    curve = random_forest_units(bits, labels, unit_counts=[1, 2, 4, 20], n_estimators=20)
    assert set(np.argsort(curve.importance)[-2:]) == {5, 12}
    f1 = dict(zip(curve.unit_counts, curve.f1_mean))
    assert f1[2] == pytest.approx(1.0) and f1[4] == pytest.approx(1.0)
    # One unit splits the four classes into two pairs: at best each pair is predicted as one of its classes, whose
    # F1 is then 2/3 (precision 1/2, recall 1) and the other's 0, so macro F1 <= 1/3 for balanced classes (< 0.7
    # leaves room for the random class sizes of 600 draws).
    assert f1[1] < 0.7
    assert curve.units_within == 2


def test_random_forest_rejects_unit_counts_beyond_width():
    with pytest.raises(ValueError, match="--units must lie in"):
        random_forest_units(np.zeros((10, 3)), np.zeros(10), unit_counts=[4])


def test_feature_spectrum_hand_checked():
    # The four corners (+-sqrt(3), +-1): covariance diag(3, 1), so shares 3/4 and 1/4, PR = 4^2 / (9 + 1) = 1.6.
    corners = np.array([[a * np.sqrt(3.0), b] for a in (-1, 1) for b in (-1, 1)]) + 5.0
    spectrum = feature_spectrum(corners)
    assert spectrum.explained == pytest.approx([0.75, 0.25])
    assert spectrum.participation_ratio == pytest.approx(1.6)
    rotation = np.linalg.qr(np.random.default_rng(0).normal(size=(2, 2)))[0]
    assert feature_spectrum(corners @ rotation).participation_ratio == pytest.approx(1.6)  # basis-free
    isotropic = np.vstack([np.eye(6), -np.eye(6)])
    assert feature_spectrum(isotropic).participation_ratio == pytest.approx(6.0)
    assert feature_spectrum(np.outer(np.arange(5.0), np.ones(4))).participation_ratio == pytest.approx(1.0)
    with pytest.raises(ValueError, match="every feature is constant"):
        feature_spectrum(np.ones((4, 3)))
    with pytest.raises(ValueError, match="N >= 2"):
        feature_spectrum(np.ones((1, 3)))


def test_writers_produce_json_and_png(tmp_path):
    curve = BitCountCurve(
        epochs=[1, 2],
        train=[bit_stats(np.eye(4)), bit_stats(np.ones((2, 4)))],
        test=[bit_stats(np.eye(4))] * 2,
    )
    pngs = [
        write_bit_count_report({"hard-top": curve}, tmp_path),
        write_compression_report({"bern64": compression_ratio(28, 28, 1, 64)}, tmp_path),
        write_feature_spectrum_report(
            {"iso": feature_spectrum(np.vstack([np.eye(3), -np.eye(3)]))}, tmp_path
        ),
        write_aggregate_variance_report(
            {
                "d8": aggregate_variance(np.eye(8), np.ones((8, 8))),
                "d16": aggregate_variance(np.eye(16), np.eye(16)),
            },
            tmp_path,
        ),
        write_rf_units_report(
            {
                "bern": random_forest_units(
                    np.eye(10)[np.arange(50) % 10], np.arange(50) % 2, [1, 2], n_estimators=5
                )
            },
            tmp_path,
        ),
    ]
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        data = json.loads(png.with_suffix(".json").read_text())
        assert data
    assert (
        json.loads((tmp_path / "bit_counts.json").read_text())["hard-top"]["train"][1]["mean_active"] == 4.0
    )
    assert json.loads((tmp_path / "compression.json").read_text())["bern64"]["ratio"] == 28 * 28 * 8 / 64


def test_epoch_of_step_counts_whole_batches():
    """The trainer drops each epoch's last incomplete batch: 60,000 images in batches of 128 make 468 steps an
    epoch, so step 468 ends epoch 1 (468 x 128 / 60,000 would put it at 0.998); CIFAR-10 at 4096: 12 steps."""
    assert epoch_of_step(468, 60_000, 128) == 1.0
    assert epoch_of_step(12, 50_000, 4096) == 1.0
    assert epoch_of_step(0, 50_000, 4096) == 0.0
    assert epoch_of_step(18, 50_000, 4096) == 1.5
    with pytest.raises(ValueError, match="no batch"):
        epoch_of_step(1, 100, 128)


def test_bit_count_figure_starts_at_initialisation():
    stats = [bit_stats(np.eye(4))] * 2
    curve = BitCountCurve(steps=[0, 4], epochs=[0.0, 1.0], train=stats, test=stats)
    fig = bit_count_figure({"hard-top": curve})
    for ax in fig.axes:
        (line,) = ax.get_lines()
        assert list(line.get_xdata()) == [0.0, 1.0] and ax.get_xlim()[0] == 0.0
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == ["hard-top (D=4)"]


def test_variance_figure_draws_one_labelled_line_per_setting():
    """The own-variance ablation is its own labelled line, not a point on the opposing-view curve."""
    def row(dim, setting):
        return replace(aggregate_variance(np.eye(dim), np.ones((dim, dim))), setting=setting)

    rows = {
        "opposing_d16": row(16, "opposing-view scale"),
        "own_d8": row(8, "own-view scale (ablation)"),
        "opposing_d8": row(8, "opposing-view scale"),
        "own_d16": row(16, "own-view scale (ablation)"),
    }
    left, right = aggregate_variance_figure(rows).axes
    lines = {line.get_label(): list(line.get_xdata()) for line in right.get_lines()}
    assert lines == {"opposing-view scale": [8, 16], "own-view scale (ablation)": [8, 16]}
    assert len(left.get_lines()) == 4
    assert [t.get_text() for t in right.get_legend().get_texts()] == list(lines)


def test_compression_labels_keep_three_figures_and_names_do_not_overlap():
    assert ratio_label(28 * 28 * 8 / 4096) == "1.53x"  # printed as "2x" when rounded to a whole number
    assert ratio_label(588.0) == "588x" and ratio_label(28 * 28 * 8 / 64) == "98x"
    rows = {
        "paper: 224x224x3 -> 2048 bits": compression_ratio(224, 224, 3, 2048),
        "fashion_mnist_bernoulli_4096_bits_seed0": compression_ratio(28, 28, 1, 4096),
        "fashion_mnist_bernoulli_64_bits_seed0": compression_ratio(28, 28, 1, 64),
        "fashion_mnist_gaussian_seed0": compression_ratio(28, 28, 1, 128, bits_per_unit=32),
    }
    fig = compression_figure(rows)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.texts] == ["588x", "1.53x", "98x", "1.53x"]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    names = [label.get_window_extent(renderer) for label in ax.get_yticklabels() if label.get_text()]
    assert len(names) == len(rows)
    assert not any(a.overlaps(b) for i, a in enumerate(names) for b in names[i + 1 :])


def test_rf_units_label_names_a_constant_code():
    labels = np.arange(60) % 3
    constant = random_forest_units(np.ones((60, 8)), labels, [1, 8], folds=3, n_estimators=5)
    assert constant.varying_units == 0
    assert curve_label("latent_dim=null", constant) == "latent_dim=null (constant code: no unit varies)"
    one_bit = random_forest_units(np.eye(2)[labels % 2][:, :1], labels % 2, [1], folds=3, n_estimators=5)
    assert one_bit.varying_units == 1
    assert curve_label("bern", one_bit) == "bern (1 unit within 0.01 of its best F1)"
    (ax,) = rf_units_figure({"latent_dim=null": constant}).axes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["latent_dim=null (constant code: no unit varies)"]
