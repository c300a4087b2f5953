"""The way to llama-server: the relay (one per app, with its observers), its lean HTTP client and the
playground's chat."""
