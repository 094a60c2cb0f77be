"""Running models: THE backend protocol (torch, native), sampling, ONE generation engine,
speculative decoding, continuous batching, THE model opener, chat sessions and bench."""
