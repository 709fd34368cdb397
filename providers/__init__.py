"""Provider adapters: one module per payment provider behind the :mod:`providers.base` seam."""
