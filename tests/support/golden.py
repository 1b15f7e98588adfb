"""What a golden file's arrays mean for the product: the network input the golden was run on."""
from __future__ import annotations

import torch

from tfovss_core.io import images


def golden_network_input(golden) -> torch.Tensor:
    """The golden's resized image (``image_input``, H x W x 3, 0-255) normalised with CLIP's mean
    and std: the ``(3, H, W)`` tensor the segmenter must feed the network."""
    mean = torch.tensor(images.CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(images.CLIP_STD).view(3, 1, 1)
    return (torch.from_numpy(golden["image_input"]).permute(2, 0, 1).float() - mean) / std
