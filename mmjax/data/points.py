"""Point clouds on the host: validation, digits as 3-D clouds, synthetic shapes
and augmentations.

Everything here is NumPy and runs per example inside Grain transforms; random
functions take an explicit `np.random.Generator` (the one Grain hands to a
random map), so an example's cloud depends only on its seed.

Clouds are float32 [N, 3]. `normalize_unit_sphere` is the Point-MAE/ModelNet
normalisation (centre on the mean, scale so the farthest point has norm 1).
"""
from __future__ import annotations

import numpy as np

from mmjax.data.transforms import BadInput

SHAPES = ("sphere", "cube", "cylinder", "cone", "torus", "pyramid")
ROTATION_MODES = ("x", "y", "z", "so3")


class PointCloudError(BadInput):
    """A point cloud (or the input it is made from) that cannot be used."""


def validate_points(points, name: str = "point cloud") -> np.ndarray:
    """Returns `points` as float32 [N, 3], or raises PointCloudError.

    `name` starts every message, so a pipeline can pass e.g.
    "digits_av/train example 17: points" to name the bad example.
    """
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[-1] != 3:
        raise PointCloudError(f"{name} must have shape [N, 3], got {points.shape}")
    if points.shape[0] == 0:
        raise PointCloudError(f"{name} is empty (0 points)")
    if points.dtype.kind not in "fiu":
        raise PointCloudError(f"{name} has dtype {points.dtype}, expected a real number type")
    bad = ~np.isfinite(points).all(axis=1)
    if bad.any():
        raise PointCloudError(f"{name} has {int(bad.sum())} non-finite point(s), first at row {int(np.argmax(bad))}")
    if np.ptp(points, axis=0).max() == 0:
        raise PointCloudError(f"{name}: all {len(points)} points are identical ({points[0].tolist()}); "
                              "a cloud with zero extent cannot be normalised")
    return points.astype(np.float32)


def normalize_unit_sphere(points) -> np.ndarray:
    """Centre on the mean and scale so the farthest point has norm 1 (float32)."""
    points = validate_points(points).astype(np.float64)
    points -= points.mean(axis=0)
    return (points / np.linalg.norm(points, axis=1).max()).astype(np.float32)


# ---------------------------------------------------------------- digits ----

