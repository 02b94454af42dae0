"""Prefect flows and deployments that run the DVC stage graph (never re-implement a stage)."""
