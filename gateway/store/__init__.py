"""Storage behind the gateway: protocols in :mod:`.base`, the embedded memory store and Redis."""
