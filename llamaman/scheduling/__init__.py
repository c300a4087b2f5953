"""Which instance serves a request: names and aliases, presets, leases and gates, on-demand loads,
LRU eviction and idle sleep (the router)."""
