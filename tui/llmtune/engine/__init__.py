"""The llama.cpp worker: RunConfig, protocol messages, supervisor, worker main, log parser."""
