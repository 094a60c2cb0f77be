"""Running models: sampling, ONE generation engine over pluggable forward backends."""
