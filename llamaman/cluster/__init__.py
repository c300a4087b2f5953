"""Several LlamaMan boxes as one service: nodes on a shared database, routing between them, static
peers and llama.cpp RPC workers."""
