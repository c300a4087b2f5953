"""llama-server processes: launch settings and their argument policy, finding the binary, ports, the
process of one server and its log, and the supervisor, the one owner of every server and its state."""
