"""The pixel_knn family's configuration: no section of its own; it reads ``data``."""

from __future__ import annotations

from ...config import FamilySettings

NAME = "pixel_knn"
COMPONENTS: tuple[str, ...] = ("pixel_distance",)

SETTINGS = FamilySettings(
    help="the mean pixel distance to the 5 nearest training normals",
    raw_score="the mean pixel distance",
    components=COMPONENTS,
    benchmark_rows=(NAME,),
)
