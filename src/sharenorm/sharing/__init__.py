"""Parameter sharing and tying (``sharenorm.sharing``).

* :mod:`~sharenorm.sharing.tie`: ``tie`` / ``untie`` / ``ties`` / ``verify_ties`` /
  ``iter_links`` (hard ties, identity or transposed).
* :mod:`~sharenorm.sharing.soft`: ``SoftTie`` (a penalty that pulls weights together).
* :mod:`~sharenorm.sharing.stack`: ``SharedStack`` (one block's weights used ``depth`` times).
* :mod:`~sharenorm.sharing.layers`: ``LocallyConnected1d/2d`` (convolution without sharing),
  ``SharedRNN`` / ``UnsharedRNN`` (sharing across time steps or not).
* :mod:`~sharenorm.sharing.autoencoder`: ``TiedAutoencoder`` (``W_dec = W_encᵀ``).
* :mod:`~sharenorm.sharing.count`: ``count_parameters``, ``parameter_report``.
* :mod:`~sharenorm.sharing.io`: ``save`` / ``load`` (safetensors + tie manifest, atomic writes).
"""

from sharenorm.sharing.autoencoder import TiedAutoencoder
from sharenorm.sharing.count import ModuleRow, ParameterReport, count_parameters, parameter_report
from sharenorm.sharing.io import load, save
from sharenorm.sharing.layers import LocallyConnected1d, LocallyConnected2d, SharedRNN, UnsharedRNN
from sharenorm.sharing.soft import SoftTie
from sharenorm.sharing.stack import SharedStack
from sharenorm.sharing.tie import TieError, TieGroup, iter_links, tie, ties, untie, verify_ties

__all__ = [
    "tie",
    "untie",
    "ties",
    "verify_ties",
    "iter_links",
    "TieGroup",
    "TieError",
    "save",
    "load",
    "SoftTie",
    "SharedStack",
    "LocallyConnected1d",
    "LocallyConnected2d",
    "SharedRNN",
    "UnsharedRNN",
    "TiedAutoencoder",
    "count_parameters",
    "parameter_report",
    "ParameterReport",
    "ModuleRow",
]