def digit_stroke_points(image, num_points: int, rng: np.random.Generator, thickness: float = 0.3) -> np.ndarray:
    """Samples of an extruded digit, before normalisation: float32 [num_points, 3].

    Pixels are drawn with probability proportional to intensity (with
    replacement), and each point lies uniformly inside its pixel, so the
    cloud covers the strokes rather than the pixel grid. x spans the columns
    and y the rows of [-1, 1] (y up, so the digit is upright); z is uniform in
    [-thickness/2, thickness/2], the extrusion depth.
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim != 2:
        raise PointCloudError(f"digit image must be [H, W] or [H, W, 1], got shape {np.shape(image)}")
    weights = image.astype(np.float64).ravel()
    if not np.isfinite(weights).all() or (weights < 0).any():
        raise PointCloudError("digit image has negative or non-finite intensities")
    if weights.sum() == 0:
        raise PointCloudError("digit image is blank (all zero); no strokes to sample points from")
    h, w = image.shape
    rows, cols = np.divmod(rng.choice(h * w, size=num_points, p=weights / weights.sum()), w)
    x = (cols + rng.uniform(size=num_points)) / w * 2 - 1
    y = 1 - (rows + rng.uniform(size=num_points)) / h * 2
    z = rng.uniform(-thickness / 2, thickness / 2, size=num_points)
    return np.stack([x, y, z], axis=1).astype(np.float32)


def digit_to_points(image, num_points: int, rng: np.random.Generator, thickness: float = 0.3) -> np.ndarray:
    """A digit image as a unit-sphere-normalised 3-D cloud, float32 [num_points, 3].

    Blank images raise PointCloudError (see `digit_stroke_points`).
    """
    return normalize_unit_sphere(digit_stroke_points(image, num_points, rng, thickness))


# ------------------------------------------------------- synthetic shapes ----

def _sample_triangles(vertices, faces, n: int, rng: np.random.Generator) -> np.ndarray:
    """n points uniform on the surface of a triangle mesh (by area)."""
    tri = np.asarray(vertices, np.float64)[np.asarray(faces)]  # [F, 3 corners, 3]
    areas = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1) / 2
    t = tri[rng.choice(len(tri), size=n, p=areas / areas.sum())]
    # sqrt(u) makes the barycentric sample uniform over the triangle's area.
    su, v = np.sqrt(rng.uniform(size=(n, 1))), rng.uniform(size=(n, 1))
    return (1 - su) * t[:, 0] + su * (1 - v) * t[:, 1] + su * v * t[:, 2]


_CUBE_VERTICES = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)])
# Two triangles per face; vertex i has coordinates given by the bits of i (x=4, y=2, z=1).
_CUBE_FACES = [(0, 1, 3), (0, 3, 2), (4, 5, 7), (4, 7, 6), (0, 1, 5), (0, 5, 4),
               (2, 3, 7), (2, 7, 6), (0, 2, 6), (0, 6, 4), (1, 3, 7), (1, 7, 5)]
# Square base at z=-1 (two triangles) and apex (0, 0, 1).
_PYRAMID_VERTICES = [(-1, -1, -1), (1, -1, -1), (1, 1, -1), (-1, 1, -1), (0, 0, 1)]
_PYRAMID_FACES = [(0, 1, 2), (0, 2, 3), (0, 1, 4), (1, 2, 4), (2, 3, 4), (3, 0, 4)]
_TORUS_RADII = (1.0, 0.35)  # ring radius R, tube radius r


def _disc(n: int, rng: np.random.Generator) -> np.ndarray:
    """n points uniform on the unit disc, [n, 2]."""
    r, a = np.sqrt(rng.uniform(size=n)), rng.uniform(0, 2 * np.pi, size=n)
    return np.stack([r * np.cos(a), r * np.sin(a)], axis=1)


def _cylinder(n: int, rng: np.random.Generator) -> np.ndarray:
    """Radius 1, z in [-1, 1]: side area 4*pi, caps 2*pi together."""
    on_side = rng.uniform(size=n) < 4 / 6
    a, z = rng.uniform(0, 2 * np.pi, size=n), rng.uniform(-1, 1, size=n)
    side = np.stack([np.cos(a), np.sin(a), z], axis=1)
    cap = np.concatenate([_disc(n, rng), rng.choice([-1.0, 1.0], size=(n, 1))], axis=1)
    return np.where(on_side[:, None], side, cap)


def _cone(n: int, rng: np.random.Generator) -> np.ndarray:
    """Base radius 1 at z=-1, apex at z=1: side area pi*sqrt(5), base pi."""
    on_side = rng.uniform(size=n) < np.sqrt(5) / (np.sqrt(5) + 1)
    # Side area grows linearly with distance from the apex, hence sqrt.
    t, a = np.sqrt(rng.uniform(size=n)), rng.uniform(0, 2 * np.pi, size=n)
    side = np.stack([t * np.cos(a), t * np.sin(a), 1 - 2 * t], axis=1)
    base = np.concatenate([_disc(n, rng), -np.ones((n, 1))], axis=1)
    return np.where(on_side[:, None], side, base)


def _torus(n: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform on the torus: the tube angle is accepted with probability
    proportional to the local circumference (R + r cos(theta)) / (R + r)."""
    big_r, r = _TORUS_RADII
    thetas = np.empty(0)
    while len(thetas) < n:
        theta = rng.uniform(0, 2 * np.pi, size=2 * n)
        keep = rng.uniform(size=2 * n) < (big_r + r * np.cos(theta)) / (big_r + r)
        thetas = np.concatenate([thetas, theta[keep]])
    theta, phi = thetas[:n], rng.uniform(0, 2 * np.pi, size=n)
    ring = big_r + r * np.cos(theta)
    return np.stack([ring * np.cos(phi), ring * np.sin(phi), r * np.sin(theta)], axis=1)


# Each solid's smallest bounding sphere (centre on the z axis, radius) as
# constructed above; mapping it onto the unit sphere puts the shape inside
# the unit sphere, touching it.
_BOUNDING_SPHERES = {
    "sphere": (0.0, 1.0),
    "cube": (0.0, np.sqrt(3)),
    "cylinder": (0.0, np.sqrt(2)),
    "cone": (-0.25, 1.25),  # equidistant from apex (z=1) and base rim
    "torus": (0.0, sum(_TORUS_RADII)),
    "pyramid": (-0.5, 1.5),  # equidistant from apex and base corners
}


