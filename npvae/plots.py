"""The figures to look at after training a VAE: loss curves, reconstructions, samples,
the latent space, the 2-D manifold and an interpolation.

Every function takes host data (NumPy arrays, lists) or arrays of the active backend
(NumPy, CuPy, array_api_strict), or a model, and returns a matplotlib ``Figure`` that a
notebook displays as it is. Given ``path``, it also writes a PNG there: the parent folders
are made, and the file is written to a temporary name in the same folder and then renamed,
so a reader never sees half a PNG.

    from npvae import plots
    plots.plot_history(history, "run/history.png")
    plots.plot_samples(model.sample(64), "run/samples.png")
    plots.plot_manifold(model_2d, "run/manifold.png")     # latent_dim 2 only

Backend arrays become host arrays here, and only here, through ``npvae.to_numpy``. The
figures use matplotlib's object API (``Figure``, no ``pyplot``), so they need no display
and no global backend selection, and they leave no state behind.

Images are flat rows of D = H * W pixels (``image_shape=(28, 28)`` by default) with values
in [0, 1], shown in grey from black (0) to white (1).
"""

from __future__ import annotations

import os
from pathlib import Path
from statistics import NormalDist

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .backend import asarray, to_numpy
from .checks import check_int
from .io import atomic_open

__all__ = [
    "image_grid", "plot_history", "plot_reconstructions", "plot_samples", "plot_latent",
    "plot_manifold", "plot_interpolation", "save_figure", "plot_kl_one_dimension", "plot_random_codes",
    "plot_latent_comparison", "plot_prior_through_decoder", "plot_posterior_against_q",
]

DPI = 100
SEPARATOR = 0.5  # grey between tiles: visible against black backgrounds and white strokes
_IMSHOW = {"cmap": "gray", "vmin": 0.0, "vmax": 1.0, "interpolation": "nearest"}


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------
def _host(a, dtype=np.float64) -> np.ndarray:
    """Any array (NumPy, CuPy, strict, a list) as a host NumPy array of ``dtype``."""
    return np.asarray(to_numpy(a), dtype=dtype)


def _image_size(image_shape) -> tuple[int, int, int]:
    h, w = (int(s) for s in image_shape)
    if h < 1 or w < 1:
        raise ValueError(f"image_shape: expected two positive integers, got {tuple(image_shape)}")
    return h, w, h * w


def _as_images(name, a, image_shape) -> np.ndarray:
    """``a`` as host images (K, H, W): it may be (K, H*W), (K, H, W) or one image (H*W,)."""
    h, w, d = _image_size(image_shape)
    a = _host(a)
    if a.ndim == 1 and a.shape[0] == d:
        a = a[None, :]
    if a.ndim == 2 and a.shape[1] == d:
        return a.reshape(-1, h, w)
    if a.ndim == 3 and a.shape[1:] == (h, w):
        return a
    raise ValueError(
        f"{name}: expected shape (N, {d}) or (N, {h}, {w}) for image_shape {(h, w)}, got {a.shape}"
    )


FORMATS = ("png", "pdf", "svg")  # what save_figure writes, chosen by the file name's ending


def figure_format(path, name="path") -> str:
    """The image format ``path``'s ending asks for (``"png"``, ``"pdf"`` or ``"svg"``), or a
    ValueError naming ``name``: a file must hold what its name says, and a folder is not one."""
    if os.path.isdir(path):
        raise ValueError(f"{name}: expected an image file's name, got {os.fspath(path)!r}, a folder")
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        endings = ", ".join("." + f for f in FORMATS)
        raise ValueError(f"{name}: expected a file name ending in {endings}, got {os.fspath(path)!r}")
    return suffix


def save_figure(fig: Figure, path, dpi: int = DPI) -> Path:
    """Write ``fig`` at ``path`` as a PNG, PDF or SVG (by its ending), atomically, and return
    the path.

    The parent folders are created; the PNG goes to a hidden temporary file in the same
    folder first and is then renamed over ``path`` (``os.replace``), so ``path`` holds
    either the old file or the whole new one, never a partial write. On an error the
    temporary file is removed. Empty margins are trimmed (``bbox_inches="tight"``, as a
    notebook shows figures).
    """
    path = Path(path)
    fmt = figure_format(path)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format=fmt, dpi=dpi, bbox_inches="tight", pad_inches=0.1)
    return path


def _finish(fig: Figure, path, dpi) -> Figure:
    if path is not None:
        save_figure(fig, path, dpi=dpi)
    return fig


def _no_ticks(ax):
    ax.set_xticks([])
    ax.set_yticks([])


