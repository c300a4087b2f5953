"""The model proxy: one endpoint speaking the Ollama and OpenAI APIs in front of llama-server processes."""
