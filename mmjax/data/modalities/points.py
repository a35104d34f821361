"""Point clouds: float [N, 3] clouds, or [N, >3] with per-point features after xyz (normals,
colour, intensity: only xyz is kept), resampled to num_points, or uint8 rasters [H, W(, 1)] whose
strokes are extruded to 3-D (the digits), normalised to the unit sphere; rotation, anisotropic
scale, jitter and point-dropout augmentation; the point transformer by default."""
from __future__ import annotations

import numpy as np

from mmjax.data import points as points_lib
from mmjax.data.modalities.base import MODALITIES, Modality
from mmjax.data.transforms import BadInput


@MODALITIES.register("points")
class Points(Modality):
    name = "points"
    encoder = "points"

    @classmethod
    def default_config(cls):
        return {
            "num_points": 256,
            "thickness": 0.3,  # extrusion depth of a raster's strokes
            # In-plane rotation only: a full turn would make 6 and 9 the same cloud.
            "rotation_deg": 15.0, "scale_low": 0.8, "scale_high": 1.25,
            "jitter_sigma": 0.01, "jitter_clip": 0.05, "dropout_max": 0.5,
        }

    def specs(self):
        return {"points": ((self.cfg.num_points, 3), np.float32)}

    def validate(self, value):
        if not isinstance(value, np.ndarray):
            raise BadInput(f"has type {type(value).__name__}, expected an array")
        if _is_raster(value):
            return value
        if not (value.ndim == 2 and value.shape[1] >= 3):
            raise BadInput(f"has shape {value.shape} and dtype {value.dtype}: expected a cloud [N, 3] "
                           f"(or [N, >3], xyz first) or a uint8 raster [H, W(, 1)]")
        return value[:, :3]  # xyz (extra per-point features are not used)

    def _sample(self, value, rng):
        c = self.cfg
        if _is_raster(value):  # strokes of a drawing, extruded (blank raster: PointCloudError)
            return points_lib.digit_to_points(value, c.num_points, rng, c.thickness)
        cloud = points_lib.validate_points(value[:, :3] if value.ndim == 2 else value)
        rows = rng.choice(len(cloud), size=c.num_points, replace=len(cloud) < c.num_points)
        return points_lib.normalize_unit_sphere(cloud[rows])

    def __call__(self, value, rng, flags):
        c = self.cfg
        pts = self._sample(value, rng)
        if self.augmenting:
            pts = points_lib.random_rotation(pts, rng, "z", np.deg2rad(c.rotation_deg))
            pts = points_lib.random_anisotropic_scale(pts, rng, c.scale_low, c.scale_high)
            pts = points_lib.jitter(pts, rng, c.jitter_sigma, c.jitter_clip)
            if c.dropout_max:
                pts = points_lib.point_dropout(pts, rng, c.dropout_max)
        return {"points": pts}

    def fake(self, rng, flags, class_names=()):
        # Gaussian, normalised to the unit sphere (Point-MAE's normalisation).
        return {"points": points_lib.normalize_unit_sphere(rng.standard_normal((self.cfg.num_points, 3)))}


def _is_raster(value: np.ndarray) -> bool:
    return value.dtype == np.uint8 and (value.ndim == 2 or (value.ndim == 3 and value.shape[2] == 1))
