"""Small reference models the lab trains, with the norm (and sharing) pluggable by name.

Every norm goes through :func:`sharenorm.make_norm`, so ``norm="batch"|"group"|"instance"|
"layer"|"none"`` swaps the normalization without touching the rest of the network.

Example:
    >>> import torch
    >>> from sharenorm.models import ConvNet
    >>> net = ConvNet((1, 40), 10, norm="group")
    >>> net(torch.randn(2, 1, 40)).shape
    torch.Size([2, 10])
"""

from sharenorm.models.autoencoder import Autoencoder
from sharenorm.models.convnet import ConvNet, LocallyConnectedNet
from sharenorm.models.mlp import MLP
from sharenorm.models.rnn import RNNClassifier
from sharenorm.models.style import StyleDecoder, StyleEncoder, adain, channel_stats

__all__ = ["ConvNet", "LocallyConnectedNet", "MLP", "RNNClassifier", "Autoencoder",
           "StyleEncoder", "StyleDecoder", "adain", "channel_stats"]
