"""Data: token shards, mixtures and packing; the SkyPile pipeline steps."""
