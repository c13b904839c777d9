"""Built-in models and data sets, all offline."""
from .data import DataBundle, DataSplit
from .registry import ZOO, ZOO_DATA, ZOO_DATA_SUMMARY, get_zoo, load_zoo_model, zoo_data

__all__ = ["DataBundle", "DataSplit", "ZOO", "ZOO_DATA", "ZOO_DATA_SUMMARY", "get_zoo",
           "load_zoo_model", "zoo_data"]
