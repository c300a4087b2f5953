"""What every HTTP surface shares: the auth middleware, body checks, error dialects, database guard and
the guarded uvicorn protocol."""