def image_grid(images, rows, cols, image_shape=(28, 28), pad=1, pad_value=SEPARATOR) -> np.ndarray:
    """Tile images into one 2-D host array, row by row.

    Args:
        images: K images, (K, H*W) or (K, H, W), host or backend array, K <= rows * cols.
        rows, cols: the grid; image k goes to tile (k // cols, k % cols).
        image_shape: (H, W).
        pad: pixels of separator between neighbouring tiles (none around the outside).
        pad_value: the separators' grey level; tiles without an image get it too.
    Returns:
        A float64 array of shape (rows*H + (rows-1)*pad, cols*W + (cols-1)*pad).
    """
    rows, cols = check_int("rows", rows), check_int("cols", cols)
    if isinstance(pad, bool) or not isinstance(pad, (int, np.integer)) or pad < 0:
        raise ValueError(f"pad: expected a non-negative integer, got {pad!r}")
    h, w, _ = _image_size(image_shape)
    a = _as_images("images", images, image_shape)
    if a.shape[0] > rows * cols:
        raise ValueError(f"images: expected at most rows * cols = {rows * cols} images, got {a.shape[0]}")
    grid = np.full((rows * h + (rows - 1) * pad, cols * w + (cols - 1) * pad), float(pad_value))
    for k in range(a.shape[0]):
        r, c = divmod(k, cols)
        top, left = r * (h + pad), c * (w + pad)
        grid[top : top + h, left : left + w] = a[k]
    return grid


def _tile_centres(count, size, pad):
    """Pixel coordinates of the centres of ``count`` tiles of ``size`` pixels along an axis."""
    return [i * (size + pad) + (size - 1) / 2 for i in range(count)]


# ---------------------------------------------------------------------------------------
# Training curves
# ---------------------------------------------------------------------------------------
def _column(history, key):
    return np.array([np.nan if h.get(key) is None else float(h[key]) for h in history])


def plot_history(history, path=None, dpi=DPI, objective="train objective") -> Figure:
    """Loss curves over training.

    Args:
        history: a sequence of dicts, one per epoch, with keys ``epoch``, ``loss`` (the
            objective), ``reconstruction`` and ``kl`` (nats per example), and optionally
            ``test_loss`` (missing or None where the test set was not evaluated).
        path: where to write the PNG (None: do not write).
        objective: the legend's name for ``loss``, drawn in (a) where it is not the -ELBO
            (beta != 1 weighs the KL; ``fit(k=K)`` trains on -L_K: ``"train -L_5"``).
    Returns:
        The Figure: (a) train and test -ELBO per epoch (and the objective where it differs),
        (b) the reconstruction term (left axis) and the KL term (right axis, they differ in
        scale) per epoch.
    """
    history = list(history)
    if not history:
        raise ValueError("history: expected at least one epoch, got an empty sequence")
    for i, h in enumerate(history):
        missing = [k for k in ("epoch", "loss", "reconstruction", "kl") if k not in h]
        if missing:
            raise ValueError(f"history[{i}]: missing key(s) {', '.join(missing)}")
    epoch = _column(history, "epoch")
    many = len(history) > 60

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    fig.suptitle("Training curves", fontsize=13)
    ax_a, ax_b = fig.subplots(1, 2)

    def line(ax, values, label, marker="o", **kw):
        ok = np.isfinite(values)  # a test loss evaluated every k epochs: plot those points only
        if ok.any():
            label = f"{label}  (last {values[ok][-1]:.2f})"
        style = {} if many else {"marker": marker, "markersize": 5}
        return ax.plot(epoch[ok], values[ok], label=label, **style, **kw)[0]

    # (a) the loss itself.
    # train -ELBO = reconstruction + KL, as the test -ELBO; the "loss" column is the objective
    # (the KL weighed by beta, or -L_K), drawn too where it differs
    neg_elbo, loss = _column(history, "reconstruction") + _column(history, "kl"), _column(history, "loss")
    line(ax_a, neg_elbo, "train -ELBO", color="C0")
    if not np.allclose(loss, neg_elbo, rtol=1e-6, atol=1e-6, equal_nan=True):
        line(ax_a, loss, objective, marker="^", color="C4", linestyle=":")
    test = _column(history, "test_loss")
    if np.isfinite(test).any():
        line(ax_a, test, "test -ELBO", marker="s", color="C3", linestyle="--", markerfacecolor="none")
    ax_a.set_title("(a) -ELBO (lower is better)")
    ax_a.set_ylabel("-ELBO (nats per example)")
    ax_a.legend()

    # (b) its two terms, each on its own scale.
    rec_color, kl_color = "C2", "C1"
    h1 = line(ax_b, _column(history, "reconstruction"), "reconstruction -E[log P(x|z)]", color=rec_color)
    ax_kl = ax_b.twinx()
    h2 = line(ax_kl, _column(history, "kl"), "KL(Q(z|x) || N(0, I))", marker="s", color=kl_color,
              linestyle="--", markerfacecolor="none")
    ax_b.set_title("(b) The two terms of -ELBO (train)")
    ax_b.set_ylabel("reconstruction (nats per example)", color=rec_color)
    ax_kl.set_ylabel("KL (nats per example)", color=kl_color)
    ax_b.tick_params(axis="y", colors=rec_color)
    ax_kl.tick_params(axis="y", colors=kl_color)
    ax_b.legend(handles=[h1, h2], loc="center right")

    for ax in (ax_a, ax_b):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if np.ptp(epoch) == 0:  # one epoch: a narrow window with one tick, not 0..2
            ax.set_xlim(epoch[0] - 0.5, epoch[0] + 0.5)
            ax.set_xticks([epoch[0]])
    return _finish(fig, path, dpi)


