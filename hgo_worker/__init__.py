"""hgo_worker: the throttled, streaming HGO worker."""
