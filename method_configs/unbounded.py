"""``nerfaccel-360``: unbounded 360-degree scenes with proposal networks and L2 scene contraction."""

from nerfstudio.plugins.types import MethodSpecification

from nerfaccel_plugin.ns.dataparsers import NerfaccelNerfstudioDataParserConfig
from nerfaccel_plugin.ns.models import HashFieldConfig, NerfaccelModelConfig, ProposalSamplerConfig
from nerfaccel_plugin.ns.trainer import make_trainer_config

nerfaccel_360 = MethodSpecification(
    config=make_trainer_config(
        method_name="nerfaccel-360",
        dataparser=NerfaccelNerfstudioDataParserConfig(),
        model=NerfaccelModelConfig(
            field=HashFieldConfig(contraction="l2"),
            sampler=ProposalSamplerConfig(
                num_proposal_samples=(256, 96),
                num_samples=48,
                near_plane=0.05,
                far_plane=1e3,
                sampling_type="lindisp",
            ),
            background_color="random",
        ),
        gpu_steps=20000,
        cpu_steps=4000,
        lr=1e-2,
        lr_final=3e-4,
        proposal=True,
    ),
    description="nerfaccel: unbounded 360 scenes; proposal networks + scene contraction + hash grid.",
)