# ---------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------
def plot_reconstructions(x, x_rec, path=None, n=10, image_shape=(28, 28), dpi=DPI,
                         title="Originals and their reconstructions E[x | z = mu(x)]") -> Figure:
    """The first ``n`` originals (top row) above their reconstructions (bottom row).

    Args:
        x: originals, (N, H*W) or (N, H, W), values in [0, 1].
        x_rec: reconstructions of the same shape, e.g. ``model.reconstruct(x)``.
        n: how many to show (at most N).
        image_shape: (H, W).
    """
    n = check_int("n", n)
    a, b = _as_images("x", x, image_shape), _as_images("x_rec", x_rec, image_shape)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"x_rec: expected {a.shape[0]} images like x, got {b.shape[0]}")
    n = min(n, a.shape[0])
    h, w, _ = _image_size(image_shape)
    grid = image_grid(np.concatenate([a[:n], b[:n]]), 2, n, image_shape, pad=1)

    fig = Figure(figsize=(1.9 + 0.8 * max(n, 5), 0.75 + 0.8 * 2), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(grid, **_IMSHOW)
    ax.set_xticks([])
    ax.set_yticks(_tile_centres(2, h, 1), ["original", "reconstruction"])
    ax.tick_params(axis="y", length=0, labelsize=11)
    ax.set_title(title)
    return _finish(fig, path, dpi)


MAX_SAMPLE_GRID = 64  # tiles per side: 64 x 64 images of 28 x 28 are a 1855-pixel square, a screen's height


def plot_samples(samples, path=None, grid=8, image_shape=(28, 28), dpi=DPI,
                 title="Samples from the prior z ~ N(0, I)") -> Figure:
    """``grid * grid`` images tiled into one picture with thin grey separators.

    Args:
        samples: (N, H*W) or (N, H, W), e.g. ``model.sample(64)``; the first grid*grid
            are shown (fewer leave empty tiles).
        grid: tiles per side, at most ``MAX_SAMPLE_GRID`` (64): the figure grows with the grid
            so that every image pixel gets at least one pixel of the PNG, and a larger grid is
            larger than a screen (draw several figures instead).
        image_shape: (H, W).
    """
    grid = check_int("grid", grid)
    if grid > MAX_SAMPLE_GRID:
        raise ValueError(f"grid: expected at most {MAX_SAMPLE_GRID} tiles per side (a larger grid is bigger than a "
                         f"screen at one pixel per image pixel), got {grid}")
    h, w, _ = _image_size(image_shape)
    a = _as_images("samples", samples, image_shape)[: grid * grid]
    side = max(6.4, grid * (max(h, w) + 1) / dpi * 1.1)  # inches: the axes get about 90% of the figure
    fig = Figure(figsize=(side, side + 0.4), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(image_grid(a, grid, grid, image_shape, pad=1), **_IMSHOW)
    _no_ticks(ax)
    ax.set_title(title)
    return _finish(fig, path, dpi)


# ---------------------------------------------------------------------------------------
# The latent space
# ---------------------------------------------------------------------------------------
def _pca2(mu):
    """The first two principal components of the rows of mu (N, Z): scores (N, 2) and the
    share of the total variance each explains (2,). Signs are fixed so that each
    component's largest loading is positive, which makes the picture reproducible."""
    centred = mu - mu.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)  # vt: (min(N, Z), Z)
    if vt.shape[0] < 2:  # a single point: no second direction
        vt = np.concatenate([vt, np.eye(2, mu.shape[1])[vt.shape[0] :]])
    vt = vt[:2]
    signs = np.sign(vt[np.arange(2), np.argmax(np.abs(vt), axis=1)])
    vt = vt * np.where(signs == 0, 1.0, signs)[:, None]
    total = float(np.sum(s**2))
    share = s[:2] ** 2 / total if total > 0 else np.zeros(2)
    return centred @ vt.T, share


def plot_latent(mu, labels, path=None, dpi=DPI, label_name="digit", max_points=None, seed=0,
                class_names=None, posteriors=None) -> Figure:
    """The posterior means mu(x) of a data set, coloured by class.

    Args:
        mu: (N, Z) latent means, e.g. ``model.encode(x)[0]``.
        labels: (N,) integer classes (digits 0-9), or None for one colour.
        label_name: what a label is, for the legend's title.
        class_names: the name of each class, indexed by label (e.g.
            ``datasets.class_names("fashion-mnist")``: "T-shirt/top", "Trouser", ...); None
            shows the labels themselves.
        posteriors: for Z = 2, ``(means (k, 2), covariances (k, 2, 2))`` of a few posteriors
            Q(z|x), drawn as their 1- and 2-standard-deviation ellipses over the scatter (a
            tilted ellipse is a correlated posterior, which only ``posterior="full"`` has).
        max_points: plot a random subset of this many points (None: all).
        seed: for that subset and for the jitter of the Z=1 strips.
    Returns:
        Z=1: one strip of points per label (a histogram without labels);
        Z=2: a scatter of (z1, z2);
        Z>2: a scatter of the first two principal components of the centred means, with the
        share of variance each explains in its axis label.
    """
    mu = _host(mu)
    if mu.ndim == 1:
        mu = mu[:, None]
    if mu.ndim != 2 or mu.shape[0] < 1:
        raise ValueError(f"mu: expected shape (N, Z) with N >= 1, got {mu.shape}")
    n, z_dim = mu.shape
    if labels is not None:
        labels = _host(labels, dtype=None).reshape(-1)
        if labels.shape[0] != n:
            raise ValueError(f"labels: expected {n} labels, one per row of mu, got {labels.shape[0]}")
    rng = np.random.default_rng(seed)
    if max_points is not None and n > max_points:
        keep = np.sort(rng.choice(n, size=int(max_points), replace=False))
        mu, labels = mu[keep], None if labels is None else labels[keep]

    fig = Figure(figsize=(7.4, 6.0), layout="constrained")
    ax = fig.add_subplot()
    classes = [] if labels is None else list(np.unique(labels))
    cmap = "tab10" if len(classes) <= 10 else "tab20"
    palette = colormaps[cmap]
    colors = {c: palette(i % palette.N) for i, c in enumerate(classes)}
    point = {"s": 6, "alpha": 0.6, "linewidths": 0, "rasterized": True}

    def fmt(c):  # 3.0 -> "3" (or class_names[3]); other labels as they are
        if isinstance(c, (float, np.floating, int, np.integer)) and float(c).is_integer():
            if class_names is not None and 0 <= int(c) < len(class_names):
                return str(class_names[int(c)])
            return str(int(c))
        return str(c)

    if z_dim == 1:
        x = mu[:, 0]
        if labels is None:
            ax.hist(x, bins=min(60, max(10, int(np.sqrt(len(x))))), color="C0")
            ax.set_ylabel("count")
        else:
            for i, c in enumerate(classes):
                sel = labels == c
                jitter = rng.uniform(-0.3, 0.3, size=int(sel.sum()))
                ax.scatter(x[sel], i + jitter, color=colors[c], **point)
            ax.set_yticks(range(len(classes)), [fmt(c) for c in classes])
            ax.set_ylabel(label_name)
            ax.invert_yaxis()
        ax.set_xlabel("z (posterior mean)")
        ax.set_title("Latent means mu(x), Z = 1: one strip per " + label_name if labels is not None
                     else "Latent means mu(x), Z = 1")
    else:
        if z_dim == 2:
            xy = mu
            ax.set_xlabel("z1 (posterior mean)")
            ax.set_ylabel("z2 (posterior mean)")
            ax.set_title("Latent means mu(x), Z = 2")
        else:
            xy, share = _pca2(mu)
            ax.set_xlabel(f"PC 1 ({100 * share[0]:.1f}% of variance)")
            ax.set_ylabel(f"PC 2 ({100 * share[1]:.1f}% of variance)")
            ax.set_title(f"Latent means mu(x), Z = {z_dim}: first two principal components")
        if labels is None:
            ax.scatter(xy[:, 0], xy[:, 1], color="C0", **point)
        else:
            order = rng.permutation(len(xy))  # draw classes interleaved, so none hides the rest
            c_idx = np.searchsorted(np.asarray(classes), labels[order])
            rgba = np.array([colors[c] for c in classes])[c_idx]
            ax.scatter(xy[order, 0], xy[order, 1], c=rgba, **point)
        ax.set_aspect("equal", adjustable="datalim")
        if posteriors is not None and z_dim == 2:
            _draw_ellipses(ax, *posteriors)
    ax.grid(alpha=0.3)

    if labels is not None and z_dim > 1:
        handles = [ax.scatter([], [], color=colors[c], s=40, label=fmt(c)) for c in classes]
        ax.legend(handles=handles, title=label_name, loc="center left", bbox_to_anchor=(1.02, 0.5),
                  frameon=False)
    return _finish(fig, path, dpi)


def _draw_ellipses(ax, means, covariances):
    """The 1- and 2-sigma ellipses of N(mean, cov) for each of k 2-D Gaussians: along the
    eigenvectors of cov, with half-axes n * sqrt(eigenvalue)."""
    from matplotlib.patches import Ellipse

    means, covariances = _host(means), _host(covariances)
    if means.ndim != 2 or means.shape[1] != 2 or covariances.shape != (means.shape[0], 2, 2):
        raise ValueError(f"posteriors: expected means (k, 2) and covariances (k, 2, 2), got {means.shape} and "
                         f"{covariances.shape}")
    for m, cov in zip(means, covariances):
        values, vectors = np.linalg.eigh(cov)  # ascending
        angle = np.degrees(np.arctan2(vectors[1, 1], vectors[0, 1]))  # of the largest axis
        for n_sd, alpha in ((1, 0.9), (2, 0.45)):
            width, height = 2 * n_sd * np.sqrt(np.maximum(values[::-1], 0.0))
            ax.add_patch(Ellipse(m, width, height, angle=angle, fill=False, color="black", lw=1.0, alpha=alpha))
        ax.plot(*m, "k+", ms=6)


# ---------------------------------------------------------------------------------------
# Pictures made by the decoder
# ---------------------------------------------------------------------------------------
def _decode_means(model, z):
    """E[x|z] for host latents z (K, Z), decoded in one batch, as host (K, D)."""
    out = model.decode(asarray(np.asarray(z), dtype=model.dtype))
    return _host(model.mean(out))


def _check_model_images(model, image_shape):
    h, w, d = _image_size(image_shape)
    if model.input_dim != d:
        raise ValueError(f"image_shape: expected H * W = model.input_dim = {model.input_dim}, got {(h, w)}")
    return h, w


def plot_manifold(model, path=None, n=20, image_shape=(28, 28), dpi=DPI, p_range=(0.05, 0.95)) -> Figure:
    """The learned 2-D manifold (Kingma & Welling 2014, Fig. 4) of a model with latent_dim 2.

    The unit square of probabilities p = linspace(*p_range, n) in each coordinate goes
    through the inverse normal CDF to z = Phi^-1(p), so the grid covers the prior N(0, I)
    evenly in probability; each z is decoded to E[x|z] (all n*n in one batch) and tiled:
    z1 grows to the right, z2 grows upwards.

    Args:
        model: an ``npvae.VAE`` with ``latent_dim == 2``.
        n: tiles per side.
        image_shape: (H, W), with H * W = model.input_dim.
    """
    if model.latent_dim != 2:
        raise ValueError(f"model: expected latent_dim 2 for a manifold plot, got {model.latent_dim}")
    n = check_int("n", n)
    h, w = _check_model_images(model, image_shape)
    lo, hi = (float(p) for p in p_range)
    if not 0.0 < lo <= hi < 1.0:
        raise ValueError(f"p_range: expected 0 < low <= high < 1, got {tuple(p_range)}")
    p = np.array([0.5]) if n == 1 else np.linspace(lo, hi, n)
    zs = np.array([NormalDist().inv_cdf(float(q)) for q in p])  # increasing
    z1, z2 = np.meshgrid(zs, zs[::-1])  # row 0 (top) has the largest z2
    images = _decode_means(model, np.stack([z1.ravel(), z2.ravel()], axis=1))
    grid = image_grid(images, n, n, image_shape, pad=0)

    fig = Figure(figsize=(7.2, 7.6), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(grid, **_IMSHOW)
    # Ticks at round z values, placed where they fall between the tiles (z is not linear in
    # the tile index: equal steps in p are unequal steps in z).
    if n == 1:
        tick_z, tick_pos = np.array([0.0]), np.array([0.0])
    else:
        tick_z = np.array([v for v in np.arange(-3.0, 3.01, 0.5) if zs[0] - 1e-9 <= v <= zs[-1] + 1e-9])
        tick_pos = (np.array([NormalDist().cdf(float(v)) for v in tick_z]) - lo) / (hi - lo) * (n - 1)
    labels = [f"{v:g}" for v in tick_z]
    ax.set_xticks(tick_pos * w + (w - 1) / 2, labels)
    ax.set_yticks((n - 1 - tick_pos) * h + (h - 1) / 2, labels)
    ax.set_xlabel("z1")
    ax.set_ylabel("z2")
    ax.set_title(f"Decoder means E[x|z] on a {n} x {n} grid of z\n"
                 f"(probabilities {lo:g} to {hi:g}, evenly spaced, through the inverse normal CDF)",
                 fontsize=11)
    return _finish(fig, path, dpi)


def plot_interpolation(model, x_a, x_b, path=None, steps=10, image_shape=(28, 28), dpi=DPI) -> Figure:
    """A walk in latent space between two inputs, decoded.

    Both inputs are encoded and their posterior means mu_a, mu_b taken; then
    z_t = (1 - t) mu_a + t mu_b for t in linspace(0, 1, steps) is decoded to E[x|z_t] and
    shown in a row, labelled with t.

    Args:
        model: an ``npvae.VAE``.
        x_a, x_b: one input each, (D,) or (1, D), host or backend array.
        steps: number of points along the line, the two ends included (>= 2).
        image_shape: (H, W), with H * W = model.input_dim.
    """
    steps = check_int("steps", steps)
    if steps < 2:
        raise ValueError(f"steps: expected at least 2, got {steps}")
    h, w = _check_model_images(model, image_shape)
    ends = []
    for name, x in (("x_a", x_a), ("x_b", x_b)):
        x = _host(x)
        if x.size != model.input_dim or x.ndim > 2:
            d = model.input_dim
            raise ValueError(f"{name}: expected shape ({d},) or (1, {d}), got {x.shape}")
        ends.append(x.reshape(model.input_dim))
    mu = _host(model.encode(np.stack(ends))[0])  # (2, Z)
    t = np.linspace(0.0, 1.0, steps)
    images = _decode_means(model, (1 - t)[:, None] * mu[0] + t[:, None] * mu[1])

    fig = Figure(figsize=(0.4 + 0.8 * max(steps, 5), 1.35 + 0.8), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(image_grid(images, 1, steps, image_shape, pad=1), **_IMSHOW)
    ax.set_xticks(_tile_centres(steps, w, 1), [f"{v:.2f}" for v in t])
    ax.set_yticks([])
    ax.tick_params(axis="x", length=0)
    ax.set_xlabel("t")
    ax.set_title("Decoding z = (1 - t) mu(x_a) + t mu(x_b)")
    return _finish(fig, path, dpi)


# ---------------------------------------------------------------------------------------
# Figures of the notebooks (each a cell's idea in one call)
# ---------------------------------------------------------------------------------------
def plot_kl_one_dimension(path=None, dpi=DPI, mu_range=(-3.0, 3.0), logvar_range=(-8.0, 3.0)) -> Figure:
    """KL(N(mu, sigma^2) || N(0, 1)) for one latent dimension (notebook 04): over the
    (mu, logvar) plane, along mu at logvar = 0 (mu^2 / 2), and along logvar at mu = 0 with
    its asymptote -(1 + logvar) / 2 as logvar -> -infinity. Computed by
    ``distributions.gaussian_kl`` itself."""
    from . import distributions as dist

    mu_line = np.linspace(*mu_range, 401)
    logvar_line = np.linspace(*logvar_range, 441)
    m, t = np.meshgrid(mu_line, logvar_line)
    kl = _host(dist.gaussian_kl(asarray(m.reshape(-1, 1), dtype="float64"), asarray(t.reshape(-1, 1), dtype="float64")))
    kl = kl.reshape(m.shape)
    fig = Figure(figsize=(15, 4.2), layout="constrained")
    axes = fig.subplots(1, 3)
    cs = axes[0].contourf(m, t, kl, levels=np.linspace(0, 8, 17), cmap="viridis", extend="max")
    axes[0].plot(0, 0, "r*", ms=14, label="the prior: mu = 0, logvar = 0")
    axes[0].legend(loc="lower right")
    fig.colorbar(cs, ax=axes[0], label="KL (nats)")
    axes[0].set(xlabel="mu", ylabel="logvar = log sigma^2", title="KL(N(mu, sigma^2) || N(0, 1)) for one dimension")
    row = np.argmin(np.abs(logvar_line))  # logvar = 0
    col = np.argmin(np.abs(mu_line))  # mu = 0
    axes[1].plot(mu_line, kl[row], lw=2)
    axes[1].set(xlabel="mu", ylabel="KL (nats)", title="Along mu (logvar = 0): mu^2 / 2")
    axes[2].plot(logvar_line, kl[:, col], lw=2, label="KL")
    axes[2].plot(logvar_line, -0.5 * logvar_line - 0.5, "k--", lw=1, label="asymptote -(1 + logvar) / 2")
    axes[2].set(xlabel="logvar = log sigma^2", ylabel="KL (nats)", title="Along logvar (mu = 0): shrinking sigma^2 costs")
    axes[2].legend()
    for ax in axes[1:]:
        ax.axvline(0, color="r", lw=0.8, ls=":")
        ax.grid(alpha=0.3)
    return _finish(fig, path, dpi)


def plot_random_codes(h_ref, panels, path=None, dpi=DPI, grid=8, image_shape=(28, 28)) -> Figure:
    """Where random codes land among a model's codes, and what they decode to (notebook 01).

    Args:
        h_ref: (N, 2) the codes of real data (drawn grey).
        panels: a list of ``(name, h, images, in_hole)``: random codes h (n, 2), their decoded
            images (n, D), and a boolean (n,) marking codes that landed in a hole (drawn as a
            red x, on the code and in the corner of its tile). One row of the figure each; the
            first ``grid * grid`` codes are shown.
    """
    h_img, w_img, _ = _image_size(image_shape)
    tile_h, tile_w = h_img + 1, w_img + 1  # image_grid puts one pixel of padding between tiles
    h_ref = _host(h_ref)
    fig = Figure(figsize=(12, 5.75 * len(panels)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(panels), 2, gridspec_kw={"width_ratios": [1.15, 1]}))
    show = grid * grid
    for row, (name, h, images, in_hole) in enumerate(panels):
        h, in_hole = _host(h)[:show], np.asarray(in_hole, dtype=bool)[:show]
        ax = axes[row, 0]
        ax.scatter(h_ref[:, 0], h_ref[:, 1], s=4, c="lightgrey", linewidths=0, label="codes of real data", rasterized=True)
        ax.scatter(*h[~in_hole].T, s=30, marker="+", c="black", label="random h among the codes")
        ax.scatter(*h[in_hole].T, s=30, marker="x", c="red", label="random h in a hole")
        ax.set(title=f"Where {show} random codes land: {name}", xlabel="h1", ylabel="h2")
        ax.set_aspect("equal", adjustable="datalim")
        ax = axes[row, 1]
        ax.imshow(image_grid(_host(images)[:show], grid, grid, image_shape), cmap="gray", vmin=0, vmax=1)
        for k in np.flatnonzero(in_hole):  # a red x in the corner of each tile whose h is in a hole
            r, c = divmod(k, grid)
            ax.plot(c * tile_w + tile_w - 6, r * tile_h + 4, marker="x", color="red", ms=6, mew=1.8)
        _no_ticks(ax)
        ax.set_title(f"What they decode to: {name}\n(red x: h landed in a hole)")
    axes[0, 0].legend(loc="upper left", fontsize=9)
    fig.suptitle("Decoding random codes", fontsize=14)
    return _finish(fig, path, dpi)


def plot_latent_comparison(panels, labels_test, labels_train, path=None, dpi=DPI, zoom=1.0) -> Figure:
    """Two (or more) 2-D latent spaces side by side, on the same axes (notebook 04): on top, the
    test means coloured by class with the prior's radius-1 and radius-2 circles; below, a
    ``zoom`` x ``zoom`` square around the median training mean, with each training example's
    Q(z|x) as a filled 2-sigma ellipse (diagonal posteriors: half-axes 2 exp(logvar / 2)).

    Args:
        panels: a list of ``(name, mu_test (N, 2), mu_train (M, 2), logvar_train (M, 2))``.
        labels_test (N,), labels_train (M,): integer classes 0-9, for the colours.
    """
    from matplotlib.collections import EllipseCollection

    labels_test, labels_train = _host(labels_test).astype(int), _host(labels_train).astype(int)
    panels = [(name, _host(a), _host(b), _host(c)) for name, a, b, c in panels]
    lim = max(np.abs(p[1]).max() for p in panels) * 1.05
    circle = np.linspace(0, 2 * np.pi, 200)
    palette = colormaps["tab10"]
    fig = Figure(figsize=(6 * len(panels), 12), layout="constrained")
    axes = fig.subplots(2, len(panels), squeeze=False)
    for col, (name, m_test, m_train, lv_train) in enumerate(panels):
        ax = axes[0, col]
        sc = ax.scatter(m_test[:, 0], m_test[:, 1], c=labels_test, cmap="tab10", vmin=-0.5, vmax=9.5, s=5, alpha=0.7)
        for r in (1, 2):
            ax.plot(r * np.cos(circle), r * np.sin(circle), "k--", lw=1)
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", xlabel="z1 (posterior mean)",
               ylabel="z2 (posterior mean)",
               title=f"Test means mu(x), {name}\n(same axes in every panel; dashed: prior radius 1 and 2)")
        c = np.median(m_train, axis=0)
        inside = np.all(np.abs(m_train - c) < 0.6 * zoom, axis=1)
        sd = np.exp(lv_train[inside] / 2)
        ax = axes[1, col]
        ax.add_collection(EllipseCollection(4 * sd[:, 0], 4 * sd[:, 1], np.zeros(int(inside.sum())), units="xy",
                                            offsets=m_train[inside], offset_transform=ax.transData,
                                            facecolors=palette(labels_train[inside] % 10), alpha=0.35,
                                            edgecolors="none"))
        half = zoom / 2
        ax.set(xlim=(c[0] - half, c[0] + half), ylim=(c[1] - half, c[1] + half), aspect="equal", xlabel="z1",
               ylabel="z2", title=f"Zoom, {name}:\neach Q(z|x) as a 2-sigma ellipse ({zoom:g} x {zoom:g})")
    fig.colorbar(sc, ax=axes[0, :], ticks=range(10), label="class", shrink=0.8)
    return _finish(fig, path, dpi)


def plot_prior_through_decoder(z, means, samples, data, path=None, dpi=DPI, lim=13.0) -> Figure:
    """What a 2-D decoder does to the prior (notebook 05): the draws z ~ N(0, I) coloured by
    their angle; the decoded means f_phi(z) in the same colours over the data (grey); and the
    full samples x ~ N(f_phi(z), I) against the data. All arguments are (n, 2) arrays."""
    z, means, samples, data = (_host(a) for a in (z, means, samples, data))
    angle = np.arctan2(z[:, 1], z[:, 0])
    fig = Figure(figsize=(16, 5.4), layout="constrained")
    axes = fig.subplots(1, 3)
    axes[0].scatter(z[:, 0], z[:, 1], c=angle, cmap="hsv", s=4)
    axes[0].set(title="z ~ N(0, I)", xlabel="z1", ylabel="z2", xlim=(-4, 4), ylim=(-4, 4))
    axes[1].scatter(data[:, 0], data[:, 1], color="0.8", s=4, label="data")
    axes[1].scatter(means[:, 0], means[:, 1], c=angle, cmap="hsv", s=4)
    axes[1].set(title="Decoded means f_phi(z) (colour = angle of z)\nover the data (grey)", xlabel="x1", ylabel="x2")
    axes[2].scatter(data[:, 0], data[:, 1], color="0.6", s=4, label="data")
    axes[2].scatter(samples[:, 0], samples[:, 1], color="C3", s=4, alpha=0.5, label="samples f_phi(z) + noise")
    axes[2].set(title="Full samples x ~ N(f_phi(z), I) against the data", xlabel="x1", ylabel="x2")
    axes[2].legend(loc="upper right", fontsize=8)
    for ax in axes[1:]:
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim))
    for ax in axes:
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
    fig.suptitle("The learned decoder maps N(0, I) onto the data")
    return _finish(fig, path, dpi)


