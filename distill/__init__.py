"""Supernet training by cross-architecture dual-domain knowledge distillation (CA-DDKD); see issue 4."""
