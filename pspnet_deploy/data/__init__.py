"""Dataset readers, augmentations and the shared preprocessing."""
import cv2 as _cv2

# OpenCV's own thread pool deadlocks in DataLoader workers forked after it started; the data
# pipeline parallelises across workers instead.
_cv2.setNumThreads(0)

from .base import IGNORE_INDEX, DatasetInfo, SegmentationDataset, default_palette
from .preprocess import Preprocess, resize_labels
from .registry import dataset_info, open_dataset

__all__ = ["IGNORE_INDEX", "DatasetInfo", "Preprocess", "SegmentationDataset", "dataset_info", "default_palette",
           "open_dataset", "resize_labels"]