def plot_posterior_against_q(coarse_log_post, extent, box, title, panels, path=None, dpi=DPI,
                             image_shape=(28, 28)) -> Figure:
    """The true posterior P(z|x) on a grid against the encoder's Q(z|x) (notebook 06).

    Left: ``coarse_log_post`` (n, n), log P(z|x) of one example on a coarse grid over
    ``extent`` (x0, x1, y0, y1), clipped 60 nats below its peak, with the ``box`` (lo (2,),
    hi (2,)) of the fine grid, titled ``title``. Then one panel per ``(title, g1, g2, post,
    q, mu, image)``: P(z|x) filled (blue) and Q(z|x) as red contours at the 1, 2 and 3 "sigma"
    levels relative to each peak (post, q (n, n) on the grid axes g1, g2), Q's mean mu marked,
    and the example's image as an inset.
    """
    from matplotlib.patches import Rectangle

    coarse = _host(coarse_log_post)
    fig = Figure(figsize=(5.7 * (1 + len(panels)), 5.4), layout="constrained")
    axes = fig.subplots(1, 1 + len(panels))
    im = axes[0].imshow(np.maximum(coarse, coarse.max() - 60), origin="lower", extent=extent, cmap="magma")
    fig.colorbar(im, ax=axes[0], label="log P(z|x) (clipped 60 nats below the peak)", shrink=0.85)
    lo, hi = (np.asarray(b, dtype=float) for b in box)
    axes[0].add_patch(Rectangle(lo, *(hi - lo), fill=False, ec="cyan", lw=1.5, label="fine box"))
    axes[0].legend(loc="upper right")
    axes[0].set(xlabel="z1", ylabel="z2", title=title)
    levels = np.exp(-0.5 * np.array([3.0, 2.0, 1.0]) ** 2)  # 3, 2, 1 "sigma" levels, relative to the peak
    for ax, (panel_title, g1, g2, post, q, mu, image) in zip(axes[1:], panels):
        post, q = _host(post), _host(q)
        ax.contourf(_host(g1), _host(g2), post / post.max(), levels=[*levels, 1.0], cmap="Blues")
        ax.contour(_host(g1), _host(g2), q / q.max(), levels=levels, colors="C3", linewidths=1.5)
        ax.plot(*_host(mu), "r+", ms=12, mew=2)
        ax.set(xlabel="z1", ylabel="z2", aspect="equal", title=panel_title)
        inset = ax.inset_axes([0.0, 0.78, 0.22, 0.22])
        inset.imshow(_host(image).reshape(image_shape), cmap="gray", vmin=0, vmax=1)
        inset.set(xticks=[], yticks=[])
    return _finish(fig, path, dpi)
