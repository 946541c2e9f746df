"""The norm layers' activations (``act=``): they live in :mod:`sharenorm.activation`;
this name stays importable."""

from sharenorm.activation import (  # noqa: F401
    ACTIVATION_NAMES,
    apply_activation,
    check_activation,
    default_param,
)
