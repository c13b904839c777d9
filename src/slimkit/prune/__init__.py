"""Pruning: importance criteria, schedules, unstructured and N:M masks."""
from .importance import CRITERIA, accumulate_gradients, bn_scale, magnitude, random, taylor
from .cluster import ClusterConfig, ClusteredModel, cluster, kmeans_1d
from .container import load_slim, save_slim
from .elastic import ElasticConfig, ElasticWidthsConfig, Supernet, elastic_widths
from .gradual import GradualPruneConfig, IterativePruneConfig, gradual_prune, iterative_prune
from .schedule import agp
from .structured import (SlimMultiheadAttention, StructuredPruneConfig, WidthSearchConfig, prune_heads,
                         structured_prune, width_search)
from .unstructured import MagnitudePruneConfig, PrunedModel, layer_sparsity, magnitude_prune, nm_mask

__all__ = ["CRITERIA", "accumulate_gradients", "bn_scale", "magnitude", "random", "taylor", "agp",
           "MagnitudePruneConfig", "PrunedModel", "layer_sparsity", "magnitude_prune", "nm_mask",
           "GradualPruneConfig", "IterativePruneConfig", "iterative_prune", "StructuredPruneConfig", "structured_prune", "WidthSearchConfig", "width_search", "prune_heads", "SlimMultiheadAttention", "gradual_prune", "load_slim", "save_slim", "ClusterConfig", "ClusteredModel", "cluster", "kmeans_1d",
           "ElasticConfig", "ElasticWidthsConfig", "Supernet", "elastic_widths"]

from ..core.family import callable_family  # noqa: E402

callable_family(__name__)  # slimkit.prune(model, config, data)
