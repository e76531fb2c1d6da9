"""``nerfaccel-vanilla``: the original NeRF MLP, accelerated by an occupancy grid."""

from nerfstudio.plugins.types import MethodSpecification

from nerfaccel_plugin.ns.dataparsers import NerfaccelBlenderDataParserConfig
from nerfaccel_plugin.ns.models import MlpFieldConfig, NerfaccelModelConfig, OccupancySamplerConfig
from nerfaccel_plugin.ns.trainer import make_trainer_config

nerfaccel_vanilla = MethodSpecification(
    config=make_trainer_config(
        method_name="nerfaccel-vanilla",
        dataparser=NerfaccelBlenderDataParserConfig(),
        model=NerfaccelModelConfig(
            field=MlpFieldConfig(contraction="none"),
            sampler=OccupancySamplerConfig(
                grid_resolution=128, grid_levels=1, alpha_thre=0.0, samples_per_diagonal=500
            ),
            background_color="random",
        ),
        gpu_steps=50000,
        cpu_steps=2000,
        lr=5e-4,
        lr_final=5e-5,
        eps=1e-8,
        gpu_target_samples=1 << 16,
        cpu_target_samples=1 << 13,
    ),
    description="nerfaccel: the original NeRF (8-layer MLP, positional encoding) with an occupancy grid.",
)
