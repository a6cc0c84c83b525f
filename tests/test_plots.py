"""The figures: each writes a readable, non-blank PNG atomically and returns a Figure, takes
arrays of the active backend, and puts the right picture in the right place (image_grid's
tiles, the manifold's orientation, the interpolation's ends, the PCA's variance shares)."""

import os

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread

import npvae
from npvae import plots
from conftest import host

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path, min_size=100):
    """``path`` is a PNG of sensible size that shows something (not one flat colour)."""
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] >= min_size and img.shape[1] >= min_size, img.shape
    assert img.shape[0] <= 3000 and img.shape[1] <= 3000, img.shape
    assert np.ptp(img[..., :3]) > 0.2, "the PNG is blank"


def only_file(folder, name):
    """``folder`` holds exactly ``name``: no temporary file left behind."""
    assert sorted(os.listdir(folder)) == [name]


@pytest.fixture
def model2():
    return npvae.VAE(784, (32,), 2, seed=0)


@pytest.fixture
def digits(rng):
    """Blobby 28x28 'images' in [0, 1] on the active backend: (12, 784)."""
    yy, xx = np.mgrid[0:28, 0:28]
    centres = rng.uniform(8, 20, size=(12, 2))
    imgs = np.exp(-((yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2) / 20.0)
    return npvae.asarray(imgs.reshape(12, 784), dtype="float32")


def history(n_epochs, test=True):
    out = []
    for e in range(1, n_epochs + 1):
        rec, kl = 200.0 / e + 90.0, 10.0 + 2.0 * np.log(e)
        row = {"epoch": e, "loss": rec + kl, "reconstruction": rec, "kl": kl}
        if test:
            row["test_loss"] = rec + kl + 3.0 if e % 2 == 0 else None  # evaluated every 2nd epoch
        out.append(row)
    return out


# ---------------------------------------------------------------------------------------
# image_grid
# ---------------------------------------------------------------------------------------
def test_image_grid_puts_image_k_at_tile_k_and_pads():
    images = np.arange(5 * 6, dtype=np.float64).reshape(5, 6)  # five 2x3 images, all different
    grid = plots.image_grid(npvae.asarray(images), rows=2, cols=3, image_shape=(2, 3), pad=1, pad_value=-1.0)
    assert isinstance(grid, np.ndarray) and grid.shape == (2 * 2 + 1, 3 * 3 + 2)
    for k in range(5):
        r, c = divmod(k, 3)
        np.testing.assert_array_equal(grid[r * 3 : r * 3 + 2, c * 4 : c * 4 + 3], images[k].reshape(2, 3))
    np.testing.assert_array_equal(grid[2, :], -1.0)  # the separator row
    np.testing.assert_array_equal(grid[:, [3, 7]], -1.0)  # the separator columns
    np.testing.assert_array_equal(grid[3:, 8:], -1.0)  # tile 5 has no image
    assert np.sum(grid == -1.0) == grid.size - 5 * 6


def test_image_grid_without_padding_and_with_3d_input():
    images = np.arange(4 * 4, dtype=np.float64).reshape(4, 2, 2)
    grid = plots.image_grid(images, 2, 2, (2, 2), pad=0)
    np.testing.assert_array_equal(grid, np.block([[images[0], images[1]], [images[2], images[3]]]))


def test_image_grid_rejects_bad_input():
    with pytest.raises(ValueError, match=r"images: expected at most rows \* cols = 4 images, got 5"):
        plots.image_grid(np.zeros((5, 4)), 2, 2, (2, 2))
    with pytest.raises(ValueError, match=r"images: expected shape \(N, 784\)"):
        plots.image_grid(np.zeros((3, 100)), 2, 2)


# ---------------------------------------------------------------------------------------
# Training curves
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_epochs, test", [(6, True), (6, False), (1, True), (1, False)])
def test_plot_history(tmp_path, n_epochs, test):
    path = tmp_path / "run" / "history.png"
    fig = plots.plot_history(history(n_epochs, test=test), path)
    assert isinstance(fig, Figure)
    assert_png(path)
    only_file(path.parent, "history.png")
    ax_a, ax_b = fig.axes[:2]
    legend = [t.get_text() for t in ax_a.get_legend().get_texts()]
    assert legend[0].startswith("train -ELBO")
    assert any(t.startswith("test -ELBO") for t in legend) == (test and n_epochs > 1)
    assert "nats per example" in ax_a.get_ylabel() and "nats per example" in ax_b.get_ylabel()
    assert "nats per example" in fig.axes[2].get_ylabel()  # the KL's own axis
    for ax in (ax_a, ax_b):
        assert ax.get_xlabel() == "epoch"
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_plot_history_draws_the_objective_where_it_is_not_the_elbo():
    # Before: `npvae train --iwae 5` drew -ELBO alone, never the -L_5 it trained on.
    same = plots.plot_history(history(4))  # loss == reconstruction + KL: the objective is the -ELBO
    assert [t.get_text().split("  ")[0] for t in same.axes[0].get_legend().get_texts()] == ["train -ELBO", "test -ELBO"]
    bound = [{**row, "loss": row["loss"] - 2.0} for row in history(4)]  # -L_5 below the -ELBO
    fig = plots.plot_history(bound, objective="train -L_5")
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend[:2] == ["train -ELBO  (last 152.77)", "train -L_5  (last 150.77)"], legend
    drawn = [line.get_ydata() for line in fig.axes[0].get_lines()]
    assert any(np.allclose(y, [row["loss"] for row in bound]) for y in drawn)


def test_plot_history_rejects_empty_and_incomplete():
    with pytest.raises(ValueError, match="history: expected at least one epoch"):
        plots.plot_history([])
    with pytest.raises(ValueError, match=r"history\[0\]: missing key\(s\) kl"):
        plots.plot_history([{"epoch": 1, "loss": 1.0, "reconstruction": 1.0}])


# ---------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------
def test_plot_reconstructions(tmp_path, model2, digits):
    path = tmp_path / "reconstructions.png"
    fig = plots.plot_reconstructions(digits, model2.reconstruct(digits), path, n=10)
    assert isinstance(fig, Figure)
    assert_png(path)
    only_file(tmp_path, "reconstructions.png")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["original", "reconstruction"]
    shown = ax.images[0].get_array()
    assert shown.shape == (2 * 28 + 1, 10 * 28 + 9)
    np.testing.assert_allclose(shown[:28, :28], host(digits)[0].reshape(28, 28), atol=1e-6)
    # n larger than the batch shows them all
    fig = plots.plot_reconstructions(host(digits)[:3], host(digits)[:3], n=10)
    assert fig.axes[0].images[0].get_array().shape == (57, 3 * 28 + 2)


def test_plot_reconstructions_needs_matching_batches(digits):
    with pytest.raises(ValueError, match="x_rec: expected 12 images like x, got 11"):
        plots.plot_reconstructions(digits, host(digits)[:11])


def test_plot_samples(tmp_path, model2):
    path = tmp_path / "samples.png"
    fig = plots.plot_samples(model2.sample(64), path)
    assert isinstance(fig, Figure)
    assert_png(path)
    ax = fig.axes[0]
    assert ax.get_title() == "Samples from the prior z ~ N(0, I)"
    assert ax.images[0].get_array().shape == (8 * 28 + 7, 8 * 28 + 7)
    assert len(ax.get_xticks()) == 0 and len(ax.get_yticks()) == 0
    fig = plots.plot_samples(model2.sample(5), grid=3, title="five")  # fewer than grid*grid
    assert fig.axes[0].images[0].get_array().shape == (3 * 28 + 2, 3 * 28 + 2)


# ---------------------------------------------------------------------------------------
# The latent space
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("z_dim", [1, 2, 5])
@pytest.mark.parametrize("with_labels", [True, False])
def test_plot_latent(tmp_path, rng, z_dim, with_labels):
    labels = np.repeat(np.arange(10), 30)
    mu = rng.standard_normal((300, z_dim)) + labels[:, None] * 0.5
    path = tmp_path / f"latent_{z_dim}.png"
    labels_in = npvae.asarray(labels) if with_labels else None
    fig = plots.plot_latent(npvae.asarray(mu, dtype="float32"), labels_in, path)
    assert isinstance(fig, Figure)
    assert_png(path)
    only_file(tmp_path, path.name)
    ax = fig.axes[0]
    if with_labels and z_dim == 1:
        assert [t.get_text() for t in ax.get_yticklabels()] == [str(d) for d in range(10)]
    elif with_labels:
        assert [t.get_text() for t in ax.get_legend().get_texts()] == [str(d) for d in range(10)]
    if z_dim == 2:
        assert ax.get_xlabel().startswith("z1") and ax.get_ylabel().startswith("z2")


def test_plot_latent_pca_axes_show_the_variance_share(rng):
    # Independent columns with standard deviations 5, 3, 1, 1, 1: the principal components
    # are the first two columns, with shares near 25/37 and 9/37.
    mu = rng.standard_normal((2000, 5)) * np.array([5.0, 3.0, 1.0, 1.0, 1.0])
    ev = np.sort(np.linalg.eigvalsh(np.cov(mu.T)))[::-1]
    share = 100 * ev[:2] / ev.sum()
    fig = plots.plot_latent(npvae.asarray(mu, dtype="float64"), None)
    ax = fig.axes[0]
    assert ax.get_xlabel() == f"PC 1 ({share[0]:.1f}% of variance)"
    assert ax.get_ylabel() == f"PC 2 ({share[1]:.1f}% of variance)"
    assert 60 < share[0] < 75 and 20 < share[1] < 30


def test_plot_latent_checks_labels():
    with pytest.raises(ValueError, match="labels: expected 4 labels, one per row of mu, got 3"):
        plots.plot_latent(np.zeros((4, 2)), [0, 1, 2])


# ---------------------------------------------------------------------------------------
# Decoder pictures
# ---------------------------------------------------------------------------------------
def test_plot_manifold(tmp_path, model2):
    path = tmp_path / "manifold.png"
    n = 6
    fig = plots.plot_manifold(model2, path, n=n)
    assert isinstance(fig, Figure)
    assert_png(path)
    only_file(tmp_path, "manifold.png")
    ax = fig.axes[0]
    shown = np.asarray(ax.images[0].get_array())
    assert shown.shape == (n * 28, n * 28)
    # z1 grows to the right, z2 grows upwards: the top-right tile is z = (z_max, z_max) and
    # the bottom-left tile z = (z_min, z_min), with z_max = Phi^-1(0.95).
    z_max = 1.6448536269514722
    z = npvae.asarray([[z_max, z_max], [-z_max, -z_max]], dtype="float32")
    corners = host(model2.mean(model2.decode(z)))
    np.testing.assert_allclose(shown[:28, -28:], corners[0].reshape(28, 28), atol=1e-5)
    np.testing.assert_allclose(shown[-28:, :28], corners[1].reshape(28, 28), atol=1e-5)
    assert ax.get_xlabel() == "z1" and ax.get_ylabel() == "z2"
    assert "0" in [t.get_text() for t in ax.get_xticklabels()]


def test_plot_manifold_needs_a_2d_latent():
    model = npvae.VAE(784, (8,), 5, seed=0)
    with pytest.raises(ValueError, match="^model: expected latent_dim 2 for a manifold plot, got 5$"):
        plots.plot_manifold(model)


@pytest.mark.parametrize("shape", [(784,), (1, 784)])
def test_plot_interpolation(tmp_path, model2, digits, shape):
    x_a, x_b = (npvae.asarray(host(digits)[i].reshape(shape), dtype="float32") for i in (0, 1))
    path = tmp_path / "interpolation.png"
    fig = plots.plot_interpolation(model2, x_a, x_b, path, steps=5)
    assert isinstance(fig, Figure)
    assert_png(path, min_size=50)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.00", "0.25", "0.50", "0.75", "1.00"]
    shown = np.asarray(ax.images[0].get_array())
    assert shown.shape == (28, 5 * 28 + 4)
    ends = host(model2.reconstruct(digits[:2, :]))  # t = 0 and t = 1 decode mu_a and mu_b
    np.testing.assert_allclose(shown[:, :28], ends[0].reshape(28, 28), atol=1e-5)
    np.testing.assert_allclose(shown[:, -28:], ends[1].reshape(28, 28), atol=1e-5)


def test_plot_interpolation_rejects_a_batch(model2, digits):
    with pytest.raises(ValueError, match=r"x_a: expected shape \(784,\) or \(1, 784\), got \(2, 784\)"):
        plots.plot_interpolation(model2, digits[:2, :], digits[2:3, :])


# ---------------------------------------------------------------------------------------
# Writing files
# ---------------------------------------------------------------------------------------
def test_save_is_atomic_and_overwrites(tmp_path):
    path = tmp_path / "a" / "b" / "samples.png"
    plots.plot_samples(np.zeros((4, 784)), path, grid=2)  # folders are created
    first = path.read_bytes()
    plots.plot_samples(np.ones((4, 784)), str(path), grid=2)  # a str path, overwriting
    assert path.read_bytes() != first
    assert_png(path, min_size=50)
    only_file(path.parent, "samples.png")


def test_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "history.png"
    plots.plot_history(history(2), path)
    before = path.read_bytes()

    class Broken(Figure):
        def savefig(self, f, **kw):
            f.write(PNG_SIGNATURE)  # half a file, then the disk fills up
            raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        plots.save_figure(Broken(), path)
    assert path.read_bytes() == before
    only_file(tmp_path, "history.png")


# ---------------------------------------------------------------------------------------
# Formats and class names (issue 10)
# ---------------------------------------------------------------------------------------
FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


@pytest.mark.parametrize("z_dim", [1, 2])
def test_plot_latent_names_the_classes(rng, z_dim):
    labels = np.repeat(np.arange(10), 5)
    fig = plots.plot_latent(rng.standard_normal((50, z_dim)), labels, label_name="class", class_names=FASHION)
    ax = fig.axes[0]
    texts = ax.get_yticklabels() if z_dim == 1 else ax.get_legend().get_texts()
    assert [t.get_text() for t in texts] == list(FASHION)
    if z_dim == 2:
        assert ax.get_legend().get_title().get_text() == "class"


@pytest.mark.parametrize("suffix, magic", [(".png", PNG_SIGNATURE), (".pdf", b"%PDF"), (".svg", b"<?xml")])
def test_the_file_holds_what_its_name_says(tmp_path, suffix, magic):
    # Before: every file got PNG bytes, whatever its name (samples.pdf was a PNG).
    path = tmp_path / f"samples{suffix}"
    plots.plot_samples(np.full((4, 784), 0.5), path, grid=2)
    assert path.read_bytes()[: len(magic)] == magic


def test_an_unknown_ending_is_refused_before_writing(tmp_path):
    with pytest.raises(ValueError, match=r"path: expected a file name ending in .png, .pdf, .svg, got '.*samples.jpeg'"):
        plots.plot_samples(np.full((4, 784), 0.5), tmp_path / "samples.jpeg", grid=2)
    assert list(tmp_path.iterdir()) == []


def test_plot_latent_draws_posteriors_as_ellipses(rng):
    # Two posteriors: an axis-aligned one (sd 2 along z1, 0.5 along z2) and one tilted by 45 degrees.
    means = np.array([[0.0, 0.0], [3.0, 3.0]])
    tilted = np.array([[1.0, 0.9], [0.9, 1.0]])
    covs = np.stack([np.diag([4.0, 0.25]), tilted])
    fig = plots.plot_latent(rng.standard_normal((100, 2)), np.repeat(np.arange(2), 50), posteriors=(means, covs))
    from matplotlib.patches import Ellipse

    ellipses = [p for p in fig.axes[0].patches if isinstance(p, Ellipse)]
    assert len(ellipses) == 4  # 1 and 2 standard deviations, for each
    first = ellipses[0]  # 1 sd of the axis-aligned one: width 2 * 2, height 2 * 0.5
    assert (first.width, first.height) == pytest.approx((4.0, 1.0)) and first.angle % 180 == pytest.approx(0.0)
    tilted_1sd = ellipses[2]
    assert tilted_1sd.angle % 180 == pytest.approx(45.0)
    assert (tilted_1sd.width, tilted_1sd.height) == pytest.approx((2 * np.sqrt(1.9), 2 * np.sqrt(0.1)))
    with pytest.raises(ValueError, match=r"posteriors: expected means \(k, 2\) and covariances \(k, 2, 2\)"):
        plots.plot_latent(rng.standard_normal((10, 2)), None, posteriors=(means, covs[:, :1]))


def test_plot_kl_one_dimension(tmp_path):
    path = tmp_path / "kl.png"
    fig = plots.plot_kl_one_dimension(path)
    assert_png(path)
    along_mu = fig.axes[1].lines[0].get_ydata()
    mu = fig.axes[1].lines[0].get_xdata()
    np.testing.assert_allclose(along_mu, mu**2 / 2, atol=1e-12)  # KL at logvar = 0 is mu^2 / 2


def test_plot_random_codes(tmp_path, rng):
    h_ref = rng.standard_normal((500, 2))
    panels = [("h ~ N(0, I)", rng.standard_normal((64, 2)), rng.uniform(size=(64, 784)), np.arange(64) % 5 == 0)]
    fig = plots.plot_random_codes(h_ref, panels, tmp_path / "codes.png")
    assert_png(tmp_path / "codes.png")
    red_x = [line for line in fig.axes[1].lines if line.get_marker() == "x"]
    assert len(red_x) == 13  # one per code in a hole (0, 5, ..., 60)


def test_plot_latent_comparison(tmp_path, rng):
    labels = np.repeat(np.arange(10), 20)
    panels = [(name, rng.standard_normal((200, 2)) * s, rng.standard_normal((200, 2)) * s, np.full((200, 2), -4.0))
              for name, s in (("with KL", 1.0), ("without KL", 5.0))]
    fig = plots.plot_latent_comparison(panels, labels, labels, tmp_path / "cmp.png")
    assert_png(tmp_path / "cmp.png")
    top = fig.axes[:2]
    assert top[0].get_xlim() == top[1].get_xlim()  # the same axes in both panels
    from matplotlib.collections import EllipseCollection

    ellipses = fig.axes[2].collections[0]
    mu_train = panels[0][2]
    inside = np.all(np.abs(mu_train - np.median(mu_train, axis=0)) < 0.6, axis=1)
    assert isinstance(ellipses, EllipseCollection) and len(ellipses.get_offsets()) == inside.sum() > 0


def test_plot_prior_through_decoder_and_posterior_against_q(tmp_path, rng):
    z = rng.standard_normal((300, 2))
    fig = plots.plot_prior_through_decoder(z, 5 * z, 5 * z + rng.standard_normal((300, 2)), rng.standard_normal((300, 2)),
                                           tmp_path / "ring.png")
    assert_png(tmp_path / "ring.png")
    assert len(fig.axes) == 3
    g = np.linspace(-2, 2, 41)
    g1, g2 = np.meshgrid(g, g)
    post, q = np.exp(-(g1**2 + g2**2)), np.exp(-((g1 - 0.3) ** 2 + g2**2))
    coarse = -(g1**2 + g2**2)
    panels = [("easy", g1, g2, post, q, np.array([0.3, 0.0]), rng.uniform(size=784))]
    fig = plots.plot_posterior_against_q(coarse, (-2, 2, -2, 2), (np.array([-1.0, -1.0]), np.array([1.0, 1.0])),
                                         "coarse", panels, tmp_path / "post.png")
    assert_png(tmp_path / "post.png")
    assert fig.axes[0].get_title() == "coarse" and fig.axes[0].patches  # the fine box is drawn
