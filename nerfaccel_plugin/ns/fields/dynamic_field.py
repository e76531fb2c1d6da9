"""A time-conditioned hash-grid field for dynamic (D-NeRF) scenes."""

from __future__ import annotations

from typing import Literal, Optional

import torch
from jaxtyping import Float
from nerfstudio.cameras.rays import Frustums, RaySamples
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.field_components.activations import trunc_exp
from nerfstudio.field_components.encodings import HashEncoding, NeRFEncoding, SHEncoding
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.field_components.mlp import MLP
from nerfstudio.fields.base_field import Field
from torch import Tensor, nn


class TimeHashField(Field):
    """Hash grid on the position, conditioned on time through a frequency encoding in the density MLP.

    ``density, geo = MLP([hash(x), PE(t)])`` and ``rgb = MLP([geo, SH(d), PE(t)])``. Points outside the scene
    box have zero density.

    Args:
        aabb: ``(2, 3)`` scene box.
        num_levels: Hash-grid levels.
        base_res: Coarsest hash-grid resolution.
        max_res: Finest hash-grid resolution.
        log2_hashmap_size: log2 of the hash-table size per level.
        features_per_level: Features per level.
        time_frequencies: Frequencies of the time encoding.
        hidden_dim: Width of the density MLP.
        num_layers: Layers of the density MLP.
        geo_feat_dim: Geometry features passed to the colour MLP.
        hidden_dim_color: Width of the colour MLP.
        num_layers_color: Layers of the colour MLP.
        implementation: ``"tcnn"`` (tiny-cuda-nn when installed) or ``"torch"``.
    """

    def __init__(
        self,
        aabb: Tensor,
        num_levels: int = 16,
        base_res: int = 16,
        max_res: int = 2048,
        log2_hashmap_size: int = 19,
        features_per_level: int = 2,
        time_frequencies: int = 6,
        hidden_dim: int = 64,
        num_layers: int = 2,
        geo_feat_dim: int = 15,
        hidden_dim_color: int = 64,
        num_layers_color: int = 3,
        implementation: Literal["tcnn", "torch"] = "tcnn",
    ) -> None:
        super().__init__()
        self.register_buffer("aabb", aabb.detach().clone())
        self.geo_feat_dim = geo_feat_dim
        self.position_encoding = HashEncoding(
            num_levels=num_levels,
            min_res=base_res,
            max_res=max_res,
            log2_hashmap_size=log2_hashmap_size,
            features_per_level=features_per_level,
            implementation=implementation,
        )
        self.time_encoding = NeRFEncoding(
            in_dim=1,
            num_frequencies=time_frequencies,
            min_freq_exp=0.0,
            max_freq_exp=time_frequencies - 1.0,
            include_input=True,
        )
        self.direction_encoding = SHEncoding(levels=4, implementation=implementation)
        self.mlp_base = MLP(
            in_dim=self.position_encoding.get_out_dim() + self.time_encoding.get_out_dim(),
            num_layers=num_layers,
            layer_width=hidden_dim,
            out_dim=1 + geo_feat_dim,
            activation=nn.ReLU(),
            implementation="torch",
        )
        self.mlp_head = MLP(
            in_dim=geo_feat_dim + self.direction_encoding.get_out_dim() + self.time_encoding.get_out_dim(),
            num_layers=num_layers_color,
            layer_width=hidden_dim_color,
            out_dim=3,
            activation=nn.ReLU(),
            out_activation=nn.Sigmoid(),
            implementation="torch",
        )

    def _times(self, ray_samples: RaySamples, like: Tensor) -> Tensor:
        if ray_samples.times is None:
            return torch.zeros((*like.shape[:-1], 1), dtype=like.dtype, device=like.device)
        return ray_samples.times.reshape(*like.shape[:-1], 1).to(like)

    def density_fn(
        self, positions: Float[Tensor, "*bs 3"], times: Optional[Float[Tensor, "*bs 1"]] = None
    ) -> Float[Tensor, "*bs 1"]:
        """Density at ``positions`` and ``times`` (for the occupancy grid and sample culling).

        Nerfstudio's ``Field.density_fn`` drops ``times``, which would freeze a dynamic scene at time 0 for the
        grid; this one passes them on.
        """
        ray_samples = RaySamples(
            frustums=Frustums(
                origins=positions,
                directions=torch.ones_like(positions),
                starts=torch.zeros_like(positions[..., :1]),
                ends=torch.zeros_like(positions[..., :1]),
                pixel_area=torch.ones_like(positions[..., :1]),
            ),
            times=times,
        )
        density, _ = self.get_density(ray_samples)
        return density

    def get_density(self, ray_samples: RaySamples) -> tuple[Float[Tensor, "*bs 1"], Float[Tensor, "*bs geo"]]:
        """Density ``(*bs, 1)`` and geometry features ``(*bs, geo_feat_dim)`` at the samples' positions and times."""
        positions = SceneBox.get_normalized_positions(ray_samples.frustums.get_positions(), self.aabb)
        inside = ((positions > 0.0) & (positions < 1.0)).all(dim=-1, keepdim=True)
        positions = positions * inside
        t_enc = self.time_encoding(self._times(ray_samples, positions))
        flat = torch.cat([self.position_encoding(positions.reshape(-1, 3)), t_enc.reshape(-1, t_enc.shape[-1])], -1)
        h = self.mlp_base(flat).reshape(*positions.shape[:-1], -1)
        raw, geo = torch.split(h, [1, self.geo_feat_dim], dim=-1)
        density = trunc_exp(raw.float() - 1.0) * inside
        return density, geo

    def get_outputs(
        self, ray_samples: RaySamples, density_embedding: Optional[Tensor] = None
    ) -> dict[FieldHeadNames, Tensor]:
        """RGB ``(*bs, 3)`` from the geometry features, the view direction and the time."""
        assert density_embedding is not None
        dirs = (ray_samples.frustums.directions + 1.0) / 2.0
        t_enc = self.time_encoding(self._times(ray_samples, dirs))
        d_enc = self.direction_encoding(dirs.reshape(-1, 3))
        h = torch.cat([density_embedding.reshape(-1, self.geo_feat_dim), d_enc, t_enc.reshape(-1, t_enc.shape[-1])], -1)
        rgb = self.mlp_head(h).reshape(*dirs.shape[:-1], 3).to(dirs)
        return {FieldHeadNames.RGB: rgb}
