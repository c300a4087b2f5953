"""Downloads from Hugging Face: the manager, the worker of one download, its records, the hub client,
throttled transfers and the periodic cleanup."""
