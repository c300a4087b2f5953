"""The models on disk: the catalog of GGUF files under MODELS_DIR, their metadata and memory estimates."""
