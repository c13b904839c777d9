"""Low-rank factorization (SVD, Tucker-2, spatial SVD) and depthwise-separable conversion."""
from .decompose import (depthwise_separable, rank_for_energy, singular_values, spatial_svd_conv, svd_linear,
                        tucker2, tucker2_conv)
from .lowrank import DSConvConfig, LowRankConfig, dsconv, lowrank

__all__ = ["depthwise_separable", "rank_for_energy", "singular_values", "spatial_svd_conv", "svd_linear", "tucker2",
           "tucker2_conv", "DSConvConfig", "LowRankConfig", "dsconv", "lowrank"]

from ..core.family import callable_family  # noqa: E402

callable_family(__name__)  # slimkit.factorize(model, config, data)
