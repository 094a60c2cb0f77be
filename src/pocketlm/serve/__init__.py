"""The HTTP side: the OpenAI-compatible app, its routes, middleware, metrics and chat page."""
