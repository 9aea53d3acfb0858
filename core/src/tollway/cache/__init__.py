"""Answer caching: canonical keys, backends, and the cache stage."""
