"""Shared foundations: config, artifacts and manifests, units, devices, logging. Imports nothing else of ours."""
