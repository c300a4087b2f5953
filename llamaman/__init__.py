"""LlamaMan core: settings, storage, model library, llama-server supervision and the model proxy.

The core never imports ``nicegui.ui``; pages and components sit on top of it.
"""

__version__ = "0.1.0"
