"""``nerfaccel-ngp``: real captures with a multi-level occupancy grid, cone stepping and a contracted hash grid."""

from nerfstudio.plugins.types import MethodSpecification

from nerfaccel_plugin.ns.dataparsers import NerfaccelNerfstudioDataParserConfig
from nerfaccel_plugin.ns.models import HashFieldConfig, NerfaccelModelConfig, OccupancySamplerConfig
from nerfaccel_plugin.ns.trainer import make_trainer_config

nerfaccel_ngp = MethodSpecification(
    config=make_trainer_config(
        method_name="nerfaccel-ngp",
        dataparser=NerfaccelNerfstudioDataParserConfig(),
        model=NerfaccelModelConfig(
            field=HashFieldConfig(contraction="linf", appearance_embedding_dim=0),
            sampler=OccupancySamplerConfig(
                grid_resolution=128, grid_levels=4, cone_angle=1.0 / 256, alpha_thre=0.01, near_plane=0.05
            ),
            background_color="random",
        ),
        gpu_steps=20000,
        cpu_steps=4000,
        lr=1e-2,
        lr_final=3e-4,
        weight_decay=1e-6,
    ),
    description="nerfaccel: real captures; multi-level occupancy grid, cone stepping, hash grid on contracted space.",
)
