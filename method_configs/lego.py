"""``nerfaccel-lego``: Blender synthetic objects with a one-level occupancy grid and a hash-grid field."""

from nerfstudio.plugins.types import MethodSpecification

from nerfaccel_plugin.ns.dataparsers import NerfaccelBlenderDataParserConfig
from nerfaccel_plugin.ns.models import HashFieldConfig, NerfaccelModelConfig, OccupancySamplerConfig
from nerfaccel_plugin.ns.trainer import make_trainer_config

nerfaccel_lego = MethodSpecification(
    config=make_trainer_config(
        method_name="nerfaccel-lego",
        dataparser=NerfaccelBlenderDataParserConfig(),
        model=NerfaccelModelConfig(
            field=HashFieldConfig(contraction="none"),
            sampler=OccupancySamplerConfig(grid_resolution=128, grid_levels=1, cone_angle=0.0, alpha_thre=0.01),
            background_color="random",
        ),
        gpu_steps=20000,
        cpu_steps=4000,
        lr=1e-2,
        lr_final=3e-4,
    ),
    description="nerfaccel: Blender objects; occupancy grid (1 level) + hash grid. Falls back to an embedded scene.",
)
