from cskd.data.datasets import DATASETS, DataSet, Split, load_dataset, split_train_val
from cskd.data.loader import DeviceLoader

__all__ = ["DATASETS", "DataSet", "DeviceLoader", "Split", "load_dataset", "split_train_val"]
