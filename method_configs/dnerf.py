"""``nerfaccel-dnerf``: dynamic scenes (D-NeRF data) with a time-aware occupancy grid and a time-conditioned field."""

from nerfstudio.plugins.types import MethodSpecification

from nerfaccel_plugin.ns.dataparsers import NerfaccelDNeRFDataParserConfig
from nerfaccel_plugin.ns.models import NerfaccelModelConfig, OccupancySamplerConfig, TimeHashFieldConfig
from nerfaccel_plugin.ns.trainer import make_trainer_config

nerfaccel_dnerf = MethodSpecification(
    config=make_trainer_config(
        method_name="nerfaccel-dnerf",
        dataparser=NerfaccelDNeRFDataParserConfig(),
        model=NerfaccelModelConfig(
            field=TimeHashFieldConfig(grid_time_samples=2),
            sampler=OccupancySamplerConfig(grid_resolution=128, grid_levels=1, alpha_thre=0.01),
            background_color="random",
        ),
        gpu_steps=30000,
        cpu_steps=4000,
        lr=1e-2,
        lr_final=3e-4,
    ),
    description="nerfaccel: dynamic scenes; time-aware occupancy grid + time-conditioned hash field. Falls back to "
    "an embedded dynamic scene.",
)
