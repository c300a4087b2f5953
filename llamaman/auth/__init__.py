"""Who may do what: accounts, sessions, API keys and their limits, client addresses and sign-in
throttling, and the access table that classifies every path."""
