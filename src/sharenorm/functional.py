"""``sharenorm.functional``: the functional norms, as ``torch.nn.functional`` has them.

Example:
    >>> import torch, sharenorm.functional as SF
    >>> SF.group_norm(torch.randn(2, 4, 3), 2).shape
    torch.Size([2, 4, 3])
"""

from sharenorm.norm.functional import batch_norm, group_norm, instance_norm

__all__ = ["batch_norm", "instance_norm", "group_norm"]