def synthetic_shape(kind: str, num_points: int, rng: np.random.Generator) -> np.ndarray:
    """float32 [num_points, 3] samples, uniform by area, on a `SHAPES` surface.

    Scaled by the solid's exact bounding sphere rather than by sample
    statistics, so every sample of a class has the same geometry (a sphere
    sample has radius exactly 1, a cube's faces lie at |coord| = 1/sqrt(3)).
    The clouds are therefore not mean-centred: the sample mean is near the
    origin for the symmetric solids but off it along z for the cone and the
    pyramid.
    """
    if kind == "sphere":
        p = rng.normal(size=(num_points, 3))
        p /= np.linalg.norm(p, axis=1, keepdims=True)
    elif kind == "cube":
        p = _sample_triangles(_CUBE_VERTICES, _CUBE_FACES, num_points, rng)
    elif kind == "pyramid":
        p = _sample_triangles(_PYRAMID_VERTICES, _PYRAMID_FACES, num_points, rng)
    elif kind in ("cylinder", "cone", "torus"):
        p = {"cylinder": _cylinder, "cone": _cone, "torus": _torus}[kind](num_points, rng)
    else:
        raise ValueError(f"unknown shape {kind!r}; valid: {list(SHAPES)}")
    centre_z, radius = _BOUNDING_SPHERES[kind]
    return ((p - [0.0, 0.0, centre_z]) / radius).astype(np.float32)


def make_shape_dataset(num_per_class: int, num_points: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A shape-classification sanity task: (points [M, N, 3] float32, labels [M] int32).

    M = num_per_class * len(SHAPES); label i is SHAPES[i]. Every example gets
    a uniform random SO(3) rotation, so the class cannot be read off the
    orientation, and the order is shuffled (fixed by `seed`).
    """
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(len(SHAPES), dtype=np.int32), num_per_class))
    points = np.stack([random_rotation(synthetic_shape(SHAPES[c], num_points, rng), rng, "so3") for c in labels])
    return points, labels


# ---------------------------------------------------------- augmentations ----

def _uniform_rotation(rng: np.random.Generator) -> np.ndarray:
    """A Haar-uniform rotation matrix: QR of a Gaussian matrix with R's diagonal
    made positive is Haar on O(3); flipping one axis when det < 0 maps it onto
    SO(3) uniformly."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def random_rotation(points, rng: np.random.Generator, mode: str = "z", max_angle: float = np.pi) -> np.ndarray:
    """Rotates about the origin.

    mode "x"/"y"/"z": about that axis by an angle uniform in [-max_angle,
    max_angle] (for digits z is the extrusion axis, so "z" is an in-plane
    rotation and a full turn confuses 6 and 9; ModelNet's up axis is y).
    mode "so3": a uniform random 3-D rotation (max_angle is not used).
    """
    if mode == "so3":
        rot = _uniform_rotation(rng)
    elif mode in ROTATION_MODES:
        axis = "xyz".index(mode)
        a = rng.uniform(-max_angle, max_angle)
        i, j = [k for k in range(3) if k != axis]
        rot = np.eye(3)
        rot[i, i], rot[i, j], rot[j, i], rot[j, j] = np.cos(a), -np.sin(a), np.sin(a), np.cos(a)
    else:
        raise ValueError(f"unknown rotation mode {mode!r}; valid: {list(ROTATION_MODES)}")
    return (points @ rot.T).astype(points.dtype)


def random_anisotropic_scale(points, rng: np.random.Generator, low: float = 2 / 3, high: float = 3 / 2) -> np.ndarray:
    """Scales each axis by its own factor uniform in [low, high] (Point-MAE's
    default range); the cloud may leave the unit sphere."""
    return (points * rng.uniform(low, high, size=3)).astype(points.dtype)


def jitter(points, rng: np.random.Generator, sigma: float = 0.01, clip: float = 0.05) -> np.ndarray:
    """Adds per-coordinate Gaussian noise N(0, sigma^2), clipped to [-clip, clip] (PointNet)."""
    noise = np.clip(sigma * rng.normal(size=points.shape), -clip, clip)
    return (points + noise).astype(points.dtype)


def point_dropout(points, rng: np.random.Generator, max_ratio: float = 0.875) -> np.ndarray:
    """PointNet++ random point dropout: draws a ratio uniform in [0, max_ratio]
    and replaces each point, with that probability, by the first point, so the
    shape stays [N, 3] (duplicates of point 0 add no new FPS centre)."""
    ratio = rng.uniform(0, max_ratio)
    drop = rng.uniform(size=len(points)) < ratio
    out = points.copy()
    out[drop] = points[0]
    return out
